"""POST /ocr, /describe and /describe-region: the vision demos' three tasks as multipart uploads.

Each answer carries a media_id; a follow-up names it instead of uploading the file again and is answered with
the earlier questions and answers about that file as context (app.media_store keeps them an hour).
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.datastructures import FileStorage

from app import media
from app.backends import ChatPrompt, GenerationParams, GenerationRequest, GenerationResult
from app.checkpoints import context_tokens
from app.errors import InsufficientStorage, InvalidOption, MediaTooLarge, MissingFile
from app.media_store import Item, Turn
from app.openai_api.chat import answer, check_context, finish_reason
from app.protocol.validation import validate
from app.protocol.vision import (
    BOX_RULE,
    Description,
    MediaInfo,
    OcrQuery,
    OcrResult,
    VisionForm,
    VisionUsage,
)
from app.security import caller
from app.services import Services, current_services
from app.uploads import client_check, form_and_files, local_path
from app.vision import grid, require_sight

bp = Blueprint("vision", __name__)

# The instruction for OCR: the two prompts of Qwen2.5-VL's OCR cookbook, the text alone (Qwen3-Omni's
# cookbook asks "Extract the text from the image.", which leaves room for commentary).
OCR_INSTRUCTION = (
    "Read all the text in the image. Please output only the text content from the image without any additional "
    "descriptions or formatting."
)
DEFAULT_QUESTIONS = {"image": "Describe this image.", "video": "Describe this video."}
REGION_QUESTION = "Describe the object inside the red rectangle."
# How the region is shown: the whole image with the box drawn in red, then a close-up of the box.
REGION_PREAMBLE = (
    "The first image is the whole picture with a red rectangle drawn around a region; the second image is a "
    "close-up of that region."
)


@bp.post("/ocr")
def ocr() -> Response:
    """All the readable text of an image: a text/plain attachment, or JSON with ?format=json."""
    services = current_services()
    query = validate(OcrQuery, {**form_and_files()[0].to_dict(), **request.args.to_dict()})
    form = _form(services)
    item, media_id = _media(services, form, kinds=("image",))
    content = [{"type": "image"}, {"type": "text", "text": OCR_INSTRUCTION}]
    chat = ChatPrompt([{"role": "user", "content": content}], [], [item.frames[0]], grid=grid(services.settings))
    result = _generate(services, chat, form, greedy=True)
    text = result.text
    name = f"ocr_result_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}.txt"
    if query.format == "json":
        info = _info(services, item, media_id)
        return jsonify(OcrResult(text=text, file_name=name, media=info, usage=_usage(result)).body())
    response = send_file(io.BytesIO((text + "\n").encode("utf-8")), as_attachment=True, download_name=name)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["X-Media-Id"] = media_id
    return response


@bp.post("/describe")
def describe() -> Response:
    """The answer to a question about an image or a video (default: a description)."""
    services = current_services()
    form = _form(services)
    item, media_id = _media(services, form, kinds=("image", "video"))
    question = form.question or DEFAULT_QUESTIONS[item.kind]
    part: dict[str, Any] = {"type": item.kind}
    blocks = grid(services.settings)
    images = [item.frames[0]] if item.kind == "image" else []
    videos = [item.video(blocks)] if item.kind == "video" else []
    turns = item.turns
    chat = ChatPrompt(_conversation(turns, part, question), [], images, videos, blocks)
    room = context_tokens(services.settings) - _params(services, form).max_new_tokens
    while turns and chat.estimated_tokens > room:
        # A long conversation forgets its oldest turns rather than refuse the next question.
        turns = turns[1:]
        chat = ChatPrompt(_conversation(turns, part, question), [], images, videos, blocks)
    result = _generate(services, chat, form)
    services.media.add_turn(media_id, Turn(question, result.text))
    return _described(services, item, media_id, question, result)


@bp.post("/describe-region")
def describe_region() -> Response:
    """What is inside box (x1,y1,x2,y2 in the image's pixels): the image with the box drawn, then a close-up."""
    services = current_services()
    form = _form(services)
    if form.box is None:
        raise InvalidOption("box", f"is required: it {BOX_RULE}")
    item, media_id = _media(services, form, kinds=("image",))
    question = form.question or REGION_QUESTION
    text = f"{REGION_PREAMBLE} {question}"
    # The two images share what the context leaves beside the answer and the words (each at most its half).
    blocks = grid(services.settings)
    room = _room(services, form, text) // 2 - 2
    overview, close_up, box = media.region(item.picture, form.box, blocks, max_blocks=room)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}]
    chat = ChatPrompt(messages, [], [overview, close_up], grid=blocks)
    result = _generate(services, chat, form)
    return _described(services, item, media_id, question, result, box=list(box))


def _form(services: Services) -> VisionForm:
    """The request's fields, once the variant is known to see."""
    require_sight(services.settings, "file")
    return validate(VisionForm, form_and_files()[0].to_dict())


def _media(services: Services, form: VisionForm, kinds: tuple[str, ...]) -> tuple[Item, str]:
    """The uploaded file (kept for follow-ups under a new media_id), or the one form.media_id names."""
    who = caller()
    if form.media_id is not None:
        if _file() is not None:
            raise InvalidOption("media_id", "send either a file or a media_id, not both")
        item = services.media.get(form.media_id, who.owner, who.admin)
        if item.kind not in kinds:
            raise InvalidOption("media_id", f"names a {item.kind}; this route takes {' or '.join(kinds)}s")
        return item, form.media_id
    file = _file()
    if file is None:
        raise MissingFile(f"no {' or '.join(kinds)} uploaded: send it as the multipart form field 'file', or send "
                          "the media_id of one sent before", field="file")  # fmt: skip
    item = _decode(services, file, kinds, form)
    if services.disk.low():
        # Kept media are written under the data dir like jobs: not below the free-space reserve.
        raise InsufficientStorage("the server's disk is below its free-space reserve: no room to keep the file",
                                  retry_after=60)  # fmt: skip
    return item, services.media.put(item, who.owner)


def _file() -> FileStorage | None:
    """The multipart field file; None when absent, or empty and unnamed (a browser's file input left empty)."""
    file = form_and_files()[1].get("file")
    if file is not None and not file.filename:
        with local_path(file) as path:
            if path.stat().st_size == 0:
                return None
    return file


def _decode(services: Services, file: FileStorage, kinds: tuple[str, ...], form: VisionForm) -> Item:
    """The upload as an image, else (where a video is welcome) as a video."""
    with local_path(file) as path:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
        if _looks_like_image(head) or kinds == ("image",):
            if size > media.MAX_IMAGE_BYTES:
                raise MediaTooLarge(f"file: an image may be at most {media.MAX_IMAGE_BYTES // 1024**2} MB")
            picture = media.decode_image(path.read_bytes(), "file", grid(services.settings))
            return Item("image", picture.pixels[None], picture.width, picture.height)
        # The video may take what the context leaves beside the answer and the question.
        question = form.question or DEFAULT_QUESTIONS["video"]
        return _video(path, _room(services, form, question) - 2, grid(services.settings))


def _room(services: Services, form: VisionForm, text: str) -> int:
    """Tokens the context leaves for media beside the answer asked for and this text."""
    words = ChatPrompt([{"role": "user", "content": [{"type": "text", "text": text}]}], []).estimated_tokens
    return context_tokens(services.settings) - _params(services, form).max_new_tokens - words


def _video(path: Path, room: int, blocks: media.Grid) -> Item:
    """A video upload's sampled frames, with its frame size as uploaded (stopped if the client leaves)."""
    video = media.decode_video(path, "file", room, blocks, client_check())
    return Item("video", video.frames, video.width, video.height, video.fps)


def _looks_like_image(head: bytes) -> bool:
    """Whether a file starts like one of the image formats Pillow is allowed to open."""
    signatures = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
    return head.startswith(signatures) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _conversation(turns: tuple[Turn, ...], part: dict[str, Any], question: str) -> list[dict[str, Any]]:
    """The media with the first question, the earlier answers and questions, then this question."""
    if not turns:
        return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]
    first, *rest = turns
    messages = [
        {"role": "user", "content": [part, {"type": "text", "text": first.question}]},
        {"role": "assistant", "content": [{"type": "text", "text": first.answer}]},
    ]
    for turn in rest:
        messages.append({"role": "user", "content": [{"type": "text", "text": turn.question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
    return messages


def _params(services: Services, form: VisionForm, greedy: bool = False) -> GenerationParams:
    """The form's limits over the server's defaults (greedy unless a temperature is sent, for OCR)."""
    defaults = services.settings.default_options()
    temperature = form.temperature if form.temperature is not None else (0.0 if greedy else defaults.temperature)
    return GenerationParams(form.max_new_tokens or defaults.max_new_tokens, temperature, defaults.repetition_penalty)


def _generate(services: Services, chat: ChatPrompt, form: VisionForm, greedy: bool = False) -> GenerationResult:
    """The thinker's answer to chat."""
    params = _params(services, form, greedy)
    check_context(chat, params, services.settings, "max_new_tokens",
                  "send a smaller image or a shorter video, or lower max_new_tokens")  # fmt: skip
    future = services.engine.submit([GenerationRequest.for_chat(chat, params)])[0]
    return answer(future, client_check())


def _described(services: Services, item: Item, media_id: str, question: str, result: GenerationResult,
               box: list[int] | None = None) -> Response:  # fmt: skip
    body = Description(
        question=question,
        answer=result.text,
        box=box,
        turn=item.asked + 1,
        finish_reason=finish_reason(result),
        media=_info(services, item, media_id),
        usage=_usage(result),
    )
    return jsonify(body.body())


def _info(services: Services, item: Item, media_id: str) -> MediaInfo:
    expires = datetime.fromtimestamp(math.floor(services.media.expires_at()), UTC)
    return MediaInfo(
        media_id=media_id,
        kind=item.kind,
        width=item.width,
        height=item.height,
        frames=len(item.frames),
        expires_at=expires.isoformat(),
    )


def _usage(result: GenerationResult) -> VisionUsage:
    return VisionUsage(prompt_tokens=result.prompt_tokens, completion_tokens=result.tokens)
