"""POST /v1/chat/completions: conversations with text, audio, images and video, answered by the loaded thinker."""

from __future__ import annotations

import base64
import binascii
import queue
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import closing
from typing import Any

import numpy as np
from flask import Response, current_app, jsonify, request

from app import audio, media, vision
from app.backends import VISION_MARKER_TOKENS, ChatPrompt, GenerationParams, GenerationRequest, GenerationResult
from app.checkpoints import context_tokens
from app.errors import AudioTooLong, InvalidOption, InvalidRequest
from app.media import image_tokens
from app.openai_api.events import event_stream, sse
from app.openai_api.models import check_model
from app.pipeline import CHECK_SECONDS, Check
from app.protocol.native import MAX_SEGMENT_SECONDS
from app.protocol.openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChatUsage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    ImagePart,
    ImageUrlPart,
    InputAudioPart,
    TextPart,
    VideoUrlPart,
    chunk_body,
)
from app.protocol.validation import validate
from app.services import Services, current_services
from app.settings import Settings
from app.uploads import client_check, temporary_file

# All the audio of one conversation: one segment's worth, what the model hears at once in transcription too.
MAX_CHAT_AUDIO_SECONDS = MAX_SEGMENT_SECONDS
# OpenAI's roles in the processor's terms.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def chat_completions() -> Response:
    """OpenAI chat completions with text, audio, image and video parts, answered by the loaded thinker."""
    services = current_services()
    settings = services.settings
    body = validate(ChatCompletionRequest, _json_object(), request_errors=frozenset({"model"}))
    model = check_model(settings, body.model)
    if not settings.model_variant.chats:
        raise InvalidOption(
            "model",
            f"the {settings.model_variant.name} variant is a speech recognition model: it transcribes "
            "(POST /v1/audio/transcriptions) but does not chat",
        )
    params = _params(body, settings)
    chat = _prompt(body.messages, services, params)
    check_context(chat, params, settings)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    if body.stream:
        return _stream_chat(services, chat, params, model, completion_id, include_usage)
    result = answer(services.engine.submit([GenerationRequest.for_chat(chat, params)])[0], client_check())
    completion = ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=finish_reason(result))],
        usage=_usage(result),
    )
    return jsonify(completion.body())


def _json_object() -> Any:
    """The request body as parsed JSON; a clear 400 for anything else (not JSON, invalid, nested too deeply)."""
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


def _params(body: ChatCompletionRequest, settings: Settings) -> GenerationParams:
    """The decoding settings: the request's, else the server's defaults."""
    defaults = settings.default_options()
    _, limit = body.token_limit()
    temperature = defaults.temperature if body.temperature is None else body.temperature
    return GenerationParams(limit or defaults.max_new_tokens, float(temperature), defaults.repetition_penalty)


def check_context(
    chat: ChatPrompt,
    params: GenerationParams,
    settings: Settings,
    field: str = "messages",
    remedy: str = "shorten the conversation or lower max_tokens",
) -> None:
    """The prompt and the answer it asks for must fit the model's context: a clear 400 rather than a long failure."""
    context = context_tokens(settings)
    prompt = chat.estimated_tokens
    if prompt + params.max_new_tokens > context:
        raise InvalidOption(
            field,
            f"the request is about {prompt} tokens and asks for up to {params.max_new_tokens} more, over the "
            f"model's context of {context} tokens: {remedy}",
        )


def _prompt(messages: list[ChatMessage], services: Services, params: GenerationParams) -> ChatPrompt:
    """The conversation in the processor's form, with the decoded media of its parts in order.

    Text, audio and images are read first, and the conversation is refused as soon as its images pass the
    model's context (a hundred large images must not all be decoded to be refused); the videos then share what
    the context has left, so text after a video counts as much as text before it.
    """
    settings = services.settings
    grid = vision.grid(settings)
    room = context_tokens(settings) - params.max_new_tokens
    deadline = time.monotonic() + vision.REMOTE_MEDIA_SECONDS  # one budget for all the request's fetches
    converted: list[dict[str, Any]] = []
    audios: list[np.ndarray] = []
    images: list[np.ndarray] = []
    pending: list[tuple[str, str]] = []  # each video part's place in the request and its URL
    seen = 0  # the images' tokens so far
    for i, message in enumerate(messages):
        parts: list[dict[str, Any]] = []
        converted.append({"role": ROLES[message.role], "content": parts})
        for j, part in enumerate(message.content):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, InputAudioPart):
                heard = sum(len(a) for a in audios) / audio.SAMPLE_RATE
                where += ".input_audio.data"
                audios.append(_decode_audio(part.input_audio.data, where, services, MAX_CHAT_AUDIO_SECONDS - heard))
                parts.append({"type": "audio"})
            elif isinstance(part, ImageUrlPart | ImagePart):
                url, detail = (
                    (part.image_url.url, part.image_url.detail)
                    if isinstance(part, ImageUrlPart)
                    else (part.image, "auto")
                )
                where += ".image_url.url" if isinstance(part, ImageUrlPart) else ".image"
                vision.require_sight(settings, where)
                data = vision.fetch_bytes(url, where, settings, media.MAX_IMAGE_BYTES, deadline)
                images.append(vision.image(data, where, grid, detail))
                parts.append({"type": "image"})
                seen += image_tokens(images[-1], grid) + VISION_MARKER_TOKENS
                if seen > room:
                    # Refused now, not after decoding every other image too.
                    raise InvalidOption(
                        "messages",
                        f"the images so far are already about {seen} tokens, with room for {room} beside the "
                        "answer (the model's context less max_tokens): send fewer or smaller images, or lower "
                        "max_tokens",
                    )
            else:
                url = part.video_url.url if isinstance(part, VideoUrlPart) else part.video
                where += ".video_url.url" if isinstance(part, VideoUrlPart) else ".video"
                vision.require_sight(settings, where)
                pending.append((where, url))
                parts.append({"type": "video"})
    videos: list[media.Video] = []
    if not pending:
        return ChatPrompt(converted, audios, images, videos, grid)
    # Each video may take an equal share of what the rest leaves (its two markers included).
    without = [{**m, "content": [p for p in m["content"] if p["type"] != "video"]} for m in converted]
    left = room - ChatPrompt(without, audios, images, [], grid).estimated_tokens - 2 * len(pending)
    for where, url in pending:
        data = vision.fetch_bytes(url, where, settings, media.MAX_VIDEO_BYTES, deadline)
        videos.append(vision.video(data, where, services.uploads_dir, left // len(pending), grid, client_check()))
    return ChatPrompt(converted, audios, images, videos, grid)


def _decode_audio(data: str, where: str, services: Services, budget: float) -> np.ndarray:
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


def answer(future: Future[GenerationResult], check: Check | None) -> GenerationResult:
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


def finish_reason(result: GenerationResult) -> FinishReason:
    return "stop" if result.stop_reason == "eos" else "length"


def _usage(result: GenerationResult) -> ChatUsage:
    return ChatUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.tokens,
        total_tokens=result.prompt_tokens + result.tokens,
    )


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
    created = int(time.time())

    def chunk(choices: list[ChunkChoice], usage: ChatUsage | None = None) -> str:
        body = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage)
        return sse(chunk_body(body))

    def events() -> Iterator[str]:
        yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
        while (piece := pieces.get()) is not _END:
            if piece:
                yield chunk([ChunkChoice(delta=ChunkDelta(content=str(piece)))])
        result = future.result()
        yield chunk([ChunkChoice(delta=ChunkDelta(), finish_reason=finish_reason(result))])
        if include_usage:
            yield chunk([], _usage(result))
        yield sse("[DONE]")

    response = event_stream(events(), "streamed chat")
    # However the response ends (finished, or the client left before its turn came), free the worker from it.
    response.call_on_close(future.cancel)
    return response
