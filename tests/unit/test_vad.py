"""app.vad: Silero VAD on real recordings, checked against silero-vad's own functions, and the segments cut from it."""

from __future__ import annotations

import itertools
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app import audio, vad
from app.audio import SAMPLE_RATE as SR
from app.audio import DecodeStats, decode
from app.errors import UnsupportedAudio
from tests.unit.conftest import run_ffmpeg

SETTINGS = vad.VadSettings()


@pytest.fixture(scope="module")
def model() -> vad.SpeechModel:
    """One shared speech model (its ONNX session loads once)."""
    return vad.SpeechModel(SETTINGS)


@pytest.fixture(scope="module")
def silero() -> Iterator[object]:
    """silero-vad's own module, imported with torch's thread count put back (its import sets it to 1)."""
    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    yield silero_vad
    torch.set_num_threads(threads)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """16 kHz mono 16-bit WAV."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def silence(seconds: float) -> np.ndarray:
    """Digital silence."""
    return np.zeros(round(seconds * SR), dtype=np.float32)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    """A steady sine tone, as loud as speech: not speech."""
    t = np.arange(round(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet white noise: not speech."""
    return (np.random.default_rng(seed).standard_normal(round(seconds * SR)) * 0.01).astype(np.float32)


def program(audio_dir: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Real speech between stretches of silence, tone and noise; the audio and where each recording lies."""
    pieces = [
        silence(2.0), decode(audio_dir / "jfk.flac"), silence(1.5),
        decode(audio_dir / "librispeech_1995-1837-0001.wav"),
        tone(3.0), decode(audio_dir / "aishell_BAC009S0724W0121.wav"), noise(4.0), decode(audio_dir / "jfk.flac"),
        silence(2.5),
    ]  # fmt: skip
    speech: list[tuple[int, int]] = []
    at = 0
    for k, piece in enumerate(pieces):
        if k % 2:
            speech.append((at, at + len(piece)))
        at += len(piece)
    return np.concatenate(pieces), speech


def overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Samples two ranges share."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def test_streamed_probabilities_equal_silero_sequence_model(
    model: vad.SpeechModel, silero: object, audio_dir: Path
) -> None:
    """Fed in pieces of any size, the probabilities are exactly silero-vad's for the whole array."""
    samples, _ = program(audio_dir)
    stream = model.probabilities()
    rng = np.random.default_rng(1)
    got: list[np.ndarray] = []
    at = 0
    while at < len(samples):
        step = int(rng.integers(1, 3 * SR))
        got.append(stream.feed(samples[at : at + step]))
        at += step
    got.append(stream.flush())
    reference = silero.SileroVADSequence(str(vad.model_path())).audio_forward(samples)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(np.concatenate(got), reference)


@pytest.mark.parametrize("threshold, min_silence", [(0.5, 0.5), (0.3, 0.1), (0.7, 1.0)])
def test_speech_runs_equal_silero_timestamps(
    model: vad.SpeechModel, silero: object, audio_dir: Path, threshold: float, min_silence: float
) -> None:
    """The incremental state machine finds silero-vad's speech timestamps (without padding), frame for frame."""
    samples, _ = program(audio_dir)
    stream = model.probabilities()
    probs = np.concatenate([stream.feed(samples), stream.flush()])
    runs = vad.SpeechRuns(vad.VadSettings(threshold=threshold, min_silence=min_silence))
    found = [*runs.step(probs[:700]), *runs.step(probs[700:])]
    last = runs.finish(len(samples))
    found += [last] if last else []
    expected = silero.get_speech_timestamps_from_probs(  # type: ignore[attr-defined]
        probs.tolist(), threshold=threshold, min_speech_duration_ms=250,
        min_silence_duration_ms=round(min_silence * 1000), speech_pad_ms=0, audio_length_samples=len(samples),
    )  # fmt: skip
    assert found == [(s["start"], s["end"]) for s in expected]
    assert len(found) >= 4


def test_segments_hold_only_speech_and_cut_in_pauses(model: vad.SpeechModel, audio_dir: Path, tmp_path: Path) -> None:
    """Each recording's speech reaches the model; the silence, tone and noise between them hardly at all."""
    samples, speech = program(audio_dir)
    path = write_wav(tmp_path / "program.wav", samples)
    decoded = decode(path)
    stats = DecodeStats()
    segments = list(vad.speech_segments(path, 12.0, model, stats=stats))
    assert stats.samples == len(samples)
    # Cuts fall in pauses: between two segments there is always a gap the VAD found (padding aside).
    for before, after in itertools.pairwise(segments):
        assert after.start_sample - before.end_sample >= (SETTINGS.min_silence - 2 * SETTINGS.padding) * SR
    assert [s.index for s in segments] == list(range(len(segments)))
    spans = [span for s in segments for span in s.spans]
    for s in segments:
        assert len(s.samples) == sum(b - a for a, b in s.spans) <= 12 * SR
        assert (s.start_sample, s.end_sample) == (s.spans[0][0], s.spans[-1][1])
        np.testing.assert_array_equal(s.samples, np.concatenate([decoded[a:b] for a, b in s.spans]))
    assert all(a < b <= c for (a, b), (c, _) in itertools.pairwise(spans))
    # No cut between two segments falls inside a recording's words: each gap lies in the inserted stretches or
    # in a pause inside a recording (no speech is lost at a cut: the speech spans cover every recording).
    covered = sum(overlap(span, region) for span in spans for region in speech)
    # The recordings include their own leading and trailing silence and pauses: most, not all, is speech.
    assert covered >= 0.8 * sum(b - a for a, b in speech)
    sent = sum(b - a for a, b in spans)
    non_speech = sent - covered
    assert non_speech < 0.05 * sent, (non_speech / SR, sent / SR)
    for region in speech:
        assert any(overlap(span, region) for span in spans)
    # The tone and the noise are never sent to the model.
    tone_at, noise_at = (speech[1][1], speech[2][0]), (speech[2][1], speech[3][0])
    for span in spans:
        assert overlap(span, tone_at) <= SETTINGS.pad_samples and overlap(span, noise_at) <= SETTINGS.pad_samples


def test_segment_boundaries_fall_between_recordings(audio_dir: Path, tmp_path: Path) -> None:
    """With pauses ending speech only between the recordings, and room for one per segment, each segment is one."""
    samples, speech = program(audio_dir)
    path = write_wav(tmp_path / "program.wav", samples)
    # The recordings' own pauses are under 0.7 s; the stretches between them are 1.5 s and more.
    segments = list(vad.speech_segments(path, 10.0, vad.SpeechModel(vad.VadSettings(min_silence=1.2))))
    owners = [
        {k for k, region in enumerate(speech) if overlap((s.start_sample, s.end_sample), region)} for s in segments
    ]
    assert all(len(o) == 1 for o in owners), owners
    assert sorted({k for o in owners for k in o}) == [0, 1, 2, 3]


def test_silence_only_gives_no_segments(model: vad.SpeechModel, tmp_path: Path) -> None:
    """Silence, a tone and noise: nothing to transcribe, and the length is still known."""
    path = write_wav(tmp_path / "quiet.wav", np.concatenate([silence(3), tone(5), noise(4)]))
    stats = DecodeStats()
    assert list(vad.speech_segments(path, 30, model, stats=stats)) == []
    assert stats.seconds == pytest.approx(12.0)


def test_no_samples_is_unsupported(model: vad.SpeechModel, tmp_path: Path) -> None:
    """A file that decodes to nothing is refused, as without VAD."""
    path = write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(UnsupportedAudio):
        list(vad.speech_segments(path, 30, model))


def test_speech_longer_than_a_segment_falls_back_to_quiet_cuts(
    model: vad.SpeechModel, audio_dir: Path, tmp_path: Path
) -> None:
    """One run of speech over several segments is cut at the quietest point of the 2 s before each limit."""
    speech = np.tile(decode(audio_dir / "librispeech_1995-1837-0001.wav"), 4)  # 35 s, no pause of 0.5 s
    path = write_wav(tmp_path / "run.wav", np.concatenate([silence(1), speech, silence(1)]))
    samples = decode(path)
    segments = list(vad.speech_segments(path, 10.0, model))
    assert len(segments) >= 4
    for before, after in itertools.pairwise(segments):
        assert len(before.samples) <= 10 * SR
        if before.end_sample == after.start_sample:  # cut inside the run: at its quietest 10 ms
            cut = before.end_sample
            start = before.spans[-1][0]
            assert start + 8 * SR <= cut <= start + 10 * SR
            window = samples[start + 8 * SR : start + 10 * SR]
            frames = window[: len(window) // 160 * 160].reshape(-1, 160)
            quietest = float((frames**2).sum(axis=1).min())
            at = (cut - (start + 8 * SR)) // 160
            assert float((frames[min(at, len(frames) - 1)] ** 2).sum()) <= quietest * 1.0001 + 1e-9
    assert segments[0].start_sample >= SR - SETTINGS.pad_samples - 512


def test_padding_is_clamped_to_half_the_pause() -> None:
    """Padded spans never overlap: padding is at most half of min_silence."""
    assert vad.VadSettings(min_silence=0.3, padding=1.0).pad_samples == round(0.15 * SR)
    assert vad.VadSettings(min_silence=1.0, padding=0.2).pad_samples == round(0.2 * SR)


def test_stream_closes_ffmpeg_when_abandoned(model: vad.SpeechModel, audio_dir: Path, tmp_path: Path) -> None:
    """Closing the generator after the first segment stops the decode (no error, nothing left running)."""
    samples, _ = program(audio_dir)
    path = write_wav(tmp_path / "program.wav", samples)
    produced = vad.speech_segments(path, 5.0, model)
    first = next(produced)
    assert first.index == 0
    produced.close()


def test_segments_match_in_memory_decode(model: vad.SpeechModel, audio_dir: Path) -> None:
    """The streamed segments' samples are the file's own samples (no offset between decode and VAD)."""
    path = audio_dir / "jfk.flac"
    whole = audio.decode(path)
    for s in vad.speech_segments(path, 30.0, model):
        np.testing.assert_array_equal(s.samples, np.concatenate([whole[a:b] for a, b in s.spans]))


@pytest.mark.parametrize("segment_duration", [1.0, 2.5, 7.0, 30.0])
def test_segments_are_ordered_bounded_and_disjoint(
    model: vad.SpeechModel, audio_dir: Path, tmp_path: Path, segment_duration: float
) -> None:
    """Whatever the segment length: spans rise, never overlap, and no segment holds more than its length."""
    # 150 s of jfk.flac looped: among its runs, some are cut after their speech has ended (what is left of them
    # is empty).
    path = run_ffmpeg(tmp_path / "loop.wav", "-stream_loop", "-1", "-i", str(audio_dir / "jfk.flac"), "-t", "150")
    size = round(segment_duration * SR)
    previous_end = 0
    segments = list(vad.speech_segments(path, segment_duration, model))
    assert segments
    for s in segments:
        assert 0 < len(s.samples) <= size
        for a, b in s.spans:
            assert previous_end <= a < b
            previous_end = b
