"""The seam between the service and a model family: the Backend protocol, its request and result types."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

SAMPLE_RATE = 16000
# Runaway guard: no speech needs more than this many new tokens per second of audio (fast speech is about
# 4 to 6), plus a margin for short segments, punctuation and a language tag.
MAX_TOKENS_PER_SECOND = 8
TOKEN_MARGIN = 32
# Qwen2.5-Omni's audio encoder emits 25 tokens per second (Qwen3-Omni about 13): the cost estimate uses the
# larger rate, so a batch's token budget is never underestimated.
AUDIO_TOKENS_PER_SECOND = 25
PROMPT_TOKENS = 40

StopReason = Literal["eos", "max_tokens", "repetition"]


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; segments with equal params can share one generate call."""

    max_new_tokens: int
    temperature: float
    repetition_penalty: float
    # Benchmarks only: force this many tokens, so random weights cost what real speech costs.
    min_new_tokens: int = 0


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """One segment of 16 kHz mono audio to turn into text."""

    samples: np.ndarray
    params: GenerationParams
    language: str | None = None
    prompt: str | None = None

    @property
    def token_limit(self) -> int:
        """New tokens allowed: the client's max_new_tokens, capped from the segment's length."""
        guard = math.ceil(len(self.samples) / SAMPLE_RATE * MAX_TOKENS_PER_SECOND) + TOKEN_MARGIN
        return max(self.params.min_new_tokens, min(self.params.max_new_tokens, guard))

    @property
    def cost(self) -> int:
        """Upper estimate of the sequence length this segment occupies in a batch (prompt, audio, output)."""
        audio = math.ceil(len(self.samples) / SAMPLE_RATE * AUDIO_TOKENS_PER_SECOND)
        return PROMPT_TOKENS + audio + self.token_limit


@dataclass(frozen=True)
class GenerationResult:
    """A segment's text and why generation stopped (repetition: a loop was detected and its tail trimmed)."""

    text: str
    stop_reason: StopReason
    # New tokens kept for this segment (after trimming a loop).
    tokens: int = 0


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
