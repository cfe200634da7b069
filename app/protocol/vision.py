"""The native vision routes' shapes: POST /ocr, /describe and /describe-region, their form and their answers."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.protocol.native import MAX_PROMPT_CHARS, MaxNewTokens, Shape, Temperature, Timestamp, absent

# Exactly four non-negative numbers separated by commas (spaces around each allowed): x1,y1,x2,y2.
_NUMBER = r"\s*([0-9]+(?:\.[0-9]+)?)\s*"  # ASCII digits only (\d would take ٣ and ３)
_BOX = re.compile(",".join([_NUMBER] * 4))
BOX_RULE = (
    "must be x1,y1,x2,y2: exactly four numbers separated by commas, in the image's pixels, with x1 < x2 and "
    "y1 < y2, inside the image"
)
Box = tuple[float, float, float, float]


def parse_box(raw: str) -> Box:
    """x1,y1,x2,y2 as four numbers with x1 < x2 and y1 < y2 (the image's bounds are checked once it is read)."""
    match = _BOX.fullmatch(raw)
    if match is None:
        raise ValueError(f"{BOX_RULE}; got {raw[:80]!r}")
    x1, y1, x2, y2 = (float(g) for g in match.groups())
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"{BOX_RULE}; got {raw[:80]!r}, whose {'x1 >= x2' if x1 >= x2 else 'y1 >= y2'}")
    return x1, y1, x2, y2


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def _box(value: object) -> object:
    value = _blank_is_none(value)
    return parse_box(value) if isinstance(value, str) else value


class VisionForm(BaseModel):
    """The form fields of the vision routes (the image or video itself is the multipart field file)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    media_id: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        max_length=64,
        description="Ask about a file sent before instead of uploading it again: the media_id an earlier answer "
        "gave (kept an hour after its last use). The earlier questions and answers about it are the context.",
    )
    question: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="What to ask (/describe, /describe-region); default: describe it.",
    )
    box: Annotated[Box | None, BeforeValidator(_box)] = Field(
        None, description="/describe-region: the region, x1,y1,x2,y2 in the image's pixels (required there)."
    )
    max_new_tokens: Annotated[MaxNewTokens | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Most tokens in the answer; default: the server's."
    )
    temperature: Annotated[Temperature | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Sampling temperature; 0 is greedy. Default: the server's (0 for /ocr)."
    )


class OcrQuery(BaseModel):
    """The query of POST /ocr."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["text", "json"] = Field(
        "text", description="text: a text/plain attachment ocr_result_<YYYYMMDDHHMMSS>.txt; json: OcrResult."
    )


class MediaInfo(Shape):
    """The file a vision answer is about, kept for follow-up questions."""

    media_id: str = Field(description="Send it as media_id to ask more without uploading the file again.")
    kind: Literal["image", "video"]
    width: int = Field(ge=1, description="Width in pixels, as uploaded (after the photo's EXIF rotation).")
    height: int = Field(ge=1, description="Height in pixels, as uploaded.")
    frames: int = Field(ge=1, description="Frames the model saw (1 for an image).")
    expires_at: Timestamp = Field(description="When the media_id expires unless used again.")


class VisionUsage(Shape):
    """Tokens of the prompt (template, text, images, video) and of the answer."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class OcrResult(Shape):
    """POST /ocr?format=json."""

    text: str = Field(description="All the readable text, line by line, without commentary.")
    file_name: str = Field(
        description="The name the text/plain answer gives it, ocr_result_<YYYYMMDDHHMMSS>.txt (UTC): save the text "
        "under it without asking again."
    )
    media: MediaInfo
    usage: VisionUsage


class Description(Shape):
    """POST /describe and /describe-region."""

    question: str = Field(description="The question answered (the default one when none was sent).")
    answer: str
    box: list[int] | None = Field(
        None, exclude_if=absent, description="/describe-region: the region, as it was cropped (pixels)."
    )
    turn: int = Field(ge=1, description="Which question about this media_id this was (1: the first).")
    finish_reason: Literal["stop", "length"]
    media: MediaInfo
    usage: VisionUsage

    OMITTED = ("box",)
