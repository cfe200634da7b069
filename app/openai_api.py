"""The OpenAI-compatible API under /v1: transcriptions, models and chat with audio, on the same engine."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import queue
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import closing
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from app import audio
from app.backends import ChatPrompt, GenerationParams, GenerationRequest, GenerationResult
from app.checkpoints import context_tokens, is_local
from app.errors import (
    AudioTooLong,
    InvalidOption,
    InvalidRequest,
    ModelNotFound,
    ServiceError,
    openai_error_body,
    quoted,
)
from app.formats import CONTENT_TYPES, join_text, render_srt, render_text, render_vtt
from app.options import (
    LANGUAGES,
    MAX_SEGMENT_SECONDS,
    TranscribeOptions,
    check_max_new_tokens,
    check_temperature,
    parse_bool,
    parse_options,
)
from app.outputs import save_transcript
from app.pipeline import CHECK_SECONDS, Check, Transcript, TranscriptSegment
from app.services import Services
from app.settings import Settings
from app.uploads import client_check, current_services, detached_copy, local_path, temporary_file, uploaded_file

log = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# Formats whose whole body can be streamed as text deltas; subtitles and verbose_json need the timings.
STREAM_FORMATS = ("json", "text")
# Names OpenAI clients send by default: accepted for this server's one model, so tools that hard-code
# them work unchanged.
MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
# All the audio of one conversation: one segment's worth, what the model hears at once in transcription too.
MAX_CHAT_AUDIO_SECONDS = MAX_SEGMENT_SECONDS
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
STARTED = int(time.time())


# Models ----------------------------------------------------------------------------------------------


def model_id(settings: Settings) -> str:
    """The id /v1/models lists: the Hub id, or the directory name of a local checkpoint (never a path)."""
    path = settings.checkpoint_path
    if is_local(path):
        return Path(path).name or settings.variant
    return path


def _check_model(settings: Settings, raw: object) -> str:
    """The model a request names: this server's id, its variant name or an OpenAI alias; absent means ours."""
    served = model_id(settings)
    if raw is None or raw == "":
        return served
    if not isinstance(raw, str):
        raise InvalidRequest("model: must be a string")
    if raw in (served, settings.variant, settings.checkpoint_path, *MODEL_ALIASES):
        return served
    raise ModelNotFound(f"the model {quoted(raw)} is not served here; this server serves {served!r}")


def _model_object(settings: Settings) -> dict[str, Any]:
    served = model_id(settings)
    variant = settings.model_variant
    return {
        "id": served,
        "object": "model",
        "created": STARTED,
        "owned_by": served.split("/", 1)[0] if "/" in served else "local",
        "variant": variant.name,
        "family": variant.family,
        "task": variant.task,
    }


@bp.get("/models")
def list_models() -> Response:
    """The one model this server serves."""
    return jsonify({"object": "list", "data": [_model_object(current_services().settings)]})


@bp.get("/models/<path:name>")
def get_model(name: str) -> Response:
    """One model by id (or alias); 404 when it is not the served one."""
    settings = current_services().settings
    _check_model(settings, name)
    return jsonify(_model_object(settings))


# Transcriptions --------------------------------------------------------------------------------------


@bp.post("/audio/transcriptions")
def transcriptions() -> Response:
    """OpenAI's transcription endpoint: every response_format, and server-sent events with stream=true."""
    services = current_services()
    settings = services.settings
    file = uploaded_file()
    form = request.form
    _check_model(settings, form.get("model"))
    response_format = (form.get("response_format") or "json").strip()
    if response_format not in RESPONSE_FORMATS:
        raise InvalidOption(
            "response_format", f"must be one of {', '.join(RESPONSE_FORMATS)}, got {quoted(response_format)}"
        )
    _check_granularities(form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"))
    stream = parse_bool("stream", form.get("stream") or "false")
    if stream and response_format not in STREAM_FORMATS:
        raise InvalidOption("stream", f"streams carry text only: use json or text, not {response_format}")
    accepts_prompt = settings.model_variant.task != "caption"
    options = parse_options(form, settings.default_options(), accepts_prompt=accepts_prompt)
    if stream:
        path = detached_copy(file)
        try:
            # Reject what is not audio while a 4xx can still be sent: a stream's status is fixed once begun.
            services.pipeline.probe(path)
            response = _stream_transcription(services, path, options)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # The WSGI server closes every response, finished or abandoned: the copy goes with it.
        response.call_on_close(lambda: path.unlink(missing_ok=True))
        return response
    started = time.monotonic()
    with local_path(file) as path:
        transcript = services.pipeline.transcribe(path, options, check=client_check())
    text, output_file = save_transcript(services.outputs_dir, transcript)
    log.info("transcribed %.1f s of audio in %.1f s", transcript.duration, time.monotonic() - started)
    response = _render(response_format, transcript, text, options)
    response.headers["X-Output-File"] = output_file
    return response


def _check_granularities(values: list[str]) -> None:
    for value in values:
        if value == "word":
            raise InvalidOption(
                "timestamp_granularities[]", "word timestamps are not available from this model; use segment"
            )
        if value != "segment":
            raise InvalidOption("timestamp_granularities[]", f"must be segment, got {quoted(value)}")


def _usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def _render(response_format: str, transcript: Transcript, text: str, options: TranscribeOptions) -> Response:
    if response_format == "json":
        return jsonify({"text": text, "usage": _usage(transcript)})
    if response_format == "verbose_json":
        return jsonify(verbose_json(transcript, text, options))
    body = {"text": render_text, "srt": render_srt, "vtt": render_vtt}[response_format]
    return Response(body(transcript), content_type=CONTENT_TYPES[response_format])


def verbose_json(transcript: Transcript, text: str, options: TranscribeOptions) -> dict[str, Any]:
    """OpenAI's verbose_json: Whisper's segment fields, with null where this model has no such figure."""
    language = LANGUAGES[transcript.language].lower() if transcript.language in LANGUAGES else None
    return {
        "task": "transcribe",
        "language": language,
        "duration": round(transcript.duration, 3),
        "text": text,
        "segments": [_verbose_segment(s, options) for s in transcript.segments],
        "usage": _usage(transcript),
    }


def _verbose_segment(segment: TranscriptSegment, options: TranscribeOptions) -> dict[str, Any]:
    return {
        "id": segment.index,
        # Whisper's seek is the segment's offset in 10 ms mel frames.
        "seek": round(segment.start * 100),
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        # The thinker gives no token log-probabilities or no-speech probability here: null, not a guess.
        "tokens": None,
        "temperature": options.temperature,
        "avg_logprob": None,
        "compression_ratio": compression_ratio(segment.text),
        "no_speech_prob": None,
        "stop_reason": segment.stop_reason,
    }


def compression_ratio(text: str) -> float | None:
    """Whisper's measure of repetitiveness: text bytes over zlib-compressed bytes (null for empty text)."""
    data = text.encode("utf-8")
    if not data:
        return None
    return round(len(data) / len(zlib.compress(data)), 3)


def _stream_transcription(services: Services, path: Path, options: TranscribeOptions) -> Response:
    """transcript.text.delta per finished segment, in order, then transcript.text.done; errors as an event."""

    def events() -> Iterator[str]:
        started = time.monotonic()
        segments: list[TranscriptSegment] = []
        sent = ""
        with closing(services.pipeline.segments(path, options)) as produced:
            for segment in produced:
                segments.append(segment)
                joined = join_text([s.text for s in segments])
                if len(joined) > len(sent):
                    # join_text only ever appends, so the deltas add up to the final text exactly.
                    yield _sse({"type": "transcript.text.delta", "delta": joined[len(sent) :]})
                    sent = joined
        transcript = Transcript(segments, segments[-1].end, options.language, time.monotonic() - started)
        text, _ = save_transcript(services.outputs_dir, transcript)
        yield _sse({"type": "transcript.text.done", "text": text, "usage": _usage(transcript)})

    return _event_stream(events(), "streamed transcription")


def _sse(data: Mapping[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def _event_stream(events: Iterator[str], what: str) -> Response:
    """A server-sent event response; a failure once the stream has begun is sent as an error event."""
    response = Response(stream_with_context(_errors_as_events(events, what)), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise buffer the events until the end.
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _errors_as_events(events: Iterator[str], what: str) -> Iterator[str]:
    """The events, then OpenAI's error envelope as one last event if they raise (the status is sent already)."""
    try:
        # yield from: closing this generator closes events too, so their own cleanup runs.
        yield from events
    except ServiceError as exc:
        yield _sse(openai_error_body(exc.status, exc.code, exc.message, exc.param))
    except Exception:  # a bug: the client gets an error event, the log gets the traceback
        log.exception("%s failed", what)
        yield _sse(openai_error_body(500, "internal_error", "internal server error"))


# Chat ------------------------------------------------------------------------------------------------


@bp.post("/chat/completions")
def chat_completions() -> Response:
    """OpenAI chat completions with text and input_audio parts, answered by the loaded thinker."""
    services = current_services()
    settings = services.settings
    body = _json_object()
    model = _check_model(settings, body.get("model"))
    params = _chat_params(body, settings)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidOption("stream", "must be true or false")
    include_usage = _include_usage(body.get("stream_options"))
    chat = ChatPrompt(*_chat_messages(body.get("messages"), services))
    _check_context(chat, params, settings)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if stream:
        return _stream_chat(services, chat, params, model, completion_id, include_usage)
    result = _answer(services.engine.submit([GenerationRequest.for_chat(chat, params)])[0], client_check())
    return jsonify(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": _finish_reason(result),
                    "logprobs": None,
                }
            ],
            "usage": _chat_usage(result),
        }
    )


def _check_context(chat: ChatPrompt, params: GenerationParams, settings: Settings) -> None:
    """The prompt and the answer it asks for must fit the model's context: a clear 400 rather than a long failure."""
    context = context_tokens(settings)
    prompt = chat.estimated_tokens
    if prompt + params.max_new_tokens > context:
        raise InvalidOption(
            "messages",
            f"the conversation is about {prompt} tokens and asks for up to {params.max_new_tokens} more, over the "
            f"model's context of {context} tokens: shorten the conversation or lower max_tokens",
        )


def _json_object() -> dict[str, Any]:
    """The request body as a JSON object; a clear 400 for anything else (not JSON, invalid, nested too deeply)."""
    if not request.is_json:
        raise InvalidRequest("the body must be a JSON object (Content-Type: application/json)")
    try:
        # Parsed here rather than by request.get_json(), which hides the parser's reason outside debug mode.
        body = current_app.json.loads(request.get_data())
    except ValueError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _chat_params(body: Mapping[str, Any], settings: Settings) -> GenerationParams:
    defaults = settings.default_options()
    n = body.get("n", 1)
    if n not in (1, None):
        raise InvalidOption("n", "only one choice per request is supported")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise InvalidOption("modalities", "this server answers in text only")
    limit: Any = body.get("max_completion_tokens", body.get("max_tokens"))
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if limit is None:
        limit = defaults.max_new_tokens
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidOption(field, f"must be an integer, got {quoted(limit)}")
    temperature: Any = body.get("temperature")
    if temperature is None:
        temperature = defaults.temperature
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise InvalidOption("temperature", f"must be a number, got {quoted(temperature)}")
    _checked(field, check_max_new_tokens, limit)
    _checked("temperature", check_temperature, float(temperature))
    return GenerationParams(limit, float(temperature), defaults.repetition_penalty)


def _checked(field: str, check: Callable[[Any], None], value: Any) -> None:
    """Run a native range check, reporting the OpenAI field name."""
    try:
        check(value)
    except InvalidOption as exc:
        raise InvalidOption(field, exc.message.split(": ", 1)[1]) from None


def _include_usage(raw: object) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, dict) or not isinstance(raw.get("include_usage", False), bool):
        raise InvalidOption("stream_options", 'must be an object such as {"include_usage": true}')
    return bool(raw.get("include_usage", False))


def _chat_messages(raw: object, services: Services) -> tuple[list[dict[str, Any]], list[Any]]:
    """Processor-format messages and the decoded audio of their input_audio parts, in order."""
    if not isinstance(raw, list) or not raw:
        raise InvalidOption("messages", "must be a non-empty list of messages")
    messages: list[dict[str, Any]] = []
    audios: list[Any] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidOption(where, "must be an object with role and content")
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise InvalidOption(
                f"{where}.role", f"must be one of {', '.join(ROLES)}, got {quoted(message.get('role'))}"
            )
        content = message.get("content")
        if isinstance(content, str):
            parts: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list) and content:
            parts = content
        else:
            raise InvalidOption(f"{where}.content", "must be a string or a non-empty list of content parts")
        converted: list[dict[str, Any]] = []
        for j, part in enumerate(parts):
            converted.append(_content_part(part, f"{where}.content[{j}]", audios, services))
        messages.append({"role": role, "content": converted})
    return messages, audios


def _content_part(part: object, where: str, audios: list[Any], services: Services) -> dict[str, Any]:
    """One content part in the processor's form; input_audio is decoded and appended to audios."""
    if not isinstance(part, dict):
        raise InvalidOption(where, "must be a content part object")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidOption(f"{where}.text", "must be a string")
        return {"type": "text", "text": text}
    if kind == "input_audio":
        spec = part.get("input_audio")
        data = spec.get("data") if isinstance(spec, dict) else None
        if not isinstance(data, str) or not data:
            raise InvalidOption(f"{where}.input_audio.data", "must be base64-encoded audio")
        heard = sum(len(a) for a in audios) / audio.SAMPLE_RATE
        audios.append(_decode_input_audio(data, f"{where}.input_audio.data", services, MAX_CHAT_AUDIO_SECONDS - heard))
        return {"type": "audio"}
    raise InvalidOption(f"{where}.type", f"must be text or input_audio, got {quoted(kind)}")


def _decode_input_audio(data: str, where: str, services: Services, budget: float) -> Any:
    """Base64 audio in any format ffmpeg reads, as 16 kHz mono samples, at most budget seconds long."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOption(where, "is not valid base64") from None
    with temporary_file(services.uploads_dir) as path:
        path.write_bytes(raw)
        audio.probe(path)
        # One segment of at most the budget: a small file of hours of audio never fills memory or the prompt.
        try:
            with closing(audio.stream_segments(path, MAX_SEGMENT_SECONDS, max_seconds=budget)) as segments:
                first = next(segments)
        except AudioTooLong:
            # The feature extractor of the official checkpoints truncates past 300 s: refuse, never cut.
            raise InvalidOption(
                where, f"a conversation's audio must total at most {MAX_CHAT_AUDIO_SECONDS:g} s; this part goes past it"
            ) from None
    return first.samples


def _answer(future: Future[GenerationResult], check: Check | None) -> GenerationResult:
    """The chat's answer; given up (and its work cancelled) if check raises while waiting: the client left."""
    try:
        while True:
            try:
                return future.result(timeout=CHECK_SECONDS)
            except FutureTimeout:
                if check:
                    check()
    finally:
        future.cancel()  # a no-op once it has its result


def _finish_reason(result: GenerationResult) -> str:
    return "stop" if result.stop_reason == "eos" else "length"


def _chat_usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.tokens,
        "total_tokens": result.prompt_tokens + result.tokens,
    }


_END = object()


def _stream_chat(
    services: Services,
    chat: ChatPrompt,
    params: GenerationParams,
    model: str,
    completion_id: str,
    include_usage: bool,
) -> Response:
    """chat.completion.chunk events as the worker decodes text, then the finish chunk and [DONE]."""
    pieces: queue.SimpleQueue[object] = queue.SimpleQueue()
    future = services.engine.submit([GenerationRequest.for_chat(chat, params, on_text=pieces.put)])[0]
    # Every piece is put before the result is set, so the end marker comes after the last piece.
    future.add_done_callback(lambda _: pieces.put(_END))
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        while (piece := pieces.get()) is not _END:
            if piece:
                yield chunk({"content": piece})
        result = future.result()
        yield chunk({}, _finish_reason(result))
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _chat_usage(result)})
        yield _sse("[DONE]")

    response = _event_stream(events(), "streamed chat")
    # However the response ends (finished, or the client left before its turn came), free the worker from it.
    response.call_on_close(future.cancel)
    return response
