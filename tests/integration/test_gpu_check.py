"""bench/gpu_check.py: the full-size shapes are the released models', and the kit runs end to end at tiny size."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load()
# Token ids for the configs; which ones does not matter for counting parameters.
TOKEN_NAMES = "audio_token image_token video_token audio_bos_token audio_eos_token vision_bos_token vision_eos_token"
TOKEN_IDS = {name: i for i, name in enumerate([*TOKEN_NAMES.split(), "user", "eos", "pad", "<timestamp>"])}


def _parameters(model_class: str, config: object) -> int:
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, model_class)._from_config(config, dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


def test_full_size_checkpoints_have_the_released_parameter_counts() -> None:
    """Built on the meta device from the tool's own configs: Omni-7B's thinker, Qwen3-ASR-1.7B, the 0.6B aligner."""
    import transformers

    tool = gpu_check._tool()
    omni = transformers.Qwen2_5OmniThinkerConfig(
        **tool._reshaped(tool.thinker_config("qwen2.5-omni", TOKEN_IDS, 8448), gpu_check.OMNI_7B)
    )
    # 7.6 B decoder and head, 0.64 B audio encoder, 0.67 B vision encoder.
    assert 8.8e9 < _parameters("Qwen2_5OmniThinkerForConditionalGeneration", omni) < 9.0e9
    asr = tool.asr_config(tool.ASR_FAMILIES["qwen3-asr"], TOKEN_IDS, 8448, gpu_check.ASR_1_7B)
    # Qwen3-1.7B (tied embeddings) and a 0.3 B audio encoder: "2B params" on the model card.
    assert 1.95e9 < _parameters("Qwen3ASRForConditionalGeneration", asr) < 2.1e9
    aligner = tool.asr_config(tool.ASR_FAMILIES["qwen3-aligner"], TOKEN_IDS, 8448, gpu_check.ALIGNER_0_6B)
    assert aligner.num_labels == 5000 and not aligner.tie_word_embeddings
    assert 0.85e9 < _parameters("Qwen3ASRForTokenClassification", aligner) < 1.0e9


def test_the_kit_runs_every_check_at_tiny_size(tmp_path: Path) -> None:
    """Every check builds, loads through the service's loaders, generates the forced length and aligns."""
    out = tmp_path / "results"
    argv = ["--size", "tiny", "--minutes", "2.5", "--tokens-per-second", "0.5", "--batch-size", "4"]
    argv += ["--sequential-segments", "2", "--out", str(out), "--work", str(tmp_path)]
    assert gpu_check.main(argv, report=lambda _: None) == 0
    doc = json.loads((out / "gpu-check-cpu-tiny.json").read_text())
    assert doc["failed"] == []
    checks = doc["checks"]
    assert {"omni-bf16", "omni-awq", "asr", "aligner-build"} <= set(checks)
    for name, segment, segments in (("omni-bf16", 60.0, 3), ("omni-awq", 60.0, 3), ("asr", 120.0, 2)):
        row = checks[name]
        assert (row["segment_seconds"], row["segments"]) == (segment, segments), name
        assert row["batched"]["forced_length_met"] and row["sequential"]["forced_length_met"], name
        assert row["batched"]["generate_calls"] < segments and row["sequential"]["generate_calls"] == 2, name
        assert row["parameters"] > 0 and row["load_seconds"] >= 0
    aligner = checks["asr"]["aligner"]
    assert aligner["segments_aligned"] == 2 and aligner["words_timed"] > 0
    assert 0 < aligner["share_of_time"] < 1
    assert "Behind asr" in (out / "gpu-check-cpu-tiny.md").read_text()
    # The checkpoints are deleted after each check; only the results remain.
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_full_size_refuses_to_run_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main(["--out", str(tmp_path)], report=lambda _: None)


def test_the_carried_wheels_are_the_pins_the_service_installs() -> None:
    """bench/gpu_wheels.txt repeats pins for a machine without network: each must be the version installed here."""
    import importlib.metadata

    pins = [
        line.split("==")
        for line in (ROOT / "bench" / "gpu_wheels.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins and all(len(pin) == 2 for pin in pins)
    assert {name: importlib.metadata.version(name) for name, _ in pins} == dict(pins)
