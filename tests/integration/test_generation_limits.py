"""Per-segment limits in batched generation on the real tiny model: the runaway guard and loop trimming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.backends import GenerationParams, GenerationRequest
from app.backends.qwen_omni import QwenOmniBackend
from app.backends.stopping import RepetitionLoop, RowTokenLimits, trim_repetition
from app.settings import Settings


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path) -> QwenOmniBackend:
    """The tiny Qwen2.5-Omni checkpoint through the service's backend."""
    settings = Settings(checkpoint_path=str(tiny_checkpoint), local_model=True, device="cpu", data_dir="/x")
    return QwenOmniBackend.load(settings, settings.checkpoint_path)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet noise of the given length."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.05).astype(np.float32)


def test_each_row_stops_at_its_own_limit(backend: QwenOmniBackend) -> None:
    """In one batch, a 1 s segment gets at most 15 * 1 + 32 tokens and a 10 s one at most 15 * 10 + 32."""
    params = GenerationParams(max_new_tokens=1000, temperature=1.0, repetition_penalty=1.0)
    requests = [GenerationRequest(noise(1.0), params), GenerationRequest(noise(10.0, 1), params)]
    assert [r.token_limit for r in requests] == [47, 182]
    # A caption's length does not follow its audio's: only the client's limit holds.
    unpaced = GenerationParams(max_new_tokens=1000, temperature=1.0, repetition_penalty=1.0, paced=False)
    assert GenerationRequest(noise(1.0), unpaced).token_limit == 1000
    for seed in range(3):
        torch.manual_seed(seed)
        results = backend.generate(requests)
        for request, result in zip(requests, results, strict=True):
            assert result.tokens <= request.token_limit
            if result.stop_reason == "max_tokens":
                assert result.tokens == request.token_limit
            elif result.stop_reason == "eos":
                assert result.tokens < request.token_limit


def test_client_max_new_tokens_below_the_guard_wins(backend: QwenOmniBackend) -> None:
    """Asking for fewer tokens than the guard allows is honoured."""
    params = GenerationParams(max_new_tokens=5, temperature=1.0, repetition_penalty=1.0)
    request = GenerationRequest(noise(30.0), params)
    assert request.token_limit == 5
    assert backend.generate([request])[0].tokens <= 5


def test_a_looping_row_is_trimmed_and_flagged(backend: QwenOmniBackend) -> None:
    """Token ids that loop decode to one copy of the pattern, flagged as repetition."""
    tokenizer = backend.processor.tokenizer
    pattern = tokenizer.encode(" ask not what")
    prefix = tokenizer.encode("And so my fellow Americans,")
    looped = prefix + pattern * 20
    result = backend._result(looped + [tokenizer.pad_token_id] * 5, limit=len(looped) + 5, looped=True)
    assert result.stop_reason == "repetition"
    assert result.text == tokenizer.decode(prefix + pattern).strip()
    assert result.tokens == len(prefix) + len(pattern)
    ended = backend._result([*prefix, backend._eos[0], 7, 7], limit=50, looped=False)
    assert (ended.stop_reason, ended.tokens) == ("eos", len(prefix))
    cut = backend._result(prefix * 3, limit=len(prefix) * 3, looped=False)
    assert (cut.stop_reason, cut.tokens) == ("max_tokens", len(prefix) * 3)


def test_trim_repetition_patterns() -> None:
    """Loops of short and long periods are cut to one copy; speech-like repeats are left alone."""
    assert trim_repetition([1, 2, 3] + [9] * 40) == [1, 2, 3, 9]
    assert trim_repetition([5] + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 5) == [5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert trim_repetition([1, 2] * 10 + [3]) is None  # the tail does not loop
    assert trim_repetition([4, 4, 4, 4, 4, 6]) is None  # "no no no no no": too short to be a loop
    assert trim_repetition(list(range(100))) is None


def test_stopping_criteria_on_a_batch() -> None:
    """RowTokenLimits stops rows by their own counts; RepetitionLoop flags looping rows, not ended ones."""
    prompt = torch.zeros(3, 4, dtype=torch.long)
    limits = RowTokenLimits(prompt_length=4, limits=[2, 5, 40])
    assert limits(torch.cat([prompt, torch.ones(3, 2, dtype=torch.long)], dim=1), None).tolist() == [True, False, False]
    loop = RepetitionLoop(prompt_length=4, batch_size=3, end_ids=[0])
    looping = torch.tensor([7, 8] * 20)
    ended = torch.tensor([5, 0] + [0] * 38)  # ended, then padded with the end token
    fresh = torch.arange(100, 140)
    generated = torch.stack([looping, ended, fresh])
    assert loop(torch.cat([prompt + 1, generated], dim=1), None).tolist() == [True, False, False]
    assert loop.detected.tolist() == [True, False, False]


@pytest.mark.parametrize("temperature", [5e-324, 1e-189, 1e-39, 0.009])
def test_a_temperature_near_zero_decodes_greedily(backend: QwenOmniBackend, temperature: float) -> None:
    """Sampling at a temperature near zero would divide logits into inf (NaN probabilities): it is greedy."""
    greedy = GenerationParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
    tiny = GenerationParams(max_new_tokens=12, temperature=temperature, repetition_penalty=1.0)
    expected = backend.generate([GenerationRequest(noise(2.0), greedy)])[0]
    assert backend.generate([GenerationRequest(noise(2.0), tiny)])[0] == expected


def test_decoded_text_holds_no_control_characters(backend: QwenOmniBackend) -> None:
    """Byte-level tokens for NUL, ESC and DEL decode to nothing: subtitles and JSON never carry them."""
    tokenizer = backend.processor.tokenizer
    # Byte-level BPE names each byte by a printable stand-in: these three are NUL, ESC and DEL.
    controls = [tokenizer.convert_tokens_to_ids(t) for t in ("Ā", "ě", "ġ")]
    a, b = tokenizer.encode("ab", add_special_tokens=False)
    ids = [a, *controls, b]
    assert tokenizer.decode(ids) == "a\x00\x1b\x7fb"  # the tokenizer itself lets them through
    assert backend._decode(ids) == "ab"
