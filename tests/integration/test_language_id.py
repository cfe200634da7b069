"""Language identification on the real tiny checkpoints: the constrained answer, its probability, batching.

Random weights name a random language, so what is checked is the mechanism: every answer is one of the
languages the model may name, its confidence is exactly the product of its tokens' probabilities renormalised
over the tokens allowed at each step (recomputed here by teacher forcing, without generate), the greedy path
takes the likeliest allowed token at every step, and rows answer the same alone as in a left-padded batch.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app.audio import decode
from app.backends import IDENTIFY_TOKENS, GenerationParams, GenerationRequest
from app.backends.choices import Choice
from app.backends.qwen3_asr import Qwen3AsrBackend, language_names
from app.backends.qwen_omni import QwenOmniBackend
from app.errors import NoSpeech
from app.protocol.native import LANGUAGES
from app.services import build_services
from app.settings import Settings
from tests.support import RECORDINGS, build_tiny

PARAMS = GenerationParams(IDENTIFY_TOKENS, 0.0, 1.0)


@pytest.fixture(scope="module", params=["qwen2.5-omni", "qwen3-asr"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QwenOmniBackend]:
    """Each family's tiny model, loaded as the service loads it."""
    family = request.param
    path = build_tiny(tmp_path_factory.mktemp(family), family)
    variant = "asr" if family == "qwen3-asr" else "full"
    settings = Settings(variant=variant, checkpoint_path=str(path), local_model=True, device="cpu", aligner="none")
    loaded = (Qwen3AsrBackend if family == "qwen3-asr" else QwenOmniBackend).load(settings, str(path))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [decode(path)[: 16000 * 6] for path in RECORDINGS]


def identify(backend: QwenOmniBackend, clips: list[np.ndarray]) -> list[tuple[str | None, float | None]]:
    results = backend.generate([GenerationRequest(c, PARAMS, task="identify") for c in clips])
    assert all(r.text == "" and r.stop_reason == "eos" for r in results)
    return [(r.language, r.confidence) for r in results]


def allowed_after(choices: list[Choice], prefix: tuple[int, ...]) -> list[int]:
    return sorted({c.tokens[len(prefix)] for c in choices if c.tokens[: len(prefix)] == prefix})


def teacher_forced(backend: QwenOmniBackend, clip: np.ndarray, choice: Choice) -> tuple[float, bool]:
    """The choice's probability among the choices, from one forward pass over prompt + answer, and whether each of
    its tokens was the likeliest allowed one at its step."""
    choices = backend._language_choices()
    inputs = backend._inputs([GenerationRequest(clip, PARAMS, task="identify")])
    answer = torch.tensor([choice.tokens])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], answer], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(answer)], dim=1)
    with torch.inference_mode():
        logits = backend.model(**inputs).logits[0].float()
    start = inputs["input_ids"].shape[1] - len(choice.tokens) - 1
    total, greedy = 0.0, True
    for step, token in enumerate(choice.tokens):
        allowed = allowed_after(choices, choice.tokens[:step])
        probs = torch.softmax(logits[start + step, allowed], dim=-1)
        total += math.log(float(probs[allowed.index(token)]))
        greedy &= int(probs.argmax()) == allowed.index(token)
    return math.exp(total), greedy


def test_answers_are_languages_the_model_can_name(backend: QwenOmniBackend, clips: list[np.ndarray]) -> None:
    names = language_names() if isinstance(backend, Qwen3AsrBackend) else LANGUAGES
    for code, confidence in identify(backend, clips):
        assert code in names and confidence is not None and 0 < confidence <= 1


def test_confidence_is_the_renormalised_probability_of_a_greedy_path(
    backend: QwenOmniBackend, clips: list[np.ndarray]
) -> None:
    by_code = {c.value: c for c in backend._language_choices()}
    for clip, (code, confidence) in zip(clips, identify(backend, clips), strict=True):
        assert code is not None and confidence is not None
        expected, greedy = teacher_forced(backend, clip, by_code[code])
        assert confidence == pytest.approx(expected, rel=1e-3)
        assert greedy


def test_a_batch_answers_as_each_row_alone(backend: QwenOmniBackend, clips: list[np.ndarray]) -> None:
    batched = identify(backend, clips)
    for clip, (code, confidence) in zip(clips, batched, strict=True):
        [(alone_code, alone_confidence)] = identify(backend, [clip])
        assert alone_code == code and alone_confidence == pytest.approx(confidence, rel=1e-3)


def test_choices_end_with_the_answers_end(backend: QwenOmniBackend) -> None:
    """Omni answers a bare name then ends its turn; Qwen3-ASR writes `language <Name>` then <asr_text>."""
    tokenizer = backend.processor.tokenizer
    for choice in backend._language_choices():
        text = tokenizer.decode(list(choice.tokens))
        if isinstance(backend, Qwen3AsrBackend):
            assert text == f"language {language_names()[choice.value]}<asr_text>"
        else:
            assert text == f"{LANGUAGES[choice.value]}<|im_end|>"


def test_silence_has_no_language(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A file without speech is NoSpeech (a 422), never a language guessed from silence."""
    silent = tmp_path / "silence.wav"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "5"]
    subprocess.run([*cmd, str(silent)], check=True)
    settings = Settings(checkpoint_path=str(tiny_checkpoint), local_model=True, device="cpu", data_dir=str(tmp_path))
    services = build_services(settings)
    services.start()
    try:
        with pytest.raises(NoSpeech):
            services.pipeline.identify(silent, speech_only=True)
        # Without the VAD, the first 30 s of audio are heard whatever they hold.
        guess = services.pipeline.identify(silent, speech_only=False)
        assert guess.language in LANGUAGES and guess.seconds == pytest.approx(5.0)
    finally:
        services.stop()
