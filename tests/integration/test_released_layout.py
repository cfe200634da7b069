"""A Qwen-Omni checkpoint in the released repositories' older file layout loads to the same model and processor.

The released Qwen2.5-Omni and Qwen3-Omni repositories ship a flat preprocessor_config.json, chat_template.json,
vocab.json/merges.txt and sharded weights; this transformers version saves processor_config.json,
chat_template.jinja and one weights file. Both layouts of one seed must give identical weights, processor
settings and transcripts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.backends import GenerationParams, GenerationRequest
from app.backends.qwen_omni import QwenOmniBackend
from app.settings import Settings
from tests.support import ROOT


def build(out: Path, family: str, quantization: str, layout: str) -> Path:
    """The project's tiny-checkpoint tool with seed 3."""
    tool = ROOT / "serve" / "make_tiny_checkpoint.py"
    cmd = [sys.executable, str(tool), str(out), "--family", family, "--quantization", quantization, "--seed", "3"]
    subprocess.run([*cmd, "--layout", layout], check=True, capture_output=True)
    return out


def load(variant: str, checkpoint: Path) -> QwenOmniBackend:
    """The service's backend on CPU."""
    settings = Settings(variant=variant, checkpoint_path=str(checkpoint), local_model=True, device="cpu", data_dir="/x")
    return QwenOmniBackend.load(settings, settings.checkpoint_path)


@pytest.mark.parametrize(
    ("family", "variant", "quantization"),
    [("qwen2.5-omni", "full", "none"), ("qwen2.5-omni", "awq", "awq"), ("qwen3-omni", "captioner", "none")],
)
def test_released_layout_loads_like_the_native_one(
    family: str, variant: str, quantization: str, tmp_path: Path
) -> None:
    """Same weights, same feature extractor, image and video bounds, template and tokens, same transcript."""
    released_dir = build(tmp_path / "released", family, quantization, "released")
    assert (released_dir / "preprocessor_config.json").exists() and (released_dir / "chat_template.json").exists()
    assert not (released_dir / "processor_config.json").exists()
    assert len(list(released_dir.glob("model-*-of-*.safetensors"))) == 2
    native = load(variant, build(tmp_path / "native", family, quantization, "native"))
    released = load(variant, released_dir)

    want, got = native.model.state_dict(), released.model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]

    a, b = native.processor, released.processor
    # The flat file hands the image keys to the feature extractor too, where they sit unused.
    native_features, released_features = a.feature_extractor.to_dict(), b.feature_extractor.to_dict()
    assert native_features == {k: released_features[k] for k in native_features}
    x, y = a.image_processor, b.image_processor
    assert (x.size, x.patch_size, x.merge_size) == (y.size, y.patch_size, y.merge_size)
    # With no video file of its own, the released layout's video processor reads the one flat file: it samples
    # frames within the image bounds there, not within its class defaults as the native layout's does.
    video = b.video_processor
    assert (video.size, video.patch_size, video.merge_size) == (y.size, y.patch_size, y.merge_size)
    assert a.chat_template == b.chat_template
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert a.tokenizer.all_special_tokens == b.tokenizer.all_special_tokens

    samples = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    params = GenerationParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.1)
    batch = [GenerationRequest(samples, params), GenerationRequest(samples[:16000], params)]
    assert [r.text for r in native.generate(batch)] == [r.text for r in released.generate(batch)]
