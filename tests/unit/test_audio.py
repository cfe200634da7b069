"""app.audio: real ffmpeg decoding and quiet-point segmentation."""

from __future__ import annotations

import gc
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from app import audio
from app.audio import FRAME, SAMPLE_RATE, Segment, decode, split, stream_segments
from app.errors import AudioTooLong, UnsupportedAudio
from tests.unit.conftest import AUDIO_DIR, ROOT, run_ffmpeg

SR = SAMPLE_RATE
Ffmpeg = Callable[..., Path]


def dominant_hz(samples: np.ndarray) -> float:
    """The strongest frequency of a 16 kHz signal, in Hz (1 Hz resolution over a 1 s window)."""
    window = samples[SR // 4 : SR // 4 + SR]
    return float(np.argmax(np.abs(np.fft.rfft(window))) * SR / len(window))


# ---------------------------------------------------------------------------------------------- decode


CONTAINERS = ["mp3", "ogg", "opus", "m4a", "webm", "wav", "flac", "mka"]


@pytest.mark.parametrize("ext", CONTAINERS)
def test_decode_containers_to_16k_mono_float32(tone_files: dict[str, Path], ext: str) -> None:
    """Every common container decodes to float32 mono 16 kHz of the right length and pitch."""
    samples = decode(tone_files[ext])
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    # Lossy codecs add a few ms of priming/padding; 50 ms is generous.
    assert abs(len(samples) - 2 * SR) <= 0.05 * SR
    assert dominant_hz(samples) == pytest.approx(440, abs=2)
    assert 0.03 < float(np.sqrt(np.mean(samples**2))) < 0.2
    assert np.isfinite(samples).all()


def test_decode_resamples_44k_stereo_length(ffmpeg: Ffmpeg) -> None:
    """A 3.5 s 44.1 kHz stereo WAV becomes 3.5 * 16000 mono samples."""
    path = ffmpeg("s.wav", "-f", "lavfi", "-i", "sine=f=1000:d=3.5:sample_rate=44100", "-ac", "2")
    samples = decode(path)
    assert len(samples) == pytest.approx(3.5 * SR, abs=16)
    assert dominant_hz(samples) == pytest.approx(1000, abs=2)
    assert len(samples) / SAMPLE_RATE == pytest.approx(3.5, abs=0.001)


def test_decode_mixes_both_channels(ffmpeg: Ffmpeg) -> None:
    """Stereo is downmixed: a tone only in the left and one only in the right both survive."""
    path = ffmpeg(
        "lr.wav",
        *("-f", "lavfi", "-i", "sine=f=300:d=2:sample_rate=44100"),
        *("-f", "lavfi", "-i", "sine=f=1200:d=2:sample_rate=44100"),
        *("-filter_complex", "[0:a][1:a]join=inputs=2:channel_layout=stereo"),
    )
    spectrum = np.abs(np.fft.rfft(decode(path)[:SR]))
    # 1 s window -> 1 Hz bins.
    assert spectrum[300] > 100 * np.median(spectrum)
    assert spectrum[1200] > 100 * np.median(spectrum)


def test_decode_video_with_sound_takes_the_audio(ffmpeg: Ffmpeg) -> None:
    """A video file with an audio track decodes to that track."""
    path = ffmpeg(
        "av.mp4",
        *("-f", "lavfi", "-i", "testsrc=d=1.5:size=64x64"),
        *("-f", "lavfi", "-i", "sine=f=440:d=1.5"),
        *("-c:v", "mpeg4", "-c:a", "aac", "-shortest"),
    )
    samples = decode(path)
    assert abs(len(samples) - 1.5 * SR) <= 0.1 * SR
    assert dominant_hz(samples) == pytest.approx(440, abs=2)


def test_decode_video_without_audio_stream(ffmpeg: Ffmpeg) -> None:
    """A silent video is rejected as having no audio stream."""
    path = ffmpeg("v.mp4", "-f", "lavfi", "-i", "testsrc=d=1:size=64x64", "-c:v", "mpeg4")
    with pytest.raises(UnsupportedAudio, match="no audio stream") as info:
        decode(path)
    assert info.value.status == 415


def test_decode_text_file(tmp_path: Path) -> None:
    """A text file is not audio; the message does not leak the server's path."""
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(UnsupportedAudio, match="not decodable audio") as info:
        decode(path)
    assert str(tmp_path) not in info.value.message


def test_decode_zero_length_file(tmp_path: Path) -> None:
    """An empty file is rejected."""
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedAudio):
        decode(path)


def test_decode_header_only_wav(ffmpeg: Ffmpeg) -> None:
    """A valid WAV header with no samples is rejected as containing no audio."""
    path = ffmpeg("hdr.wav", "-f", "lavfi", "-i", "sine=d=1", "-t", "0")
    with pytest.raises(UnsupportedAudio, match="no audio samples"):
        decode(path)


def test_decode_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is UnsupportedAudio, not an OSError."""
    with pytest.raises(UnsupportedAudio):
        decode(tmp_path / "nope.wav")


@pytest.mark.parametrize(
    ("name", "seconds"),
    [("jfk.flac", 11.0), ("librispeech_1995-1837-0001.wav", 8.73), ("aishell_BAC009S0724W0121.wav", 4.281)],
)
def test_decode_real_recordings(audio_dir: Path, name: str, seconds: float) -> None:
    """The shared speech recordings decode to their known durations with real signal in them."""
    samples = decode(audio_dir / name)
    assert samples.dtype == np.float32
    assert len(samples) == pytest.approx(seconds * SR, abs=0.01 * SR)
    assert 0.01 < float(np.sqrt(np.mean(samples**2))) < 0.5
    # Resampling a loud 44.1 kHz master may overshoot full scale slightly (float output is not clipped).
    assert 0.1 < float(np.abs(samples).max()) < 1.5


# ----------------------------------------------------------------------------------------------- split


def noise(seconds: float, seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    """Uniform white noise at 16 kHz, float32."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-amplitude, amplitude, round(seconds * SR))).astype(np.float32)


def assert_covers(segments: list[Segment], samples: np.ndarray, segment_duration: float) -> None:
    """Contiguous, complete, bounded, indexed segments that are views of samples."""
    size = round(segment_duration * SR)
    assert segments[0].start_sample == 0
    assert segments[-1].end_sample == len(samples)
    for n, segment in enumerate(segments):
        assert segment.index == n
        assert 0 < segment.end_sample - segment.start_sample <= size
        assert len(segment.samples) == segment.end_sample - segment.start_sample
        assert segment.start == segment.start_sample / SR
        assert segment.end == segment.end_sample / SR
        assert np.shares_memory(segment.samples, samples)
        assert np.array_equal(segment.samples, samples[segment.start_sample : segment.end_sample])
    for before, after in itertools.pairwise(segments):
        assert after.start_sample == before.end_sample


def test_split_cut_lands_in_silent_gap() -> None:
    """A silent gap 1.5 s before the nominal 60 s cut attracts the cut."""
    samples = noise(130)
    gap = (round(58.45 * SR), round(58.55 * SR))
    samples[gap[0] : gap[1]] = 0.0
    segments = split(samples, 60)
    assert_covers(segments, samples, 60)
    assert len(segments) == 3
    assert gap[0] <= segments[0].end_sample <= gap[1]
    # The next cut has no gap near it, but still stays within the 2 s window.
    assert segments[0].end_sample + 58 * SR <= segments[1].end_sample <= segments[0].end_sample + 60 * SR


def test_split_ignores_gap_outside_search_window() -> None:
    """A silent gap more than 2 s before the nominal cut is not used."""
    samples = noise(100)
    gap = (round(55.0 * SR), round(55.5 * SR))
    samples[gap[0] : gap[1]] = 0.0
    segments = split(samples, 60)
    assert_covers(segments, samples, 60)
    cut = segments[0].end_sample
    assert not gap[0] <= cut <= gap[1]
    assert 58 * SR <= cut <= 60 * SR


def test_split_picks_the_quietest_of_two_quiet_spots() -> None:
    """Of a soft spot and a quieter spot inside the window, the quieter one wins."""
    samples = noise(70)
    soft = (round(59.5 * SR), round(59.6 * SR))
    quieter = (round(58.2 * SR), round(58.3 * SR))
    samples[soft[0] : soft[1]] *= 0.1
    samples[quieter[0] : quieter[1]] *= 0.01
    cut = split(samples, 60)[0].end_sample
    assert quieter[0] <= cut <= quieter[1]


def test_split_equal_silences_prefer_the_later() -> None:
    """Between two equally silent gaps, the cut goes to the one nearer the nominal cut."""
    samples = noise(70)
    early = (round(58.3 * SR), round(58.4 * SR))
    late = (round(59.6 * SR), round(59.7 * SR))
    samples[early[0] : early[1]] = 0.0
    samples[late[0] : late[1]] = 0.0
    cut = split(samples, 60)[0].end_sample
    assert late[0] <= cut <= late[1]


def test_split_cut_is_at_a_frame_centre_of_silence() -> None:
    """All-silent audio is cut half a frame before the nominal point (the latest quiet frame)."""
    samples = np.zeros(25 * SR, dtype=np.float32)
    segments = split(samples, 10)
    assert_covers(segments, samples, 10)
    assert [s.end_sample for s in segments] == [10 * SR - FRAME // 2, 20 * SR - FRAME, 25 * SR]


def test_split_shorter_than_a_segment() -> None:
    """Audio shorter than one segment is one segment covering it all."""
    samples = noise(12.3)
    segments = split(samples, 60)
    assert len(segments) == 1
    assert (segments[0].start_sample, segments[0].end_sample) == (0, len(samples))
    assert np.shares_memory(segments[0].samples, samples)


def test_split_exact_multiple_has_no_empty_tail() -> None:
    """Audio exactly one segment long gives one segment, not a trailing empty one."""
    samples = noise(60)
    segments = split(samples, 60)
    assert len(segments) == 1
    assert segments[0].end_sample == 60 * SR


def test_split_segment_duration_one_second() -> None:
    """segment_duration=1 works: every cut moves back at most half a segment."""
    samples = noise(10.25, seed=3)
    segments = split(samples, 1)
    assert_covers(segments, samples, 1)
    assert 10 <= len(segments) <= 21
    for segment in segments[:-1]:
        assert SR // 2 <= len(segment.samples) <= SR


def test_split_fractional_duration() -> None:
    """A fractional segment_duration bounds segments at round(d * 16000) samples."""
    samples = noise(20, seed=5)
    segments = split(samples, 2.5)
    assert_covers(segments, samples, 2.5)
    assert max(len(s.samples) for s in segments) <= 40000


def test_split_real_recording_cuts_at_quiet_points(audio_dir: Path) -> None:
    """jfk.flac in 3 s segments: full coverage, and each cut sits far quieter than the speech around it."""
    samples = decode(audio_dir / "jfk.flac")
    segments = split(samples, 3)
    assert_covers(segments, samples, 3)
    assert len(segments) >= 4
    for segment in segments[:-1]:
        cut = segment.end_sample
        at_cut = float(np.sqrt(np.mean(samples[cut - FRAME // 2 : cut + FRAME // 2] ** 2)))
        nominal = segment.start_sample + 3 * SR
        window = float(np.sqrt(np.mean(samples[nominal - 2 * SR : nominal] ** 2)))
        assert at_cut < 0.2 * window


# -------------------------------------------------------------------------------------- stream_segments

DURATIONS = [1, 2.5, 3, 60, 300]


def write_wav(path: Path, samples: np.ndarray, rate: int = SR) -> Path:
    """A 16-bit mono WAV of float samples in [-1, 1) (the wave module; decoding it back is exact)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1 - 2**-15) * 32768).astype("<i2").tobytes())
    return path


def gappy(seconds: float, seed: int) -> np.ndarray:
    """Noise with silent gaps and quiet spots of 20-300 ms scattered over it, about one every 2 s."""
    rng = np.random.default_rng(seed)
    samples = noise(seconds, seed=seed)
    for _ in range(round(seconds / 2)):
        at = int(rng.integers(0, len(samples)))
        samples[at : at + int(rng.integers(SR // 50, SR * 3 // 10))] *= rng.choice([0.0, 0.001, 0.01, 0.1])
    return samples


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic inputs: 10 min 50 s of gappy noise as a 16 kHz WAV, and gappy speech as a 44.1 kHz stereo MP3."""
    directory = tmp_path_factory.mktemp("synthetic")
    wav = write_wav(directory / "gappy.wav", gappy(650, seed=11))
    mp3 = directory / "speech.mp3"
    # jfk.flac looped for 130 s with 300 ms of digital silence every 7 s: real speech through resampling.
    speech = AUDIO_DIR / "jfk.flac"
    if not speech.is_file():
        return {"wav": wav}
    run_ffmpeg(
        mp3,
        *("-stream_loop", "-1", "-i", str(speech), "-t", "130"),
        *("-af", "volume='if(lt(mod(t,7),0.3),0,1)':eval=frame", "-ar", "44100", "-ac", "2", "-b:a", "128k"),
    )
    return {"wav": wav, "mp3": mp3}


def spans(segments: Iterable[Segment]) -> list[tuple[int, int, int]]:
    return [(s.index, s.start_sample, s.end_sample) for s in segments]


def assert_same_segments(streamed: list[Segment], expected: list[Segment]) -> None:
    """Identical indices, sample positions and sample values."""
    assert spans(streamed) == spans(expected)
    for got, want in zip(streamed, expected, strict=True):
        assert got.samples.dtype == np.float32
        assert np.array_equal(got.samples, want.samples)


def ffmpeg_children() -> list[tuple[int, str]]:
    """(pid, state) of this process's ffmpeg children, zombies included (from /proc: no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if comm == "ffmpeg" and int(rest[1]) == os.getpid():
            found.append((int(stat.parent.name), rest[0]))
    return found


@pytest.mark.parametrize("duration", DURATIONS)
@pytest.mark.parametrize("name", ["jfk.flac", "librispeech_1995-1837-0001.wav", "aishell_BAC009S0724W0121.wav"])
def test_stream_matches_split_on_recordings(audio_dir: Path, name: str, duration: float) -> None:
    """On the real recordings, stream_segments gives exactly split(decode())'s segments."""
    path = audio_dir / name
    assert_same_segments(list(stream_segments(path, duration)), split(decode(path), duration))


@pytest.mark.parametrize("duration", DURATIONS)
@pytest.mark.parametrize("kind", ["wav", "mp3"])
def test_stream_matches_split_on_synthetic(synthetic: dict[str, Path], kind: str, duration: float) -> None:
    """On long inputs with silent gaps (many cuts, resampled or not), the streamed cuts are split()'s."""
    if kind not in synthetic:
        pytest.skip("shared recordings not found")
    path = synthetic[kind]
    expected = split(decode(path), duration)
    streamed = list(stream_segments(path, duration))
    assert_same_segments(streamed, expected)
    # Several cuts (the WAV is long enough even at 300 s), and cuts that moved back from the nominal points.
    assert len(streamed) >= (2 if kind == "wav" or duration <= 60 else 1)
    if duration < 60:
        assert sum((s.end_sample - s.start_sample) % round(duration * SR) != 0 for s in streamed[:-1]) > 0


@pytest.mark.parametrize(
    "length", [1, FRAME, SR // 2, SR - 1, SR, SR + 1, 3 * SR - 1, 3 * SR, 3 * SR + 1, 3 * SR + SR // 2]
)
def test_stream_edge_lengths(tmp_path: Path, length: int) -> None:
    """Audio ending just before, at and just after a nominal cut is cut like split() does (1 s segments)."""
    path = write_wav(tmp_path / "edge.wav", noise(length / SR, seed=length))
    streamed = list(stream_segments(path, 1))
    assert_same_segments(streamed, split(decode(path), 1))
    assert streamed[-1].end_sample == length
    if length in (SR, 3 * SR):  # an exact multiple has no empty tail
        assert streamed[-1].end_sample - streamed[-1].start_sample > 0


def test_stream_all_silence(tmp_path: Path) -> None:
    """Digital silence cuts half a frame before each nominal point, as split() does."""
    path = write_wav(tmp_path / "silence.wav", np.zeros(25 * SR, dtype=np.float32))
    streamed = list(stream_segments(path, 10))
    assert [s.end_sample for s in streamed] == [10 * SR - FRAME // 2, 20 * SR - FRAME, 25 * SR]


def test_stream_segments_are_independent_copies(synthetic: dict[str, Path]) -> None:
    """Every segment owns its samples: no shared buffer that a later segment would overwrite."""
    segments = list(stream_segments(synthetic["wav"], 2.5))
    for segment in segments:
        assert segment.samples.flags.owndata and segment.samples.flags.writeable
    for a, b in itertools.pairwise(segments):
        assert not np.shares_memory(a.samples, b.samples)
    before = segments[1].samples.copy()
    segments[0].samples[:] = 7.0
    assert np.array_equal(segments[1].samples, before)


def test_stream_replaces_non_finite_samples(tmp_path: Path) -> None:
    """NaN and infinities in a float WAV become 0 and ±1, like decode(), also across read boundaries."""
    samples = noise(5, seed=2)
    bad = {3: np.nan, SR - 1: np.inf, SR: -np.inf, 2 * SR + 5: np.nan, 4 * SR + 17: np.inf}
    for at, value in bad.items():
        samples[at] = value
    raw = tmp_path / "raw.f32"
    raw.write_bytes(samples.astype("<f4").tobytes())
    path = run_ffmpeg(
        tmp_path / "nan.wav", "-f", "f32le", "-ar", str(SR), "-ac", "1", "-i", str(raw), "-c:a", "pcm_f32le"
    )
    streamed = list(stream_segments(path, 1.5))
    assert_same_segments(streamed, split(decode(path), 1.5))
    joined = np.concatenate([s.samples for s in streamed])
    assert np.isfinite(joined).all()
    assert [joined[at] for at in bad] == [0.0, 1.0, -1.0, 0.0, 1.0]


def test_stream_rejects_non_positive_duration(synthetic: dict[str, Path]) -> None:
    """A segment duration under one sample is a programming error, not an endless loop."""
    with pytest.raises(ValueError, match="segment_duration"):
        next(stream_segments(synthetic["wav"], 0))


# The undecodable inputs of the decode() tests above, each with decode()'s message.
def _text(tmp_path: Path, ffmpeg: Ffmpeg) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50)
    return path


def _empty(tmp_path: Path, ffmpeg: Ffmpeg) -> Path:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    return path


def _truncated_header(tmp_path: Path, ffmpeg: Ffmpeg) -> Path:
    path = ffmpeg("whole.flac", "-f", "lavfi", "-i", "sine=d=1")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(path.read_bytes()[:30])
    return cut


BAD_INPUTS: dict[str, tuple[Callable[[Path, Ffmpeg], Path], str]] = {
    "text": (_text, "not decodable audio"),
    "empty": (_empty, "not decodable audio"),
    "truncated header": (_truncated_header, "not decodable audio"),
    "missing": (lambda tmp, ff: tmp / "nope.wav", "not decodable audio: No such file or directory"),
    "video only": (
        lambda tmp, ff: ff("v.mp4", "-f", "lavfi", "-i", "testsrc=d=1:size=64x64", "-c:v", "mpeg4"),
        "not decodable audio: the file has no audio stream",
    ),
    "header only": (
        lambda tmp, ff: ff("hdr.wav", "-f", "lavfi", "-i", "sine=d=1", "-t", "0"),
        "the file contains no audio samples",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_stream_rejects_what_decode_rejects(tmp_path: Path, ffmpeg: Ffmpeg, kind: str) -> None:
    """Undecodable, audio-less and empty inputs raise UnsupportedAudio with decode()'s message; no ffmpeg left."""
    make, message = BAD_INPUTS[kind]
    path = make(tmp_path, ffmpeg)
    with pytest.raises(UnsupportedAudio) as from_decode:
        decode(path)
    with pytest.raises(UnsupportedAudio) as from_stream:
        list(stream_segments(path, 60))
    assert from_stream.value.message == from_decode.value.message
    assert from_stream.value.message.startswith(message)
    assert from_stream.value.status == 415
    assert str(tmp_path) not in from_stream.value.message
    assert ffmpeg_children() == []


def test_stream_survives_a_flood_of_ffmpeg_errors(tmp_path: Path, ffmpeg: Ffmpeg) -> None:
    """A badly corrupted MP3 makes ffmpeg log more than a pipe holds; stderr is drained, nothing deadlocks."""
    clean = ffmpeg("tone.mp3", "-f", "lavfi", "-i", "sine=f=440:d=120", "-b:a", "64k")
    data = bytearray(clean.read_bytes())
    for at in range(2000, len(data), 40):
        data[at] ^= 0x5A
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(data)
    stderr = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True).stderr
    assert len(stderr) > 64 * 1024  # more than a Linux pipe buffers: an undrained stderr would block ffmpeg

    result: list[list[Segment]] = []
    worker = threading.Thread(target=lambda: result.append(list(stream_segments(path, 10))), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "stream_segments hung on a corrupt file"
    assert_same_segments(result[0], split(decode(path), 10))
    assert ffmpeg_children() == []


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 minutes of pink noise, 16 kHz mono 16-bit (38 MB; 77 MB decoded)."""
    out = tmp_path_factory.mktemp("long") / "long.wav"
    return run_ffmpeg(out, "-f", "lavfi", "-i", "anoisesrc=d=1200:c=pink:r=16000:a=0.2", "-c:a", "pcm_s16le")


def test_stream_is_lazy(long_wav: Path) -> None:
    """No ffmpeg before the first segment is asked for; after it, ffmpeg is still decoding (not done ahead)."""
    segments = stream_segments(long_wav, 60)
    assert ffmpeg_children() == []
    first = next(segments)
    assert (first.index, first.start_sample) == (0, 0)
    running = ffmpeg_children()
    assert len(running) == 1 and running[0][1] != "Z"
    segments.close()


def test_stream_close_midway_kills_ffmpeg(long_wav: Path) -> None:
    """Closing the generator after one segment kills and reaps ffmpeg: no process, no zombie."""
    segments = stream_segments(long_wav, 60)
    next(segments)
    [(pid, _)] = ffmpeg_children()
    segments.close()
    assert ffmpeg_children() == []
    assert not Path(f"/proc/{pid}").exists()


def test_stream_consumer_exception_kills_ffmpeg(long_wav: Path) -> None:
    """An exception in the loop consuming the segments ends ffmpeg too."""
    seen = []
    with pytest.raises(RuntimeError, match="consumer failed"):
        for segment in stream_segments(long_wav, 60):
            seen.append(ffmpeg_children())
            if segment.index == 2:
                raise RuntimeError("consumer failed")
    assert all(len(found) == 1 for found in seen)
    assert ffmpeg_children() == []


def test_stream_abandoned_generator_kills_ffmpeg(long_wav: Path) -> None:
    """A generator dropped without close() is finalized and takes ffmpeg with it."""
    segments = stream_segments(long_wav, 30)
    next(segments)
    assert len(ffmpeg_children()) == 1
    del segments
    gc.collect()
    assert ffmpeg_children() == []


def test_decode_timeout_kills_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input that never arrives (a FIFO nobody writes) hits the decode timeout; ffmpeg is killed."""
    fifo = tmp_path / "stuck.wav"
    os.mkfifo(fifo)
    monkeypatch.setattr(audio, "DECODE_TIMEOUT_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(UnsupportedAudio, match="took too long"):
        list(stream_segments(fifo, 60))
    with pytest.raises(UnsupportedAudio, match="took too long"):
        decode(fifo)
    assert time.monotonic() - started < 10
    assert ffmpeg_children() == []


# The peak is read from VmHWM, the high-water mark of this process's own memory map. getrusage's ru_maxrss
# would not do: Linux carries the spawning process's RSS (here pytest's) over exec into the child's maximum.
MEMORY_PROBE = """
import json, re, sys
from app.audio import decode, stream_segments
def peak(): return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024
base = peak()
if sys.argv[2] == "stream":
    samples = sum(len(s.samples) for s in stream_segments(sys.argv[1], 60))
else:
    samples = len(decode(sys.argv[1]))
print(json.dumps({"growth": peak() - base, "samples": samples}))
"""


def peak_growth(path: Path, how: str) -> tuple[int, int]:
    """(peak RSS growth in bytes over the baseline after imports, samples) of a fresh Python reading path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", MEMORY_PROBE, str(path), how]
    result = json.loads(subprocess.run(cmd, capture_output=True, check=True, env=env, timeout=120).stdout)
    return int(result["growth"]), int(result["samples"])


def test_stream_memory_is_bounded_on_long_audio(long_wav: Path) -> None:
    """20 minutes streams in 60 s segments with a few MiB of growth; decode() holds one copy of it all."""
    data = 1200 * SR * 4  # 73 MiB of float32
    stream_growth, stream_samples = peak_growth(long_wav, "stream")
    decode_growth, decode_samples = peak_growth(long_wav, "decode")
    assert stream_samples == decode_samples == 1200 * SR
    # Streaming: a 61 s buffer, a 60 s segment copy and a read; nowhere near the file.
    assert stream_growth < 40 * 2**20
    # decode(): the measurement sees the whole array, but only once (not the pipe's bytes plus the array).
    assert 0.9 * data < decode_growth < 1.25 * data


def test_raw_pcm_becomes_a_wav_that_decodes_to_the_same_samples(tmp_path: Path) -> None:
    """whisper-asr-webservice's encode=false body: s16le mono 16 kHz, read back sample for sample."""
    samples = (np.sin(np.arange(16000 * 2) / 7) * 20000).astype("<i2")
    raw = tmp_path / "body"
    raw.write_bytes(samples.tobytes())
    wav = tmp_path / "body.wav"
    audio.pcm_to_wav(raw, wav)
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 32000)
    decoded = audio.decode(wav)
    assert np.allclose(decoded, samples / 32768.0, atol=1e-4)


def test_raw_pcm_of_an_odd_length_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "body"
    raw.write_bytes(b"\x00\x01\x02")
    with pytest.raises(UnsupportedAudio, match="odd 3 bytes"):
        audio.pcm_to_wav(raw, tmp_path / "body.wav")


def test_raw_pcm_over_the_duration_cap_is_refused_before_it_is_copied(tmp_path: Path) -> None:
    raw = tmp_path / "body"
    raw.write_bytes(bytes(2 * SAMPLE_RATE * 3))
    target = tmp_path / "body.wav"
    with pytest.raises(AudioTooLong, match="limit of 2 s"):
        audio.pcm_to_wav(raw, target, max_seconds=2)
    assert not target.exists()
