"""whisper-asr-webservice's API as its clients call it: the query of POST /asr and its JSON result."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.protocol.native import LANGUAGES, MAX_PROMPT_CHARS, Shape, Task, absent, whisper_segment
from app.protocol.validation import FormFlag
from app.text import is_cjk
from app.transcript import Transcript, TranscriptSegment
from app.words import words_of

OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")


class AsrQuery(BaseModel):
    """POST /asr's query parameters. Unknown ones (diarize, min_speakers, hotwords, video_file...) are ignored:
    clients send them unasked, and this model has no use for them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task: Task = Field(
        "transcribe",
        description="translate: English text from speech in any language (the Omni variants; Qwen3-ASR and the "
        "Captioner answer 400). language then names the speech's language, and initial_prompt is context.",
    )
    language: str | None = Field(
        None,
        description="The audio's language as a code (en) or an English name; absent: the model detects it.",
        json_schema_extra={"enum": ["", "auto", *LANGUAGES, *LANGUAGES.values()]},
    )
    initial_prompt: str | None = Field(
        None,
        # Not a schema bound: the request line's own limit (4 KB in gunicorn) is reached first.
        description="Names and terms the audio may contain: added to the Omni models' instruction, Qwen3-ASR's "
        f"context; at most {MAX_PROMPT_CHARS} characters, within the request line's limit.",
    )
    encode: FormFlag = Field(
        True,
        description="false: the audio_file is headerless signed 16-bit little-endian mono PCM at 16 kHz (what "
        "Bazarr sends); true: any format ffmpeg reads.",
    )
    output: Literal["txt", "vtt", "srt", "tsv", "json"] = Field("txt", description="The result's format.")
    word_timestamps: FormFlag = Field(False, description="Words with their times in the JSON output.")
    vad_filter: FormFlag | None = Field(
        None, description="Send only speech to the model (the native `vad`); absent: the server's default."
    )


class AsrWord(Shape):
    """A word as Whisper reports it: a leading space before each word of a spaced language."""

    word: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    probability: None = Field(description="Not reported by this model.")


class AsrSegment(Shape):
    """Whisper's segment fields, with null where this model has no such figure."""

    OMITTED = ("words",)

    id: int = Field(ge=0)
    seek: int = Field(ge=0, description="The segment's offset in 10 ms frames, as Whisper counts it.")
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    tokens: list[int] = Field(description="Empty: this model's token ids are not reported.")
    temperature: float
    avg_logprob: None = Field(description="Not reported by this model.")
    compression_ratio: float | None = Field(description="Text bytes over zlib-compressed bytes; null when empty.")
    no_speech_prob: None = Field(description="Not reported by this model (VAD keeps non-speech out).")
    words: list[AsrWord] | None = Field(None, exclude_if=absent, description="With word_timestamps=true only.")

    @classmethod
    def of(cls, segment: TranscriptSegment, temperature: float, *, words: bool) -> AsrSegment:
        """A transcript segment in Whisper's terms."""
        timed = None
        if words:
            timed = [
                AsrWord(word=_spaced(w.text), start=round(w.start, 3), end=round(w.end, 3), probability=None)
                for w in words_of(segment)
            ]
        return cls(
            **whisper_segment(segment),
            tokens=[],
            temperature=temperature,
            avg_logprob=None,
            no_speech_prob=None,
            words=timed,
        )


def _spaced(word: str) -> str:
    """Whisper writes a space before each word, so that the words joined give the text; none inside CJK."""
    return word if is_cjk(word[0]) else f" {word}"


class AsrTranscription(Shape):
    """output=json: Whisper's result dictionary."""

    text: str
    segments: list[AsrSegment]
    language: str | None = Field(
        description="The language asked for, else the one the model identified, as a code; null when neither."
    )

    @classmethod
    def of(cls, transcript: Transcript, text: str, temperature: float, *, words: bool) -> AsrTranscription:
        """The transcript as whisper-asr-webservice's JSON."""
        return cls(
            text=text,
            segments=[AsrSegment.of(s, temperature, words=words) for s in transcript.segments],
            language=transcript.language,
        )


class DetectLanguageQuery(BaseModel):
    """POST /detect-language's query. Unknown parameters (video_file, subgen's detect_lang_length and
    detect_lang_offset...) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    encode: FormFlag = Field(
        True,
        description="false: the audio_file is headerless signed 16-bit little-endian mono PCM at 16 kHz (what "
        "Bazarr sends); true: any format ffmpeg reads.",
    )


class DetectedLanguage(Shape):
    """POST /detect-language: the language of the first 30 s of speech, as whisper-asr-webservice answers it."""

    detected_language: str = Field(description="Its English name in lower case, as Whisper names it (english).")
    language_code: str = Field(description="Its code (en): never empty and never und.")
    confidence: float = Field(
        ge=0, le=1, description="The model's probability for this language among those it can name."
    )

    @classmethod
    def of(cls, code: str, confidence: float) -> DetectedLanguage:
        """The answer for a language code the model identified."""
        return cls(
            detected_language=LANGUAGES.get(code, code).lower(), language_code=code, confidence=round(confidence, 4)
        )
