"""The benchmark scripts' pure parts: statistics, naming, the full-size config, the CUDA guard, the reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


batching = _load("batching")
service = _load("service")


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert service.percentile(values, 50) == 3.0
    assert service.percentile(values, 0) == 1.0
    assert service.percentile(values, 100) == 5.0
    assert service.percentile(values, 95) == pytest.approx(4.8)
    assert service.percentile([], 50) is None
    assert service.latency_summary([]) == {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}


def test_defaults_and_forced_length() -> None:
    args = batching.parse_args([])
    assert (args.minutes, args.segment, args.batch_size, args.tokens_per_second) == (30.0, 60.0, 32, 3.0)
    assert args.temperature == 1.0 and args.modes == ["sequential", "batched"]
    assert batching.forced_tokens(3.0, 60.0) == 180
    assert batching.forced_tokens(3.0, 0.1) == 1
    assert service.parse_args([]).concurrency == [1, 4, 16]


def test_results_are_named_after_device_and_checkpoint() -> None:
    assert batching.result_stem("cpu", "tiny") == "batching-cpu-tiny"
    assert batching.result_stem("cuda", "full-size") == "batching-cuda-full-size"
    assert batching.result_stem("cuda", "Qwen2.5-Omni-7B-AWQ") == "batching-cuda-qwen2.5-omni-7b-awq"


def test_full_size_config_has_the_7b_shapes_and_the_tiny_token_ids() -> None:
    ids = {
        "audio_token_index": 3, "image_token_index": 6, "video_token_index": 7, "audio_start_token_id": 4,
        "audio_end_token_id": 5, "user_token_id": 1, "vision_start_token_id": 8, "vision_end_token_id": 9,
    }  # fmt: skip
    tiny = SimpleNamespace(text_config=SimpleNamespace(eos_token_id=2, pad_token_id=0), **ids)
    config = batching.full_size_config(tiny)
    text, audio, vision = config.text_config, config.audio_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (3584, 28, 18944)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 152064)
    assert text.tie_word_embeddings is False and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (text.eos_token_id, text.pad_token_id) == (2, 0)
    assert (audio.d_model, audio.encoder_layers, audio.output_dim) == (1280, 32, 3584)
    assert (vision.hidden_size, vision.out_hidden_size, vision.depth) == (1280, 3584, 32)
    assert {name: getattr(config, name) for name in ids} == ids


def test_full_size_model_builds_on_the_meta_device_with_7b_parameter_count() -> None:
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    tiny = SimpleNamespace(
        text_config=SimpleNamespace(eos_token_id=2, pad_token_id=0),
        audio_token_index=3, image_token_index=6, video_token_index=7, audio_start_token_id=4,
        audio_end_token_id=5, user_token_id=1,
    )  # fmt: skip
    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
            batching.full_size_config(tiny), dtype=torch.bfloat16
        )
    # Qwen2.5-Omni-7B's thinker: 7.6 B decoder + lm_head, 0.64 B audio encoder, 0.67 B vision encoder.
    assert 8.8e9 < sum(p.numel() for p in model.parameters()) < 9.0e9


def test_full_size_refuses_to_run_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        batching.require_cuda()


def _batching_doc(steps: list[int]) -> dict[str, Any]:
    row = {
        "batch_size": 1, "wall_seconds": 2.0, "rtf": 0.01, "segments_per_second": 1.5, "generate_calls": 3,
        "new_tokens_per_call": steps, "peak_memory_gib": None, "stop_reasons": {"max_tokens": 3},
        "forced_length_met": steps == [180] * 3,
    }  # fmt: skip
    return {
        "command": "python3 bench/batching.py",
        "created": "2026-01-01T00:00:00+00:00",
        "git": {"commit": "0123456789abcdef", "uncommitted_changes": []},
        "machine": {
            "cpu": "cpu",
            "cpu_count": 2,
            "python": "3.11",
            "torch": "2",
            "transformers": "5",
            "load_average_1m": {"start": 0.1, "end": 0.2},
            "other_processes_cpu": {"cpu_seconds": 0.5, "share": 0.01},
        },
        "model": {"checkpoint": "tiny", "device": "cpu", "parameters": 1e5, "dtype": "float32", "load_seconds": 1},
        "workload": {
            "audio_seconds": 180.0,
            "audio": "jfk.flac",
            "segments": 3,
            "segment_seconds": 60.0,
            "forced_new_tokens_per_segment": 180,
            "tokens_per_audio_second": 3.0,
            "params": {"temperature": 0.0},
        },
        "modes": {"sequential": row, "batched": {**row, "batch_size": 32, "generate_calls": 1}},
        "speedup_batched_vs_sequential": 1.0,
        "targets": {
            "speedup_min": 8.0,
            "batched_rtf_max": 0.01,
            "applies_to": "the 7B on an H200",
            "measured_here": False,
            "note": "not measured here",
        },
    }


def test_batching_report_flags_runs_that_did_not_generate_the_forced_length() -> None:
    good = batching.markdown(_batching_doc([180, 180, 180]))
    assert "| sequential | 1 | 2.00 | 0.0100 |" in good and "not measured here" in good
    assert "Invalid" not in good
    assert "**Invalid (sequential)**" in batching.markdown(_batching_doc([40, 40, 40]))


def test_server_settings_are_the_ones_the_cli_builds() -> None:
    settings = service.server_settings(["--checkpoint-path", "/tmp/x", "--idle-timeout", "0", "--batch-size", "4"])
    assert settings["idle_timeout"] == 0.0 and settings["batch_size"] == 4 and settings["threads"] == 64


def test_cpu_share_of_other_processes_and_the_caution_it_triggers() -> None:
    others = service.CpuShare().others()
    assert set(others) == {"cpu_seconds", "share"}
    assert others["share"] is None or others["share"] >= 0
    quiet = {"other_processes_cpu": {"cpu_seconds": 1.0, "share": 0.05}}
    busy = {"other_processes_cpu": {"cpu_seconds": 60.0, "share": 0.4}}
    assert service.busy_note(quiet) is None
    assert "40%" in str(batching.busy_note(busy))


def test_token_bench_counts_bpe_merges_and_syllables() -> None:
    tokens = _load("tokens")
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4}
    assert tokens.bpe(b"abc", ranks) == 1 and tokens.bpe(b"cab", ranks) == 2 and tokens.bpe(b"ca", ranks) == 2
    assert tokens.syllables("ko", "안녕 하세요.") == 5
    assert tokens.syllables("vi", "Xin chào các bạn.") == 4
    assert tokens.syllables("zh", "你好,世界。") == 4
    assert tokens.syllables("ru", "Привет, мир") == 3
    assert tokens.syllables("en", "And so my fellow Americans") == 9


def test_cluster_report_renders_the_committed_results() -> None:
    """bench/cluster.py's summary is built from its JSON: the committed figures render as committed."""
    cluster = _load("cluster")
    doc = json.loads((ROOT / "bench" / "results" / "cluster-cpu-tiny.json").read_text())
    assert cluster.markdown(doc) == (ROOT / "bench" / "results" / "cluster-cpu-tiny.md").read_text()
    assert doc["two_over_one"] > 1 and doc["results"]["two_workers"]["errors"] == 0
