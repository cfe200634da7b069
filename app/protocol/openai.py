"""The OpenAI-compatible API's shapes under /v1: transcriptions, models, chat completions and their errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictBool, StrictInt
from pydantic.json_schema import SkipJsonSchema

from app.protocol.native import MAX_NEW_TOKENS_LIMIT, MAX_TEMPERATURE, Shape, WordTiming, absent
from app.protocol.validation import FormFlag

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# Formats whose whole body can be streamed as text deltas; subtitles and verbose_json need the timings.
STREAM_FORMATS = ("json", "text")
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
# OpenAI's roles; developer is the newer name for system.
Role = Literal["system", "developer", "user", "assistant"]


class OpenAIErrorDetail(Shape):
    """OpenAI's error object."""

    OMITTED = ("request_id",)

    message: str
    type: Literal["invalid_request_error", "authentication_error", "rate_limit_error", "server_error"]
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str
    request_id: str | SkipJsonSchema[None] = Field(
        None, exclude_if=absent, description="The request's id (its X-Request-ID), as the server's log lines name it."
    )


class OpenAIError(Shape):
    """OpenAI's error envelope, which its SDKs turn into typed exceptions."""

    error: OpenAIErrorDetail


# Transcriptions ----------------------------------------------------------------------------------------


class TranscriptionRequest(BaseModel):
    """The fields of POST /v1/audio/transcriptions beyond the native options (which it takes too)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        None,
        description="This server's model id, its variant name, or whisper-1 / gpt-4o-transcribe / "
        "gpt-4o-mini-transcribe; absent means the served model.",
    )
    response_format: ResponseFormat = Field("json", description="The answer's format.")
    timestamp_granularities: list[Literal["segment", "word"]] = Field(
        default_factory=list,
        alias="timestamp_granularities[]",
        description="verbose_json's detail: segment (the default), word (top-level words, without segments unless "
        "segment is asked for too), or both. word needs verbose_json, srt or vtt.",
    )
    stream: FormFlag = Field(False, description="Server-sent events, one delta per finished segment (json and text).")


class DurationUsage(Shape):
    """Billing-style usage of a transcription: seconds of audio, rounded up."""

    type: Literal["duration"] = "duration"
    seconds: int = Field(ge=0)


class TranscriptionJson(Shape):
    """response_format=json."""

    text: str
    usage: DurationUsage


class VerboseSegment(Shape):
    """Whisper's segment fields, with null where this model has no such figure."""

    id: int = Field(ge=0)
    seek: int = Field(ge=0, description="The segment's offset in 10 ms frames, as Whisper counts it.")
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    tokens: None = Field(description="Not reported by this model.")
    temperature: float
    avg_logprob: None = Field(description="Not reported by this model.")
    compression_ratio: float | None = Field(description="Text bytes over zlib-compressed bytes; null when empty.")
    no_speech_prob: None = Field(description="Not reported by this model.")
    stop_reason: Literal["eos", "max_tokens", "repetition"]


class VerboseTranscription(Shape):
    """response_format=verbose_json: segments, words or both, as timestamp_granularities[] asked."""

    OMITTED = ("segments", "words")

    task: Literal["transcribe"] = "transcribe"
    language: str | None = Field(
        description="The language asked for, else the one the model identified (Qwen3-ASR variants), as an "
        "English name in lower case; null when neither."
    )
    duration: float = Field(ge=0)
    text: str
    segments: list[VerboseSegment] | SkipJsonSchema[None] = Field(None, exclude_if=absent)
    words: list[WordTiming] | SkipJsonSchema[None] = Field(
        None,
        exclude_if=absent,
        description="Every word of the transcript in order, with timestamp_granularities[]=word.",
    )
    usage: DurationUsage


class TranslationJson(Shape):
    """A translation's response_format=json, as OpenAI answers it: the English text alone."""

    text: str


class VerboseTranslation(Shape):
    """A translation's response_format=verbose_json."""

    task: Literal["translate"] = "translate"
    language: Literal["english"] = Field(description="The output's language: always english.")
    duration: float = Field(ge=0)
    text: str
    segments: list[VerboseSegment]


class TranscriptDelta(Shape):
    """A streamed transcription's event for one finished segment."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptDone(Shape):
    """A streamed transcription's last event."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: DurationUsage


# Models ------------------------------------------------------------------------------------------------


class ModelCard(Shape):
    """The one model this server serves."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    variant: str
    family: str
    task: Literal["transcribe", "caption"]


class ModelList(Shape):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# Chat --------------------------------------------------------------------------------------------------


class Part(BaseModel):
    """A content part; extra fields are ignored, as OpenAI clients may send more than a server reads."""

    model_config = ConfigDict(extra="ignore")


class TextPart(Part):
    """Text in a message."""

    type: Literal["text"]
    text: str


class InputAudio(Part):
    """Audio in any format ffmpeg reads, base64-encoded (format is accepted and not needed)."""

    data: str = Field(min_length=1, description="Base64-encoded audio.")
    format: str | None = None


class InputAudioPart(Part):
    """Audio in a message."""

    type: Literal["input_audio"]
    input_audio: InputAudio


def _url_object(value: object) -> object:
    """A bare URL string (as some clients send image_url) is the object {"url": ...}."""
    return {"url": value} if isinstance(value, str) else value


MEDIA_URL = (
    "A data: URL with base64 content (data:image/png;base64,...), or an http(s) URL when the server allows remote "
    "media (--allow-remote-media)."
)


class ImageUrl(Part):
    """An image: PNG, JPEG, WebP, GIF (its first frame), BMP or TIFF."""

    url: str = Field(min_length=1, description=MEDIA_URL)
    detail: Literal["auto", "low", "high"] = Field(
        "auto",
        description="low: at most 448 x 448 pixels (256 tokens); auto and high: the processor's full size.",
    )


class ImageUrlPart(Part):
    """An image in a message, OpenAI's way."""

    type: Literal["image_url"]
    image_url: Annotated[ImageUrl, BeforeValidator(_url_object, json_schema_input_type=str | ImageUrl)]


class VideoUrl(Part):
    """A video: MP4, WebM, MOV, MKV, AVI; its frames are sampled at 2 per second (its sound is not heard)."""

    url: str = Field(min_length=1, description=MEDIA_URL)


class VideoUrlPart(Part):
    """A video in a message (the extension vLLM and others accept)."""

    type: Literal["video_url"]
    video_url: Annotated[VideoUrl, BeforeValidator(_url_object, json_schema_input_type=str | VideoUrl)]


class ImagePart(Part):
    """An image in a message, Qwen-VL's way."""

    type: Literal["image"]
    image: str = Field(min_length=1, description=MEDIA_URL)


class VideoPart(Part):
    """A video in a message, Qwen-VL's way."""

    type: Literal["video"]
    video: str = Field(min_length=1, description=MEDIA_URL)


ContentPart = Annotated[
    TextPart | InputAudioPart | ImageUrlPart | VideoUrlPart | ImagePart | VideoPart, Discriminator("type")
]


def _as_parts(value: object) -> object:
    """A plain string content is one text part."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class ChatMessage(Part):
    """One message of a conversation."""

    role: Role
    content: Annotated[
        list[ContentPart],
        BeforeValidator(_as_parts, json_schema_input_type=str | list[ContentPart]),
        Field(
            min_length=1,
            description="A string, or a non-empty list of text, input_audio, image_url, video_url, image and video "
            "parts.",
        ),
    ]


class StreamOptions(Part):
    """Options of a streamed answer."""

    include_usage: StrictBool = Field(False, description="End the stream with a chunk carrying usage.")


def _false_when_empty(value: object) -> object:
    # Clients send null, 0 or "" for "not streaming"; only a real true streams.
    return value or False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions; fields OpenAI defines and this server does not use are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="This server's model id, its variant name or an OpenAI alias.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="Most tokens answered.")
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="The newer name of max_tokens; it wins when both are sent."
    )
    temperature: float | None = Field(None, strict=True, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    stream: Annotated[StrictBool, BeforeValidator(_false_when_empty)] = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = Field(None, description="Only one choice per request is supported.")
    modalities: list[Literal["text"]] | None = Field(None, description="This server answers in text only.")

    def token_limit(self) -> tuple[str, int | None]:
        """The field that sets the answer's length and its value (None: the server's default)."""
        if "max_completion_tokens" in self.model_fields_set:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class AssistantMessage(Shape):
    """The answer."""

    role: Literal["assistant"] = "assistant"
    content: str


FinishReason = Literal["stop", "length"]


class Choice(Shape):
    """The one choice of an answer."""

    index: Literal[0] = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatUsage(Shape):
    """Tokens of the prompt (template, text and audio) and of the answer."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatCompletion(Shape):
    """A whole answer (stream false)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage


class ChunkDelta(Shape):
    """What a chunk adds: the role first, then pieces of content."""

    OMITTED = ("role", "content")

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Shape):
    """A chunk's choice."""

    index: Literal[0] = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(Shape):
    """One event of a streamed answer (stream true); the last, with include_usage, has no choices and the usage."""

    OMITTED = ("usage",)

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None


def chunk_body(chunk: ChatCompletionChunk) -> dict[str, Any]:
    """A chunk as OpenAI sends it: every choice field present, usage only on the last."""
    body = chunk.model_dump(mode="json", exclude_none=True)
    for choice, model in zip(body["choices"], chunk.choices, strict=True):
        choice["finish_reason"] = model.finish_reason
        choice["logprobs"] = None
    return body
