"""Per-row hooks on batched generation: each row's own token limit, repetition loops, and text streaming."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import StoppingCriteria

log = logging.getLogger(__name__)

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


def row_output(ids: Sequence[int], end_ids: Collection[int], limit: int) -> tuple[list[int], bool]:
    """A row's own new tokens (up to its first end token, at most limit) and whether an end token came first."""
    # Rows that stop early are padded with the pad token, which is also an end token: only an end token
    # inside the row's own limit is the model ending its turn.
    end = next((i for i, token in enumerate(ids) if token in end_ids), len(ids))
    return list(ids[: min(end, limit)]), end < limit


@dataclass(eq=False)
class StreamState:
    """What a request's text callback has been given, kept across generate attempts (retries after OOM)."""

    pieces: list[str] = field(default_factory=list)
    # The callback raised, or a retry diverged from what it was given: it gets nothing more.
    closed: bool = False


class _RowStream:
    """One streaming row of one generate attempt."""

    def __init__(self, callback: Callable[[str], None], state: StreamState, limit: int) -> None:
        self.callback = callback
        self.state = state
        self.limit = limit
        self.ids: list[int] = []
        self.released = 0  # ids already turned into text
        self.done = False  # an end token came or the limit was reached: no more ids
        self.text: list[str] = []  # this attempt's text so far
        self.length = 0
        # On a retry, this attempt's text first replays what the callback already has; only what goes beyond
        # it is new.
        self.prior = "".join(state.pieces)

    def give(self, text: str) -> None:
        """Add text to this attempt's output; send the callback whatever it has not had yet."""
        start, self.length = self.length, self.length + len(text)
        self.text.append(text)
        if self.state.closed:
            return
        if start >= len(self.prior):
            self._send(text)
            return
        overlap = min(len(text), len(self.prior) - start)
        if text[:overlap] != self.prior[start : start + overlap]:
            log.warning("a retried generation diverged from the text already streamed: streaming to it stops")
            self.state.closed = True
        elif overlap < len(text):
            self._send(text[overlap:])

    def _send(self, piece: str) -> None:
        self.state.pieces.append(piece)
        try:
            self.callback(piece)
        except Exception:  # a client's callback must never break the batch's generation
            log.exception("the text callback failed: streaming to it stops")
            self.state.closed = True


class TextStream(StoppingCriteria):
    """Streams each row's new text to its callback as tokens arrive (see GenerationRequest.on_text); stops nothing."""

    # transformers calls stopping criteria once per decoding step, after appending that step's tokens, with the
    # whole input_ids (prompt and new tokens). Each call decodes only the ids not yet turned into text; text
    # ending in U+FFFD (a character whose UTF-8 bytes are split across tokens) is held back until the rest
    # arrives. Byte-level BPE decoding is concatenation of bytes, so pieces cut at character boundaries join
    # to the decoding of the whole row; finish() checks that against the final ids and sends the remainder.

    def __init__(
        self,
        prompt_length: int,
        callbacks: Mapping[int, Callable[[str], None]],
        limits: Sequence[int],
        end_ids: Collection[int],
        decode: Callable[[list[int]], str],
        states: Mapping[int, StreamState] | None = None,
    ) -> None:
        states = states or {}
        self.prompt_length = prompt_length
        self.rows = {
            row: _RowStream(callback, states.get(row) or StreamState(), limits[row])
            for row, callback in callbacks.items()
        }
        self.end_ids = frozenset(end_ids)
        self.decode = decode
        self.seen = 0  # new tokens per row already read

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        count = input_ids.shape[1] - self.prompt_length
        live = [row for row, stream in self.rows.items() if not stream.done and not stream.state.closed]
        if live and count > self.seen:
            index = torch.tensor(live, device=input_ids.device)
            new = input_ids[index, self.prompt_length + self.seen :].tolist()
            for row, ids in zip(live, new, strict=True):
                self._extend(self.rows[row], ids)
        self.seen = max(self.seen, count)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def _extend(self, stream: _RowStream, ids: list[int]) -> None:
        for token in ids:
            if token in self.end_ids:
                stream.done = True
                break
            stream.ids.append(token)
            if len(stream.ids) >= stream.limit:
                stream.done = True
                break
        pending = stream.ids[stream.released :]
        if not pending:
            return
        text = self.decode(pending)
        if text.endswith("\ufffd") and not stream.done:
            return
        stream.released = len(stream.ids)
        if text:
            stream.give(text)

    def finish(self, rows: Sequence[Sequence[int]]) -> None:
        """After generate: send each row the rest of its text, so the pieces join to its whole decoded output."""
        for row, stream in self.rows.items():
            if stream.state.closed:
                continue
            ids, _ = row_output(rows[row], self.end_ids, stream.limit)
            full = self.decode(ids)
            so_far = "".join(stream.text)
            if not full.startswith(so_far):
                # Only a tokenizer whose decoding is not concatenation could get here; what was sent stands.
                log.warning("streamed text is not a prefix of the decoded row; its remainder is not streamed")
                continue
            if len(full) > len(so_far):
                stream.give(full[len(so_far) :])
