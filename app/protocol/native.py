"""The native API's shapes: the transcription options every upload route takes, and every body it answers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from app.errors import InvalidOption, quoted
from app.protocol.validation import FormFlag, invalid, numeric_ranges, validate
from app.text import compression_ratio
from app.transcript import StopReason, Transcript, TranscriptSegment, Word
from app.variants import DEFAULT_VARIANT, VARIANTS, Variant
from app.words import words_of

# The official feature extractor pads/truncates at 300 s (n_samples 4 800 000): longer segments would be cut.
MAX_SEGMENT_SECONDS = 300.0
MIN_SEGMENT_SECONDS = 1.0
MAX_NEW_TOKENS_LIMIT = 32768
MAX_TEMPERATURE = 2.0
REPETITION_PENALTY_RANGE = (0.5, 3.0)
MAX_PROMPT_CHARS = 4000

# What a transcription produces: the words as spoken, or their English translation.
Task = Literal["transcribe", "translate"]

# The ranges both APIs share (the chat's max_tokens and temperature are the same quantities).
MaxNewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS_LIMIT)]
Temperature = Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)]

# Languages Qwen-Omni transcribes; code -> the English name used in the prompt ("Transcribe the English audio").
LANGUAGES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "yue": "Cantonese",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "ar": "Arabic",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "no": "Norwegian",
    "pl": "Polish",
    "cs": "Czech",
    "tr": "Turkish",
    "el": "Greek",
    "he": "Hebrew",
    "hi": "Hindi",
    "id": "Indonesian",
    "ms": "Malay",
    "th": "Thai",
    "vi": "Vietnamese",
    "uk": "Ukrainian",
    "hu": "Hungarian",
    "ro": "Romanian",
    "fa": "Persian",
    "ur": "Urdu",
    "fil": "Filipino",
    "mk": "Macedonian",
}
_LANGUAGE_BY_NAME = {name.lower(): code for code, name in LANGUAGES.items()}


def parse_language(raw: str) -> str | None:
    """A language code ("en") or English name ("English"); empty or "auto" means detect."""
    text = raw.strip().lower()
    if text in ("", "auto"):
        return None
    if text in LANGUAGES:
        return text
    if text in _LANGUAGE_BY_NAME:
        return _LANGUAGE_BY_NAME[text]
    raise ValueError(f"unknown language {quoted(raw)}; use one of: {', '.join(sorted(LANGUAGES))}")


class TranscribeOptions(BaseModel):
    """Validated options for one transcription: the form fields of every upload route, on both APIs.

    Form fields arrive as strings and are read as they always were: numbers with spaces around them, an
    integer written as 512.0 or 1e3, the booleans true/false, 1/0, yes/no, on/off (not pydantic's t/f/y/n),
    a language as a code or an English name, a prompt trimmed.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    segment_duration: float = Field(
        60.0,
        ge=MIN_SEGMENT_SECONDS,
        le=MAX_SEGMENT_SECONDS,
        allow_inf_nan=False,
        description="Most seconds of audio per segment. With vad, a segment is whole stretches of speech and cuts "
        "fall in pauses; speech that runs on longer, and all audio without vad, is cut at the quietest 10 ms in "
        "the 2 s before the limit. 300 is the model's limit.",
    )
    max_new_tokens: MaxNewTokens = Field(
        8192,
        description="Most tokens generated per segment; a runaway guard also caps each transcribed segment at 15 "
        "tokens per second of audio plus 32.",
    )
    temperature: Temperature = Field(0.1, description="Sampling temperature; 0 is greedy decoding.")
    repetition_penalty: float = Field(
        1.1,
        ge=REPETITION_PENALTY_RANGE[0],
        le=REPETITION_PENALTY_RANGE[1],
        allow_inf_nan=False,
        description="Repetition penalty; 1 means none.",
    )
    enable_s2t: FormFlag = Field(
        False,
        description="Convert Simplified to Traditional Chinese (OpenCC s2t). Accepts true/false, 1/0, yes/no, "
        "on/off, in any case.",
    )
    word_timestamps: FormFlag = Field(
        False,
        description="Add each segment's words with their start and end times (JSON outputs). Subtitles are "
        "always timed by words.",
    )
    vad: FormFlag = Field(
        True,
        description="Cut the audio in the pauses that Silero VAD finds and send only speech to the model (no "
        "text over silence or music; audio without speech gives an empty transcript). false: fixed-length "
        "segments, each cut moved back to the quietest 10 ms.",
    )
    language: str | None = Field(
        None,
        description="The audio's language, as a code or an English name (case-insensitive), named in the prompt. "
        "Empty or absent: the model detects it.",
        # Codes and English names are both accepted; empty or "auto" leaves the language to the model.
        json_schema_extra={"enum": ["", "auto", *LANGUAGES, *LANGUAGES.values()]},
    )
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description=f"An instruction replacing 'Transcribe the audio into text.', at most {MAX_PROMPT_CHARS} "
        "characters after trimming. Empty means the default instruction. With task=translate it is context "
        "(names and terms the audio holds) added to the translation instruction, as Whisper's prompt is.",
    )
    task: Task = Field(
        "transcribe",
        description="transcribe: text in the language spoken; translate: English text from speech in any "
        "language (the Omni variants; language then names the speech's language). Translations are not word "
        "aligned: their subtitles are timed from each segment's speech.",
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise invalid(type(self), exc.errors(include_url=False)[0], data) from None

    @field_validator("segment_duration", "temperature", "repetition_penalty", mode="before")
    @classmethod
    def _form_number(cls, value: object) -> object:
        return float(value.strip()) if isinstance(value, str) else value

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _form_integer(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        # Accept "512.0" but not "512.5": clients built from JSON numbers send the former.
        number = float(text)
        if not (math.isfinite(number) and number.is_integer()):
            raise ValueError("not an integer")
        return int(number)

    @field_validator("language", mode="before")
    @classmethod
    def _form_language(cls, value: object) -> object:
        return parse_language(value) if isinstance(value, str) else value

    @field_validator("prompt", mode="before")
    @classmethod
    def _form_prompt(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (persisted with async jobs)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscribeOptions:
        """Inverse of to_dict; keys of other versions are ignored, missing ones take the defaults."""
        return validate(cls, dict(data))


# field -> (lowest, highest, integers only): read off the model, for the messages and the document.
RANGES = numeric_ranges(TranscribeOptions)

# The fields whose empty value means "the server's default" (an empty language or prompt means "none").
_DEFAULTED_WHEN_BLANK = (
    "segment_duration", "max_new_tokens", "temperature", "repetition_penalty", "enable_s2t", "vad",
    "word_timestamps", "task",
)  # fmt: skip


def parse_options(
    form: Mapping[str, str], defaults: TranscribeOptions, variant: Variant = VARIANTS[DEFAULT_VARIANT]
) -> TranscribeOptions:
    """Build options from form fields, falling back to the server's defaults for absent or empty fields, and
    refuse what the variant cannot do (a prompt to the Captioner, a translation by Qwen3-ASR)."""
    given = {name: form[name] for name in TranscribeOptions.model_fields if form.get(name) is not None}
    given = {k: v for k, v in given.items() if k not in _DEFAULTED_WHEN_BLANK or v.strip() != ""}
    options = validate(TranscribeOptions, {**defaults.to_dict(), **given})
    if options.prompt and variant.task == "caption":
        raise InvalidOption("prompt", "this model takes no text prompt (it captions the audio as it is)")
    if options.task == "translate" and not variant.translates:
        raise InvalidOption("task", f"the {variant.name} variant cannot translate: {variant.why_not_translate}")
    return options


# Responses ---------------------------------------------------------------------------------------------


def _unrequire_omitted(schema: dict[str, Any], cls: type[Any]) -> None:
    """The document's required list, less the fields the class's body leaves out when they do not apply."""
    omitted = getattr(cls, "OMITTED", ())
    schema["required"] = [name for name in schema.get("required", []) if name not in omitted]


class Shape(BaseModel):
    """A response body: exactly these fields, so what the code sends and what the document says cannot part.

    Every field is sent, defaults included, and the document says so; OMITTED names the fields a body
    leaves out where they do not apply.
    """

    OMITTED: ClassVar[tuple[str, ...]] = ()
    model_config = ConfigDict(
        extra="forbid", json_schema_serialization_defaults_required=True, json_schema_extra=_unrequire_omitted
    )

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return self.model_dump(mode="json")


def absent(value: object) -> bool:
    """Whether an OMITTED field is left out of the body (exclude_if): it holds None, as it was not asked for."""
    return value is None


class ErrorDetail(Shape):
    """What went wrong, as a code a client can branch on and a message a person can act on."""

    OMITTED = ("request_id",)

    code: str
    message: str
    request_id: str | SkipJsonSchema[None] = Field(
        None,
        exclude_if=absent,
        description="The request's id (its X-Request-ID), as the server's log lines name it; left out of the "
        "errors the HTTP server answers before the service reads a request.",
    )


class Error(Shape):
    """The native API's one error body."""

    status: Literal["error"] = "error"
    error: ErrorDetail


class WordTiming(Shape):
    """One word as written (punctuation attached; each CJK character is one) and when it is spoken."""

    word: str
    start: float = Field(ge=0, description="Seconds from the start of the audio.")
    end: float = Field(ge=0)

    @classmethod
    def of(cls, word: Word) -> WordTiming:
        """The word as the JSON outputs show it, times rounded to milliseconds."""
        return cls(word=word.text, start=round(word.start, 3), end=round(word.end, 3))


class Segment(Shape):
    """One timed segment of a transcript."""

    OMITTED = ("language", "words")

    index: int = Field(ge=0)
    start: float = Field(ge=0, description="Seconds from the start of the audio.")
    end: float = Field(ge=0)
    text: str
    stop_reason: StopReason = Field(
        description="eos: the model finished; max_tokens: a token limit cut it; repetition: the model looped and "
        "the repeated tail was trimmed to one copy."
    )
    language: str | SkipJsonSchema[None] = Field(
        None, exclude_if=absent, description="The language the model identified in it (Qwen3-ASR variants)."
    )
    words: list[WordTiming] | SkipJsonSchema[None] = Field(
        None, exclude_if=absent, description="Its words, in order, inside the segment: only with word_timestamps=true."
    )

    @classmethod
    def of(cls, segment: TranscriptSegment, words: bool = False) -> Segment:
        """The segment as the JSON outputs show it, times rounded to milliseconds; with words, its words."""
        return cls(
            index=segment.index,
            start=round(segment.start, 3),
            end=round(segment.end, 3),
            text=segment.text,
            stop_reason=segment.stop_reason,
            language=segment.language,
            words=[WordTiming.of(w) for w in words_of(segment)] if words else None,
        )


def whisper_segment(segment: TranscriptSegment) -> dict[str, Any]:
    """The fields of Whisper's segment that both APIs showing them (/v1 verbose_json, /asr json) fill alike:
    id, seek (the start in 10 ms frames, as Whisper counts it), times rounded to milliseconds, the text and
    its compression ratio."""
    return {
        "id": segment.index,
        "seek": round(segment.start * 100),
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "compression_ratio": compression_ratio(segment.text),
    }


class TranscriptResult(Shape):
    """A transcript as JSON: what a finished job keeps, and the core of the synchronous answer."""

    transcription: str
    duration: float = Field(ge=0)
    language: str | None = Field(
        description="The language asked for, else the one the model identified in most of the audio (Qwen3-ASR "
        "variants); null when neither."
    )
    segments: list[Segment]

    @classmethod
    def of(cls, transcript: Transcript, words: bool = False) -> TranscriptResult:
        """The one place a transcript becomes JSON; with words, every segment's words too."""
        return cls(
            transcription=transcript.text,
            duration=round(transcript.duration, 3),
            language=transcript.language,
            segments=[Segment.of(s, words) for s in transcript.segments],
        )

    def transcript(self) -> Transcript:
        """The transcript back from its JSON (a finished job's), with the words it kept."""
        segments = [
            TranscriptSegment(
                s.index,
                s.start,
                s.end,
                s.text,
                s.stop_reason,
                words=tuple(Word(w.word, w.start, w.end) for w in s.words or ()),
                language=s.language,
            )
            for s in self.segments
        ]
        return Transcript(segments, self.duration, self.language, 0.0)


Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Transcription(TranscriptResult):
    """POST /transcribe/json."""

    status: Literal["success"] = "success"
    output_file: str = Field(description="Its copy under the data dir's outputs/.")
    timestamp: Timestamp
    processing_time: float = Field(ge=0)


class JobState(StrEnum):
    """The states of an async job; the last three are final."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The formats a completed job's result is fetched in: ?format= of GET /status/{job_id}/result.
RESULT_FORMATS = ("txt", "json", "srt", "vtt")

FINISHED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
JOB_STATES = tuple(state.value for state in JobState)


class JobQueued(Shape):
    """POST /transcribe/async."""

    job_id: str
    status: Literal["queued"] = "queued"
    status_url: str = Field(description="Where to poll: /status/{job_id}.")


class JobProgress(Shape):
    """Segments transcribed so far, of those found so far."""

    segments_done: int = Field(ge=0)
    segments_total: int = Field(ge=0)


class Job(Shape):
    """GET /status/{job_id}: a completed job adds its transcript, a failed or cancelled one its error."""

    # Only some states carry these: left out (not null) where they do not apply.
    OMITTED = ("completed_at", "transcription", "output_file", "duration", "segments", "error")

    job_id: str
    request_id: str | None = Field(
        description="The X-Request-ID of the request that submitted it; the job's log lines carry it too. Null "
        "for jobs of older versions."
    )
    # Inline rather than a component of its own: the states read where the field is.
    status: Annotated[JobState, WithJsonSchema({"type": "string", "enum": [state.value for state in JobState]})]
    progress: JobProgress
    queue_position: int | None = Field(
        None, ge=1, description="While queued: 1 for the next job to start, 2 for the one after it; else null."
    )
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | SkipJsonSchema[None] = None
    transcription: str | SkipJsonSchema[None] = None
    output_file: str | None = None
    duration: Annotated[float, Field(ge=0)] | SkipJsonSchema[None] = None
    segments: list[Segment] | SkipJsonSchema[None] = None
    error: str | None = Field(None, description="Why the job failed or was cancelled.")

    def body(self) -> dict[str, Any]:
        """The JSON body, with only the fields its state carries (those it was built with)."""
        return self.model_dump(mode="json", exclude_unset=True)


class JobDeleted(Shape):
    """DELETE /status/{job_id} of a finished job."""

    job_id: str
    status: Literal["deleted"] = "deleted"


class Download(Shape):
    """The checkpoint download in progress."""

    checkpoint: str
    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)
    percent: float | None


class AlignerHealth(Shape):
    """The forced aligner's lifecycle: loaded with the first output that needs word times."""

    checkpoint: str
    state: Literal["unloaded", "loading", "loaded", "error"]
    error: str | None = Field(
        description="Why the last load failed, or (state loading) that it is being downloaded; word times are "
        "estimated meanwhile."
    )
    loads: int = Field(ge=0)


class ModelHealth(Shape):
    """The model's lifecycle and the engine's figures."""

    state: Literal["unloaded", "loading", "loaded", "error"]
    error: str | None = Field(description="Why the last load failed.")
    device: str = Field(description="Before the first load, the configured choice (auto); after it, the device.")
    idle_timeout: float = Field(ge=0)
    seconds_until_unload: float | None
    loads: int = Field(ge=0)
    unloads: int = Field(ge=0, description="Times the model was unloaded: after the idle timeout, or at shutdown.")
    batch_size: int = Field(ge=1)
    token_budget: int = Field(ge=1)
    oom_batch_splits: int = Field(ge=0)
    max_tokens_stops: int = Field(ge=0, description="Segments and answers a token limit cut, since the start.")
    repetition_stops: int = Field(ge=0, description="Segments and answers stopped in a repetition loop.")
    pending_segments: int = Field(ge=0)
    retry_load_in: float | None = Field(
        description="Seconds until a failed load is tried again; null when none failed."
    )
    download: Download | None = Field(description="The checkpoint download in progress, if any.")
    checkpoint: str
    variant: str
    task: Literal["transcribe", "caption"]
    aligner: AlignerHealth | None = Field(description="The word aligner; null with --aligner none.")


class StorageHealth(Shape):
    """The data directory's disk."""

    free_bytes: int | None = Field(description="Free space of the data dir.")
    reserve_bytes: int = Field(ge=0)
    low: bool = Field(description="Free space is below the reserve.")
    error: str | None = Field(description="The last failure to write the job database.")


class JobCounts(Shape):
    """Jobs waiting and running."""

    queued: int = Field(ge=0)
    running: int = Field(ge=0)


OptionDefault = str | int | float | bool | None


class UploadConfig(Shape):
    """What a client needs to build a form this server accepts, before it sends anything."""

    api_key_required: bool = Field(description="Every route but /health (and the web page) needs an API key.")
    max_upload_bytes: int = Field(ge=1, description="The largest request body accepted (413 above it).")
    max_audio_duration: float = Field(gt=0, description="The longest audio accepted, in seconds (413 above it).")
    languages: dict[str, str] = Field(description="The language codes the language option takes, with their names.")
    translates: bool = Field(description="Whether task=translate is served (the Omni variants).")
    takes_prompt: bool = Field(description="Whether a prompt is taken (not by the Captioner).")
    sees: bool = Field(
        description="Whether images and video are served (/ocr, /describe, /describe-region, chat image and video "
        "parts): the Omni variants but the Captioner."
    )
    defaults: dict[str, OptionDefault] = Field(
        description="The transcription options a form leaves out take these values (TranscribeOptions' fields)."
    )


class WorkerHealth(Shape):
    """Cluster mode: one GPU worker (serve/worker.py), as its last heartbeat described it."""

    id: str = Field(description="host:pid, unique while it runs.")
    host: str
    pid: int = Field(ge=1)
    device: str = Field(description="The device its model is on (or the configured choice before a load).")
    visible_devices: str | None = Field(description="Its CUDA_VISIBLE_DEVICES: the GPU it was given.")
    variant: str = Field(description="The variant it serves: it takes only the segments of nodes of this variant.")
    checkpoint: str
    model_state: Literal["unloaded", "loading", "loaded", "error"]
    model_error: str | None
    in_hand: int = Field(ge=0, description="Segments it holds now: in its engine's queue or being generated.")
    batch_size: int = Field(ge=1, description="The most segments it takes at once (one batch).")
    segments_done: int = Field(ge=0, description="Segment tasks it has finished.")
    generate_calls: int = Field(ge=0, description="Its generate calls: segments_generated / generate_calls is its "
                                "mean batch.")  # fmt: skip
    segments_generated: int = Field(ge=0)
    seconds_since_seen: float = Field(ge=0, description="Since its last heartbeat (every 2 s; gone after 10 s).")


class ClusterHealth(Shape):
    """Cluster mode (--broker): the broker, the workers and the queue between them."""

    broker: str = Field(description="The broker's URL, without its password.")
    reachable: bool
    error: str | None = Field(description="Why the broker cannot be reached.")
    workers: list[WorkerHealth] = Field(description="The workers whose heartbeat is fresh.")
    queued_segments: int | None = Field(description="Segments waiting for a worker (null: the broker is down).")
    waiting_segments: int = Field(ge=0, description="Segments this HTTP node has sent and waits on.")
    resent_segments: int = Field(ge=0, description="Segments this node sent again because their worker stopped.")


class Health(Shape):
    """GET /health: always 200 while the service is up."""

    OMITTED = ("cluster",)

    status: Literal["ok", "degraded"] = Field(
        description="degraded: up, but the model cannot be loaded or the disk is full or unwritable; problems says "
        "why. Always answered with 200."
    )
    problems: list[str]
    model_loaded: bool
    gpu_available: bool
    gpu_memory_allocated_gb: float = Field(ge=0)
    gpu_memory_reserved_gb: float = Field(ge=0)
    timestamp: Timestamp
    model: ModelHealth
    storage: StorageHealth
    jobs: JobCounts | None = Field(description="Null when the job database cannot be read.")
    upload: UploadConfig
    cluster: ClusterHealth | SkipJsonSchema[None] = Field(
        None,
        exclude_if=absent,
        description="Cluster mode (--broker) only: the broker and its workers; status is degraded when the broker "
        "is down or no worker is alive.",
    )
