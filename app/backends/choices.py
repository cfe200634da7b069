"""Constrained answers: generation held to a fixed set of token sequences, and each row's choice with its probability.

Language identification asks the model which language it hears and lets it answer only with a name it could
name. At each step only the tokens that continue some choice keep their logits, so the greedy path walks a
trie of the choices, taking at each fork the branch the model gives most probability. The probability of the
answer is the product of its tokens' probabilities, each renormalised over the tokens allowed at its step: a
distribution over the choices themselves, whatever mass the model puts on answers outside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import LogitsProcessor


@dataclass(frozen=True)
class Choice:
    """One allowed answer: what it stands for and its tokens, ending with the token that ends the answer."""

    value: str
    tokens: tuple[int, ...]


class ChoiceConstraint(LogitsProcessor):
    """Lets each row continue only one of the choices; a row that has ended one may only pad."""

    def __init__(self, prompt_length: int, choices: Sequence[Choice], pad: int) -> None:
        self.prompt_length = prompt_length
        self.pad = pad
        # Each prefix of a choice -> the tokens that may follow it.
        self.next: dict[tuple[int, ...], set[int]] = {}
        for choice in choices:
            for i in range(len(choice.tokens)):
                self.next.setdefault(choice.tokens[:i], set()).add(choice.tokens[i])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        mask = torch.full_like(scores, -math.inf)
        for row, generated in enumerate(input_ids[:, self.prompt_length :].tolist()):
            allowed = self.next.get(tuple(generated), {self.pad})
            mask[row, sorted(allowed)] = 0
        return scores + mask


def chosen(
    sequences: Any, scores: Sequence[Any], prompt_length: int, choices: Sequence[Choice]
) -> list[tuple[str, float] | None]:
    """Each row's choice and its probability among the choices, from generate's sequences and processed scores;
    None for a row that did not complete one (a token limit cut it)."""
    import torch

    by_tokens = {choice.tokens: choice.value for choice in choices}
    log_probs = [torch.log_softmax(step.float(), dim=-1) for step in scores]
    out: list[tuple[str, float] | None] = []
    for row, generated in enumerate(sequences[:, prompt_length:].tolist()):
        total, found = 0.0, None
        for step, token in enumerate(generated[: len(log_probs)]):
            total += float(log_probs[step][row, token])
            if (value := by_tokens.get(tuple(generated[: step + 1]))) is not None:
                found = (value, math.exp(total))
                break
        out.append(found)
    return out
