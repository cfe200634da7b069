"""serve/segment_audio.py, run as a real subprocess from a foreign working directory."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.audio import decode, split
from app.settings import Settings
from tests.unit.conftest import ROOT

SCRIPT = ROOT / "serve" / "segment_audio.py"


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script with these arguments, from cwd (not the repository), without the repository on PYTHONPATH."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_default_is_the_service_default(tmp_path: Path, audio_dir: Path) -> None:
    """jfk.flac (11 s) under the default 60 s segments is one segment covering the whole file."""
    assert Settings().segment_duration == 60
    assert lines(run(tmp_path, str(audio_dir / "jfk.flac"))) == [
        {"index": 0, "start": 0.0, "end": 11.0, "duration": 11.0}
    ]


@pytest.mark.parametrize("duration", ["1", "2.5", "3", "300"])
def test_segments_are_the_services(tmp_path: Path, audio_dir: Path, duration: str) -> None:
    """The printed segments are split(decode())'s, in seconds rounded to 3 decimals, contiguous and complete."""
    path = audio_dir / "jfk.flac"
    printed = lines(run(tmp_path, str(path), "--segment-duration", duration))
    expected = split(decode(path), float(duration))
    assert [
        {"index": s.index, "start": round(s.start, 3), "end": round(s.end, 3), "duration": round(s.end - s.start, 3)}
        for s in expected
    ] == printed
    assert printed[0]["start"] == 0.0 and printed[-1]["end"] == 11.0
    for before, after in itertools.pairwise(printed):
        assert after["start"] == before["end"]
        assert 0 < before["duration"] <= float(duration)
    if duration == "1":
        assert len(printed) >= 11


@pytest.mark.parametrize("bad", ["0", "0.5", "301", "-3", "abc", "nan", "inf"])
def test_bad_segment_duration_exits_2(tmp_path: Path, audio_dir: Path, bad: str) -> None:
    """Out-of-range or non-numeric durations exit 2 with the API's message, no traceback, no output."""
    result = run(tmp_path, str(audio_dir / "jfk.flac"), "--segment-duration", bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "segment_duration: must be a number in [1, 300]" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["text", "missing", "empty"])
def test_undecodable_file_exits_2(tmp_path: Path, kind: str) -> None:
    """A file ffmpeg cannot decode exits 2 with the reason, no traceback."""
    path = tmp_path / "input.mp3"
    if kind == "text":
        path.write_text("not audio\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    result = run(tmp_path, str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "not decodable audio" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_audio_stream_exits_2(tmp_path: Path) -> None:
    """A video without sound says so."""
    video = tmp_path / "v.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=1:size=64x64", "-c:v", "mpeg4", str(video)],
        check=True,
    )
    result = run(tmp_path, str(video))
    assert result.returncode == 2
    assert "the file has no audio stream" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_argument_is_a_usage_error(tmp_path: Path) -> None:
    """No FILE: argparse's usage error, status 2."""
    result = run(tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_reader_closing_the_pipe_is_quiet(tmp_path: Path) -> None:
    """| head -1: the script stops when its reader goes away, without a BrokenPipeError traceback."""
    # 20 minutes in 1 s segments is about 70 KB of lines, more than a pipe holds: the script must hit the close.
    long = tmp_path / "long.wav"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anoisesrc=d=1200:r=16000", "-c:a", "pcm_s16le", str(long)],
        check=True,
    )
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(long), "--segment-duration", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert first["index"] == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
