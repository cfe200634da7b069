"""The seam between the service and a model family: the Backend protocol, its request and result types."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np

from app.audio import SAMPLE_RATE
from app.media import QWEN25_GRID, Grid, Video, image_tokens
from app.transcript import StopReason

# Runaway guard: no speech needs more than this many new tokens per second of audio, plus a margin for short
# segments, punctuation and a language tag. bench/results/tokens.md measures Qwen's vocabulary at up to 11
# tokens per second of fast speech (10 syllables a second of Vietnamese); a loop is stopped earlier anyway,
# by the repetition detector, so the guard only has to end what that misses.
MAX_TOKENS_PER_SECOND = 15
TOKEN_MARGIN = 32
# Qwen2.5-Omni's audio encoder emits 25 tokens per second (Qwen3-Omni about 13): the cost estimate uses the
# larger rate, so a batch's token budget is never underestimated.
AUDIO_TOKENS_PER_SECOND = 25
PROMPT_TOKENS = 40
# A chat turn's own tokens (<|im_start|>role, newlines, <|im_end|>), and an audio part's begin and end markers.
MESSAGE_TOKENS = 8
AUDIO_MARKER_TOKENS = 2
VISION_MARKER_TOKENS = 2
# The media a chat's content parts may stand for.
MEDIA_PARTS = ("audio", "image", "video")
# Byte-level BPE averages about 4 UTF-8 bytes per English token and about 3 (one character) per Chinese one:
# counting a token per 3 bytes rarely underestimates.
BYTES_PER_TOKEN = 3
CHAT_ROLES = frozenset({"system", "user", "assistant"})

# What a request asks of the model: its speech as text, that speech in English, or the language it is in.
RequestTask = Literal["transcribe", "translate", "identify"]
# An identification answers with a language name of a few tokens: its cost in a batch.
IDENTIFY_TOKENS = 32

# C0 and C1 control characters but tab and newline, and DEL. A model can emit them (random or confused weights,
# byte-level tokens); in subtitles they break players (ffmpeg drops every SRT cue after a NUL) and in JSON
# they are noise. Every backend passes its decoded text through printable().
_CONTROL = dict.fromkeys(c for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n")


def printable(text: str) -> str:
    """Model text without control characters (tab and newline kept), character by character."""
    return text.translate(_CONTROL)


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; segments with equal params can share one generate call."""

    max_new_tokens: int
    temperature: float
    repetition_penalty: float
    # Benchmarks only: force this many tokens, so random weights cost what real speech costs.
    min_new_tokens: int = 0
    # Whether the output's length follows the audio's, so the runaway guard caps it: a transcript does, a
    # caption (a description of the sounds, whatever their length) does not.
    paced: bool = True


def audio_tokens(samples: np.ndarray) -> int:
    """Upper estimate of the prompt tokens one audio expands to."""
    return math.ceil(len(samples) / SAMPLE_RATE * AUDIO_TOKENS_PER_SECOND)


@dataclass(frozen=True, eq=False)
class ChatPrompt:
    """A conversation for the thinker: processor-format messages plus the media for their audio, image and video
    parts."""

    # [{"role": "system" | "user" | "assistant", "content": [part, ...]}], each part {"type": "text", "text": str}
    # or {"type": "audio" | "image" | "video"}; a plain string content is one text part.
    messages: list[dict[str, Any]]
    # 16 kHz mono float32, one per {"type": "audio"} part, in message order.
    audios: list[np.ndarray]
    # RGB uint8 (height x width x 3) at the processor's size (app.media), one per {"type": "image"} part.
    images: list[np.ndarray] = field(default_factory=list)
    # Sampled frames, one per {"type": "video"} part.
    videos: list[Video] = field(default_factory=list)
    # The blocks the images were sized in (their tokens are counted in them).
    grid: Grid = QWEN25_GRID

    def __post_init__(self) -> None:
        # Checked here, in the request's own thread: a malformed conversation must never reach the worker,
        # where it would fail the whole batch it shares with other requests.
        if not self.messages:
            raise ValueError("a chat needs at least one message")
        parts = dict.fromkeys(MEDIA_PARTS, 0)
        for message in self.messages:
            if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
                raise ValueError(f"each message needs a role among {sorted(CHAT_ROLES)}")
            content = message.get("content")
            if isinstance(content, str):
                continue
            if not isinstance(content, list):
                raise ValueError("a message's content must be a string or a list of parts")
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in parts:
                    parts[kind] += 1
                elif kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        'each content part must be {"type": "text", "text": str} or {"type": "audio" | "image" | '
                        '"video"}'
                    )
        given = {"audio": len(self.audios), "image": len(self.images), "video": len(self.videos)}
        for kind, count in parts.items():
            if count != given[kind]:
                raise ValueError(f"the messages have {count} {kind} parts but {given[kind]} {kind}s were given")
        for audio in self.audios:
            if not isinstance(audio, np.ndarray) or audio.ndim != 1:
                raise ValueError("each audio must be a 1-D array of 16 kHz mono samples")
        for image in self.images:
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError("each image must be RGB uint8, height x width x 3")
        for video in self.videos:
            frames = video.frames
            if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or not video.fps > 0:
                raise ValueError("each video must be RGB uint8 frames, frames x height x width x 3, at a rate")

    @property
    def sees(self) -> bool:
        """Whether the conversation holds images or video (only variants with a vision tower take it)."""
        return bool(self.images or self.videos)

    @cached_property
    def estimated_tokens(self) -> int:
        """Upper estimate of the prompt length: template, text, audio, images and video (cached: the engine asks
        often)."""
        texts = 0
        for message in self.messages:
            content = message["content"]
            pieces = [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
            texts += sum(len(piece.encode()) for piece in pieces)
        # The backend pads audio shorter than a second to a second.
        audio = sum(max(audio_tokens(a), AUDIO_TOKENS_PER_SECOND) + AUDIO_MARKER_TOKENS for a in self.audios)
        vision = sum(image_tokens(i, self.grid) + VISION_MARKER_TOKENS for i in self.images)
        vision += sum(v.tokens + VISION_MARKER_TOKENS for v in self.videos)
        prompt = PROMPT_TOKENS + MESSAGE_TOKENS * len(self.messages) + math.ceil(texts / BYTES_PER_TOKEN)
        return prompt + audio + vision


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """One segment of 16 kHz mono audio to turn into text, or (chat set) a conversation to answer."""

    samples: np.ndarray
    params: GenerationParams
    language: str | None = None
    prompt: str | None = None
    chat: ChatPrompt | None = None
    # identify: which language the audio is in (result.language, with result.confidence); such requests share
    # a batch only with each other. translate: its text in English; it shares a batch with transcriptions.
    task: RequestTask = "transcribe"
    # Streams the text as it is generated. Called on the inference worker thread, zero or more times during
    # generation and once more as it ends (before the result is returned), with each new non-empty piece of
    # decoded text, in order. For stop_reason "eos" or "max_tokens" the pieces joined are exactly the
    # result's text before .strip(); for "repetition" they run on to where the loop was detected, and the
    # result's text before .strip() is a prefix of them (streamed text cannot be taken back). It must be
    # quick: every row of the batch waits for it. An exception from it is logged and ends this request's
    # streaming, never its generation. If generation fails, what was streamed stands; a retry (a smaller
    # batch after running out of memory) streams only what comes after it, and should a sampled retry
    # diverge from it, streaming ends there (logged) while the result stands.
    on_text: Callable[[str], None] | None = None

    @classmethod
    def for_chat(
        cls, chat: ChatPrompt, params: GenerationParams, on_text: Callable[[str], None] | None = None
    ) -> GenerationRequest:
        """A request to answer a conversation (its audio lives in chat, not in samples)."""
        return cls(np.zeros(0, dtype=np.float32), params, chat=chat, on_text=on_text)

    @property
    def token_limit(self) -> int:
        """New tokens allowed: the client's max_new_tokens, for a segment capped from its length."""
        if self.task == "identify":
            return IDENTIFY_TOKENS
        if self.chat is not None or not self.params.paced:
            # An answer's or a caption's length has nothing to do with its audio's: no runaway guard.
            return max(self.params.min_new_tokens, self.params.max_new_tokens)
        guard = math.ceil(len(self.samples) / SAMPLE_RATE * MAX_TOKENS_PER_SECOND) + TOKEN_MARGIN
        return max(self.params.min_new_tokens, min(self.params.max_new_tokens, guard))

    @property
    def cost(self) -> int:
        """Upper estimate of the sequence length this request occupies in a batch (prompt, audio, output)."""
        if self.chat is not None:
            return self.chat.estimated_tokens + self.token_limit
        return PROMPT_TOKENS + audio_tokens(self.samples) + self.token_limit


@dataclass(frozen=True)
class GenerationResult:
    """A segment's text and why generation stopped (repetition: a loop was detected and its tail trimmed)."""

    text: str
    stop_reason: StopReason
    # New tokens kept for this segment (after trimming a loop).
    tokens: int = 0
    # The row's prompt length in tokens (template, text and audio), without padding.
    prompt_tokens: int = 0
    # The language the model identified (a code), for models that report one (Qwen3-ASR), and for identify.
    language: str | None = None
    # identify: the probability the model gives that language, among the languages it could name.
    confidence: float | None = None


# Qwen's own recipe aligns at most 3 minutes of audio at a time (MAX_FORCE_ALIGN_INPUT_SECONDS): a longer
# segment keeps its estimated word times.
MAX_ALIGN_SECONDS = 180


@dataclass(frozen=True, eq=False)
class AlignmentRequest:
    """A segment's audio (16 kHz mono, as the model heard it) and the text to time word by word in it."""

    samples: np.ndarray
    text: str
    language: str | None = None

    @property
    def cost(self) -> int:
        """Upper estimate of the sequence length: audio, two markers per word, and the words themselves."""
        return PROMPT_TOKENS + audio_tokens(self.samples) + math.ceil(len(self.text.encode()) / BYTES_PER_TOKEN) * 3


# The aligner's words as it split the text (letters, digits and apostrophes only), with start and end in
# seconds of the request's audio; None when it could not align this text (an unsupported language).
Alignment = list[tuple[str, float, float]] | None


class AlignerDownloading(Exception):
    """The aligner's checkpoint is being downloaded (in the background): word times are estimated meanwhile."""


class BackendOutOfMemory(Exception):
    """The accelerator ran out of memory for this batch; a smaller one may fit."""


class Backend(Protocol):
    """A loaded model. Only the inference worker thread calls it."""

    device: str

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """A result for each request, in order; every request in a batch has the same params."""
        ...

    def close(self) -> None:
        """Drop every reference to the model so its memory can be freed."""
        ...


class Aligner(Protocol):
    """A loaded forced aligner. Only the inference worker thread calls it."""

    device: str

    def align(self, batch: Sequence[AlignmentRequest]) -> list[Alignment]:
        """An alignment (or None) for each request, in order."""
        ...

    def close(self) -> None:
        """Drop every reference to the model so its memory can be freed."""
        ...
