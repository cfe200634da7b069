"""The seam between the service and a model family: the Backend protocol and its request type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


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


class Backend(Protocol):
    """A loaded model. Only the inference worker thread calls it."""

    device: str

    def generate(self, batch: Sequence[GenerationRequest]) -> list[str]:
        """Text for each request, in order; every request in a batch has the same params."""
        ...

    def close(self) -> None:
        """Drop every reference to the model so its memory can be freed."""
        ...
