"""Speech detection with Silero VAD, and segments cut in the pauses between speech, as the audio decodes.

The model is Silero VAD's "sequence" ONNX export from the silero-vad wheel: the same network as its
streaming model, run over a block of frames per call, so that an hour of audio takes a couple of
seconds of one core. Speech is found with Silero's own hysteresis (a start at `threshold`, an end after
`min_silence` below `threshold - 0.15`, runs shorter than `min_speech` dropped, `padding` added on both
sides); tests check the spans against silero-vad's get_speech_timestamps_from_probs.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.audio import QUIET_SEARCH_SECONDS, SAMPLE_RATE, DecodeStats, Segment, pcm_chunks, quietest_cut

# The model's frame at 16 kHz (32 ms), and the samples of the frame before it that each frame also sees.
FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
# Frames per ONNX call (16.4 s): below a few hundred, the per-call overhead dominates (0.017 of real time
# at 128 frames against 0.002 at 512, on one core).
BLOCK_FRAMES = 512
_STATE_SHAPE = (1, 1, 128)
MODEL_FILE = "silero_vad_16k_sequence.onnx"
# Silero's end-of-speech threshold sits this far below the start threshold (hysteresis).
NEGATIVE_OFFSET = 0.15


@dataclass(frozen=True)
class VadSettings:
    """How speech is told from the rest; seconds, and a probability in [0, 1]."""

    threshold: float = 0.5
    min_silence: float = 0.5
    # Silero's own default (speech_pad_ms=30): more sends pauses to the model (8 % of what is sent at 0.1 s,
    # 14 % at 0.2 s, bench/results/vad.md) for no speech gained.
    padding: float = 0.03
    min_speech: float = 0.25

    @property
    def pad_samples(self) -> int:
        """Padding in samples, at most half the minimum pause, so padded spans never overlap."""
        return round(min(self.padding, self.min_silence / 2) * SAMPLE_RATE)


def model_path() -> Path:
    """The sequence ONNX file inside the installed silero-vad package.

    Found without importing the package: its __init__ imports silero_vad.model, which calls
    torch.set_num_threads(1) for the whole process, and that would slow the model's own CPU inference.
    """
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise RuntimeError("the silero-vad package is not installed")
    return Path(spec.origin).parent / "data" / MODEL_FILE


class SpeechModel:
    """Silero VAD's ONNX session, loaded on first use and shared: onnxruntime's run is thread-safe."""

    def __init__(self, settings: VadSettings) -> None:
        self.settings = settings
        self._session: Any = None
        self._lock = threading.Lock()

    def session(self) -> Any:
        """The inference session (one core: it runs beside the model's own inference)."""
        with self._lock:
            if self._session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                self._session = onnxruntime.InferenceSession(
                    str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
                )
            return self._session

    def probabilities(self) -> FrameProbabilities:
        """A fresh stream of per-frame speech probabilities."""
        return FrameProbabilities(self.session())


class FrameProbabilities:
    """Per-frame speech probabilities of audio fed in pieces, the network's state carried between them."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._hidden = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._cell = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the frames completed by samples, once a block of them is ready (else none)."""
        self._pending.append(samples)
        self._pending_samples += len(samples)
        if self._pending_samples < BLOCK_FRAMES * FRAME_SAMPLES:
            return np.zeros(0, dtype=np.float32)
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        """The probabilities of every frame still held, the last one padded with zeros to a whole frame."""
        return self._run(final=True)

    def _run(self, final: bool) -> np.ndarray:
        audio = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0] if self._pending else None
        if audio is None or not len(audio):
            return np.zeros(0, dtype=np.float32)
        frames = len(audio) // FRAME_SAMPLES
        if final and len(audio) % FRAME_SAMPLES:
            frames += 1
            audio = np.concatenate([audio, np.zeros(frames * FRAME_SAMPLES - len(audio), dtype=np.float32)])
        rest = audio[frames * FRAME_SAMPLES :]
        self._pending = [rest] if len(rest) else []
        self._pending_samples = len(rest)
        out: list[np.ndarray] = []
        for first in range(0, frames, BLOCK_FRAMES):
            count = min(BLOCK_FRAMES, frames - first)
            block = audio[first * FRAME_SAMPLES : (first + count) * FRAME_SAMPLES].reshape(count, FRAME_SAMPLES)
            # Each frame is preceded by the last CONTEXT_SAMPLES of the frame before, as in the streaming model.
            contexts = np.empty((count, CONTEXT_SAMPLES), dtype=np.float32)
            contexts[0] = self._context
            contexts[1:] = block[:-1, -CONTEXT_SAMPLES:]
            self._context = block[-1, -CONTEXT_SAMPLES:].copy()
            probs, self._hidden, self._cell = self._session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, block], axis=1), "h": self._hidden, "c": self._cell},
            )
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class SpeechRuns:
    """Silero's speech state machine over a stream of frame probabilities: runs of speech, unpadded."""

    def __init__(self, settings: VadSettings) -> None:
        self.threshold = settings.threshold
        self.negative = max(settings.threshold - NEGATIVE_OFFSET, 0.01)
        self.min_silence = settings.min_silence * SAMPLE_RATE
        self.min_speech = settings.min_speech * SAMPLE_RATE
        self.frames = 0  # frames seen
        self.start: int | None = None  # where the open run started, in samples
        self._silence_from = 0  # where a possible end of the open run began (0: none)

    @property
    def position(self) -> int:
        """Samples covered by the frames seen."""
        return self.frames * FRAME_SAMPLES

    def step(self, probs: np.ndarray) -> list[tuple[int, int]]:
        """The runs that the next frames end, as (start, end) in samples."""
        ended: list[tuple[int, int]] = []
        for prob in probs.tolist():
            at = self.frames * FRAME_SAMPLES
            self.frames += 1
            if prob >= self.threshold:
                self._silence_from = 0
                if self.start is None:
                    self.start = at
                continue
            if self.start is None or prob >= self.negative:
                continue
            if not self._silence_from:
                self._silence_from = at
            if at - self._silence_from >= self.min_silence:
                if self._silence_from - self.start > self.min_speech:
                    ended.append((self.start, self._silence_from))
                self.start = None
                self._silence_from = 0
        return ended

    def finish(self, total: int) -> tuple[int, int] | None:
        """At the end of the audio: the open run, ended there, if it is long enough."""
        start, self.start = self.start, None
        if start is not None and total - start > self.min_speech:
            return start, total
        return None


class _Buffer:
    """The decoded samples still needed, from `base` on, in one growable array."""

    def __init__(self) -> None:
        self.data = np.empty(SAMPLE_RATE * 64, dtype=np.float32)
        self.base = 0
        self.size = 0

    @property
    def end(self) -> int:
        """The position after the last sample held."""
        return self.base + self.size

    def append(self, samples: np.ndarray) -> None:
        """Add samples at the end."""
        if self.size + len(samples) > len(self.data):
            grown = np.empty(max(2 * len(self.data), self.size + len(samples)), dtype=np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : self.size + len(samples)] = samples
        self.size += len(samples)

    def view(self, start: int, end: int) -> np.ndarray:
        """samples[start:end] of the audio (a view: copy it to keep it)."""
        return self.data[start - self.base : end - self.base]

    def drop_before(self, position: int) -> None:
        """Forget the samples before position."""
        cut = min(max(position - self.base, 0), self.size)
        if cut:
            self.data[: self.size - cut] = self.data[cut : self.size]
            self.size -= cut
            self.base += cut


def speech_segments(
    path: str | Path,
    segment_duration: float,
    model: SpeechModel,
    max_seconds: float | None = None,
    stats: DecodeStats | None = None,
) -> Generator[Segment, None, None]:
    """Decode, find speech and cut segments in one pass; only speech is in them.

    A segment is a run of whole speech spans (padded) whose audio, put end to end, lasts at most
    segment_duration; its samples are those spans joined (the pauses between them shortened to the
    padding on each side), and its spans keep their places in the file. Cuts between segments fall in
    pauses. A single run of speech longer than segment_duration is cut at the quietest 10 ms in the
    QUIET_SEARCH_SECONDS before each nominal cut, as without VAD. A segment is yielded once the speech
    after it has begun, a segment's length of silence has followed it, or the audio has ended, so
    generation overlaps decoding, and memory stays at about a segment plus a block of VAD frames.
    Audio without speech yields no segment; stats gets the decoded length either way.
    """
    cutter = _Segmenter(segment_duration, model)
    spent = 0.0  # in the VAD model, the bulk of the VAD's time
    for samples in pcm_chunks(path, max_seconds, stats):
        cutter.buffer.append(samples)
        started = time.perf_counter()
        probabilities = cutter.probabilities.feed(samples)
        spent += time.perf_counter() - started
        yield from cutter.settle(probabilities)
    started = time.perf_counter()
    probabilities = cutter.probabilities.flush()
    spent += time.perf_counter() - started
    if stats is not None:
        stats.vad_seconds = spent
    yield from cutter.settle(probabilities)
    yield from cutter.finish()


class _Segmenter:
    """speech_segments' state: the audio still needed, the open run of speech, the next segment's spans."""

    def __init__(self, segment_duration: float, model: SpeechModel) -> None:
        self.size = round(segment_duration * SAMPLE_RATE)
        if self.size < 1:
            raise ValueError(f"segment_duration must be positive, got {segment_duration!r}")
        self.window = min(int(QUIET_SEARCH_SECONDS * SAMPLE_RATE), self.size // 2)
        self.pad = model.settings.pad_samples
        self.probabilities = model.probabilities()
        self.runs = SpeechRuns(model.settings)
        self.buffer = _Buffer()
        self.group: list[tuple[int, int, np.ndarray]] = []  # the next segment's spans, with their samples
        self.group_samples = 0
        self.run_from: int | None = None  # the padded start of the open run, or where its last cut fell
        self.open_start: int | None = None  # the unpadded start of the run run_from belongs to
        self.last_end = 0  # the padded end of the last span
        self.index = 0

    def settle(self, probs: np.ndarray) -> Iterator[Segment]:
        """The segments that the next frames' probabilities settle."""
        if not len(probs):
            return
        ended = self.runs.step(probs)
        known = min(self.runs.position, self.buffer.end)
        for start, end in ended:
            yield from self._add(self._begin(start), min(end + self.pad, known))
        if self.runs.start != self.open_start:
            # The run run_from belonged to has ended (a run too short to keep ends without a span).
            self.run_from = self.open_start = None
        if self.runs.start is not None and self.run_from is None:
            self.run_from, self.open_start = self._begin(self.runs.start), self.runs.start
        if self.run_from is not None:
            if self.group and self.group_samples + known - self.run_from > self.size:
                yield from self._close()
            while known - self.run_from > self.size:
                yield from self._close()
                cut = self._cut(self.run_from)
                yield self._segment([(self.run_from, cut, self.buffer.view(self.run_from, cut).copy())])
                self.run_from = cut
        elif self.group and known - self.last_end > self.size:
            yield from self._close()  # a segment's length of silence has passed: no reason to hold it back
        # A run that starts later is padded back at most `pad` before the frames seen.
        self.buffer.drop_before(min(self.run_from if self.run_from is not None else known, known - self.pad))

    def finish(self) -> Iterator[Segment]:
        """The segments left at the end of the audio."""
        last = self.runs.finish(self.buffer.end)
        if last is not None:
            yield from self._add(self._begin(last[0]), last[1])
        yield from self._close()

    def _begin(self, start: int) -> int:
        """Where the run that starts at `start` begins: padded, after the last span, or where it was last cut."""
        if self.run_from is not None and self.open_start == start:
            begin = self.run_from
        else:
            begin = max(start - self.pad, self.last_end, 0)
        self.run_from = self.open_start = None
        return begin

    def _add(self, start: int, end: int) -> Iterator[Segment]:
        """A whole padded span into the next segment, cut first when it is longer than a segment."""
        if end <= start:
            return  # the rest of a run that was cut after its speech had already ended
        while end - start > self.size:
            yield from self._close()
            cut = self._cut(start)
            yield self._segment([(start, cut, self.buffer.view(start, cut).copy())])
            start = cut
        if self.group and self.group_samples + end - start > self.size:
            yield from self._close()
        self.group.append((start, end, self.buffer.view(start, end).copy()))
        self.group_samples += end - start
        self.last_end = end

    def _cut(self, start: int) -> int:
        """Where speech from start on is cut: the quietest point before start + size."""
        low = start + self.size - self.window
        return low + quietest_cut(self.buffer.view(low, start + self.size), 0, self.window)

    def _close(self) -> Iterator[Segment]:
        if self.group:
            yield self._segment(self.group)
            self.group, self.group_samples = [], 0

    def _segment(self, spans: list[tuple[int, int, np.ndarray]]) -> Segment:
        samples = spans[0][2] if len(spans) == 1 else np.concatenate([s for _, _, s in spans])
        self.index += 1
        return Segment(self.index - 1, spans[0][0], spans[-1][1], samples, tuple((a, b) for a, b, _ in spans))
