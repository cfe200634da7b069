"""Per-segment stopping for batched generation: each row's own token limit, and repetition loops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import StoppingCriteria

# A loop is a period of 1 to MAX_PERIOD tokens repeated back to back at least MIN_REPEATS times over at
# least MIN_SPAN tokens. Speech can repeat a word or two ("no, no, no"), never 32 tokens of one pattern.
MAX_PERIOD = 50
MIN_REPEATS = 4
MIN_SPAN = 32
# Checking every step costs more than it saves; a loop is caught at most this many tokens late.
CHECK_EVERY = 4


def _span(period: int) -> int:
    return max(MIN_REPEATS * period, MIN_SPAN)


class RowTokenLimits(StoppingCriteria):
    """Stops each row at its own number of new tokens (generate's max_new_tokens is the batch's largest)."""

    def __init__(self, prompt_length: int, limits: Sequence[int]) -> None:
        import torch

        self.prompt_length = prompt_length
        self.limits = torch.tensor(list(limits))

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        generated = input_ids.shape[1] - self.prompt_length
        return generated >= self.limits.to(input_ids.device)


class RepetitionLoop(StoppingCriteria):
    """Stops rows whose newest tokens are one short pattern repeated over and over; remembers which."""

    def __init__(self, prompt_length: int, batch_size: int, end_ids: Sequence[int]) -> None:
        import torch

        self.prompt_length = prompt_length
        self.end_ids = torch.tensor(list(end_ids))
        self.detected = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_length :]
        count = generated.shape[1]
        found = self.detected.to(input_ids.device)
        if count >= MIN_SPAN and count % CHECK_EVERY == 0:
            looping = torch.zeros_like(found)
            for period in range(1, MAX_PERIOD + 1):
                span = _span(period)
                if count < span:
                    break
                tail = generated[:, -span:]
                looping |= (tail[:, period:] == tail[:, :-period]).all(dim=1)
            # Rows that already ended are padded with an end token, which looks like a loop but is not one.
            ended = torch.isin(generated, self.end_ids.to(input_ids.device)).any(dim=1)
            found = found | (looping & ~ended)
            self.detected = found.cpu()
        return found


def trim_repetition(ids: list[int]) -> list[int] | None:
    """ids without a looping tail (one copy of the pattern kept), or None if the tail does not loop."""
    for period in range(1, MAX_PERIOD + 1):
        span = _span(period)
        if len(ids) < span:
            return None
        if all(ids[-k] == ids[-k - period] for k in range(1, span - period + 1)):
            start = len(ids) - span
            while start > 0 and ids[start - 1] == ids[start - 1 + period]:
                start -= 1
            return ids[: start + period]
    return None
