"""What a hostile client sends, below the HTTP layer: files that read other files, lying durations, huge
quoted values, control characters, and ffmpeg stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app import audio
from app.backends import printable
from app.errors import AudioTooLong, DecodeInterrupted, UnsupportedAudio, quoted
from tests.unit.conftest import AUDIO_DIR

JFK = AUDIO_DIR / "jfk.flac"


def _hls(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "list.m3u8"
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:11\n#EXTINF:11,\n{target}\n#EXT-X-ENDLIST\n")
    return path


# Each of these makes ffmpeg read another file on the server, or synthesize audio from a few bytes.
READERS_OF_OTHER_FILES: dict[str, Callable[[Path], Path]] = {
    "hls-plain-path": lambda tmp: _hls(tmp, str(JFK)),
    "hls-file-url": lambda tmp: _hls(tmp, f"file://{JFK}"),
    "concat": lambda tmp: _write(tmp / "list.txt", f"ffconcat version 1.0\nfile '{JFK}'\n"),
    "dash": lambda tmp: _write(
        tmp / "m.mpd",
        '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" '
        'mediaPresentationDuration="PT11S"><Period><AdaptationSet><Representation id="a" bandwidth="1">'
        f"<BaseURL>file://{JFK}</BaseURL></Representation></AdaptationSet></Period></MPD>",
    ),
    # 30 bytes that sbg (detected by content) turns into hours of tone.
    "sbg-script": lambda tmp: _write(tmp / "a.sbg", "-SE\n00:00 white\n\nwhite: 440/0\n"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("make", list(READERS_OF_OTHER_FILES.values()), ids=list(READERS_OF_OTHER_FILES))
def test_playlists_and_scripts_are_refused_by_probe_and_decode(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    """ffmpeg decodes none of them: the probe and the decoder both refuse them as a format not allowed."""
    path = make(tmp_path)
    with pytest.raises(UnsupportedAudio) as probed:
        audio.probe(path)
    assert "not an audio or video format this server reads" in probed.value.message
    assert str(JFK) not in probed.value.message
    with pytest.raises(UnsupportedAudio):
        list(audio.stream_segments(path, 30))


def test_allowed_formats_still_decode(tone_files: dict[str, Path]) -> None:
    """The allow-list keeps every container the service is used with."""
    for path in tone_files.values():
        audio.probe(path)
        assert len(audio.decode(path)) > audio.SAMPLE_RATE


def test_duration_cap_from_the_header_and_while_decoding(tmp_path: Path) -> None:
    """A stated duration over the cap is refused by the probe; decoding stops at the cap whatever the header says."""
    with pytest.raises(AudioTooLong) as stated:
        audio.probe(JFK, max_seconds=5)
    assert "limit of 5 s" in stated.value.message and "11 s" in stated.value.message
    audio.probe(JFK, max_seconds=12)
    # Decoding enforces the cap itself: segments up to it are yielded, then the file is refused.
    segments = audio.stream_segments(JFK, 2, max_seconds=5)
    got = []
    with pytest.raises(AudioTooLong):
        for segment in segments:
            got.append(segment)
    assert sum(len(s.samples) for s in got) <= 5 * audio.SAMPLE_RATE
    with pytest.raises(AudioTooLong):
        audio.decode(JFK, max_seconds=3)
    assert len(audio.decode(JFK, max_seconds=11.5)) == 11 * audio.SAMPLE_RATE


def test_a_header_claiming_nothing_is_still_capped(tmp_path: Path) -> None:
    """Matroska written to a pipe states no duration: the probe cannot refuse it, the decoder does."""
    path = tmp_path / "streamed.mka"
    made = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=8", "-f", "matroska", "pipe:1"],
        capture_output=True,
        check=True,
    )
    path.write_bytes(made.stdout)
    audio.probe(path, max_seconds=4)
    with pytest.raises(AudioTooLong):
        audio.decode(path, max_seconds=4)


def _child_ffmpeg() -> int:
    """The pid of this process's running ffmpeg child."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-P", str(os.getpid()), "ffmpeg"], capture_output=True, text=True).stdout
        if out.split():
            return int(out.split()[0])
        time.sleep(0.05)
    raise AssertionError("no ffmpeg child found")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_ffmpeg_stopped_by_a_signal_is_an_interruption_not_a_bad_file(tmp_path: Path, sig: int) -> None:
    """Ctrl-C reaching ffmpeg (or any signal) says nothing about the file: DecodeInterrupted, not 415."""
    long = tmp_path / "long.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-stream_loop", "-1", "-i", str(JFK), "-t", "600", str(long)], check=True
    )
    segments = audio.stream_segments(long, 1)
    next(segments)
    os.kill(_child_ffmpeg(), sig)
    with pytest.raises(DecodeInterrupted):
        for _ in segments:
            pass


def test_ffmpeg_runs_in_a_session_of_its_own(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to the service's process group: ffmpeg is not in it (the service stops it)."""
    segments = audio.stream_segments(JFK, 1)
    next(segments)
    child = _child_ffmpeg()
    try:
        assert os.getpgid(child) != os.getpgid(0)
    finally:
        segments.close()


def test_quoted_clips_whatever_a_client_sends() -> None:
    """A 2 MB string, 200,000 numbers or 100,000 nested lists come back as a few dozen characters."""
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    for value in ("x" * 2_000_000, list(range(200_000)), nested, {str(i): i for i in range(10_000)}):
        assert len(quoted(value)) < 200
    assert quoted("short") == "'short'" and quoted(5) == "5"


def test_printable_strips_control_characters_but_tab_and_newline() -> None:
    """NUL, escapes, DEL and C1 controls go; text, tab, newline and non-Latin scripts stay."""
    assert printable("a\x00b\x1b[31mc\x7f\x85d\te\nf\r") == "ab[31mcd\te\nf"
    assert printable("你好，世界 — ok") == "你好，世界 — ok"
