"""Shared fixtures: tiny checkpoints of each family and one real server started through the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Server, build_tiny


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2.5-Omni checkpoint."""
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen2.5-omni"), "qwen2.5-omni")


@pytest.fixture(scope="session")
def tiny_qwen3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3-Omni (MoE) checkpoint."""
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen3-omni"), "qwen3-omni")


@pytest.fixture(scope="session")
def tiny_asr_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3-ASR checkpoint."""
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen3-asr"), "qwen3-asr")


@pytest.fixture(scope="session")
def tiny_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_qwen3_checkpoint: Path
) -> Callable[[str, str], Path]:
    """tiny_checkpoints(family, quantization): each checkpoint built once per session."""
    built = {("qwen2.5-omni", "none"): tiny_checkpoint, ("qwen3-omni", "none"): tiny_qwen3_checkpoint}

    def get(family: str, quantization: str = "none") -> Path:
        if (family, quantization) not in built:
            out = tmp_path_factory.mktemp(f"tiny-{family}-{quantization}")
            built[family, quantization] = build_tiny(out, family, quantization)
        return built[family, quantization]

    return get


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server on the tiny checkpoint with a short idle timeout."""
    data = tmp_path_factory.mktemp("server") / "data"
    srv = Server(tiny_checkpoint, data, ["--idle-timeout", "5"]).start()
    yield srv
    srv.stop()
