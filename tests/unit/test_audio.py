"""app.audio: real ffmpeg decoding and quiet-point segmentation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.audio import FRAME, SAMPLE_RATE, Segment, decode, duration_of, split
from app.errors import UnsupportedAudio

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
    assert duration_of(samples) == pytest.approx(3.5, abs=0.001)


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
