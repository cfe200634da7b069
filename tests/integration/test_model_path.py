"""What the model path must not do silently: load a checkpoint with missing weights, let a tokenizer config
turn batches to right padding, or penalise the prompt's tokens as repetitions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.backends import GenerationParams, GenerationRequest
from app.backends.qwen_omni import QwenOmniBackend
from app.settings import Settings
from tests.support import build_tiny


def settings_for(checkpoint: Path, variant: str = "awq") -> Settings:
    return Settings(checkpoint_path=str(checkpoint), variant=variant, local_model=True, device="cpu")


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.05).astype(np.float32)


def without(checkpoint: Path, out: Path, pattern: str) -> list[str]:
    """A copy of checkpoint whose model.safetensors lacks the tensors whose names contain pattern."""
    shutil.copytree(checkpoint, out)
    state = load_file(str(out / "model.safetensors"))
    dropped = sorted(k for k in state if pattern in k)
    save_file({k: v for k, v in state.items() if k not in dropped}, str(out / "model.safetensors"), {"format": "pt"})
    return dropped


def test_a_missing_weight_fails_the_load_naming_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dropped = without(tiny_checkpoint, tmp_path / "broken", "layers.0.mlp.down_proj")
    assert dropped
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*layers\.0\.mlp\.down_proj"):
        QwenOmniBackend.load(settings_for(tmp_path / "broken"), str(tmp_path / "broken"))


def test_missing_weights_fail_every_family(tmp_path: Path) -> None:
    """Qwen3-ASR and the aligner load through the same check."""
    from app.backends.qwen3_aligner import Qwen3Aligner
    from app.backends.qwen3_asr import Qwen3AsrBackend

    asr = build_tiny(tmp_path / "asr", "qwen3-asr")
    without(asr, tmp_path / "asr-broken", "layers.0.self_attn.q_proj")
    with pytest.raises(ValueError, match="q_proj"):
        Qwen3AsrBackend.load(settings_for(tmp_path / "asr-broken", "asr"), str(tmp_path / "asr-broken"))
    aligner = build_tiny(tmp_path / "aligner", "qwen3-aligner")
    without(aligner, tmp_path / "aligner-broken", "score")
    with pytest.raises(ValueError, match="score"):
        Qwen3Aligner.load(settings_for(tmp_path / "aligner-broken"), str(tmp_path / "aligner-broken"))


def test_a_right_padding_tokenizer_config_still_pads_batches_on_the_left(tiny_checkpoint: Path, tmp_path: Path) -> None:
    right = tmp_path / "right"
    shutil.copytree(tiny_checkpoint, right)
    config = json.loads((right / "tokenizer_config.json").read_text())
    (right / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "right"}))
    backend = QwenOmniBackend.load(settings_for(right), str(right))
    params = GenerationParams(max_new_tokens=4, temperature=0.0, repetition_penalty=1.0)
    batch = [GenerationRequest(noise(1.0), params, prompt="Transcribe."), GenerationRequest(noise(3.0, 1), params)]
    mask = backend._inputs(batch)["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0], "rows must end together, the shorter one padded in front"


def test_the_repetition_penalty_spares_the_prompt(tiny_checkpoint: Path) -> None:
    """The first token is chosen before anything was generated, so no penalty may change it, even for a token the
    prompt holds (a name the client's prompt gives is one the transcript should write)."""
    backend = QwenOmniBackend.load(settings_for(tiny_checkpoint), str(tiny_checkpoint))
    clip = noise(2.0)
    greedy = GenerationParams(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
    penalised = GenerationParams(max_new_tokens=1, temperature=0.0, repetition_penalty=3.0)
    request = GenerationRequest(clip, greedy, prompt="Kennedy")
    inputs = backend._inputs([request])
    with torch.inference_mode():
        logits = backend.model(**inputs).logits[0, -1].float()
    # Make a word of the prompt the model's favourite first token: its output row becomes 1.5 times the current
    # favourite's (the head is not tied to the embeddings, so the prompt's encoding is unchanged).
    head = backend.model.lm_head.weight
    assert head.data_ptr() != backend.model.get_input_embeddings().weight.data_ptr()
    kennedy = backend.processor.tokenizer.encode("Kennedy")[0]
    best = int(logits.argmax())
    sign = 1.0 if logits[best] > 0 else -1.0
    with torch.no_grad():
        head[kennedy] = head[best] * (1.5 if sign > 0 else 0.5)
    assert kennedy in inputs["input_ids"][0].tolist()
    plain = backend.generate([request])[0]
    spared = backend.generate([GenerationRequest(clip, penalised, prompt="Kennedy")])[0]
    expected = backend.processor.tokenizer.decode([kennedy], skip_special_tokens=True).strip()
    assert plain.text == expected, "the edited head did not make the prompt's word the first choice"
    # A whole-sequence penalty (3.0 divides its logit by 3) would have picked another token.
    assert spared.text == expected
