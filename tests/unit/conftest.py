"""Shared fixtures for the unit tests: the real recordings and an ffmpeg helper."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIO_DIR = ROOT.parent / "shared" / "audio"


def run_ffmpeg(out: Path, *args: str) -> Path:
    """Run ffmpeg with the given input/filter arguments, writing `out`; returns `out`."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args, str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """The shared real speech recordings (../shared/audio relative to the repository root)."""
    if not (AUDIO_DIR / "jfk.flac").is_file():
        pytest.skip(f"shared recordings not found under {AUDIO_DIR}")
    return AUDIO_DIR


@pytest.fixture
def ffmpeg(tmp_path: Path) -> Callable[..., Path]:
    """make(name, *ffmpeg_args) -> tmp_path/name produced by real ffmpeg."""

    def make(name: str, *args: str) -> Path:
        return run_ffmpeg(tmp_path / name, *args)

    return make


@pytest.fixture(scope="session")
def tone_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 s 440 Hz tone, 44.1 kHz stereo, in several containers (made once per session)."""
    directory = tmp_path_factory.mktemp("tones")
    return {
        ext: run_ffmpeg(directory / f"tone.{ext}", "-f", "lavfi", "-i", "sine=f=440:d=2:sample_rate=44100", "-ac", "2")
        for ext in ("mp3", "ogg", "opus", "m4a", "webm", "wav", "flac", "mka")
    }
