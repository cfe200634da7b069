"""Audio front-end: one ffmpeg decode to 16 kHz mono float32, then segments cut at quiet points."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import UnsupportedAudio

SAMPLE_RATE = 16000
# Cuts move back to the quietest point within this many seconds before the nominal cut.
QUIET_SEARCH_SECONDS = 2.0
# Loudness is measured on 10 ms frames when looking for the quietest point.
FRAME = SAMPLE_RATE // 100
# A pathological file must not hold a request thread forever.
DECODE_TIMEOUT_SECONDS = 3600
PROBE_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Segment:
    """A slice of the decoded audio with its position in the file."""

    index: int
    start_sample: int
    end_sample: int
    samples: np.ndarray

    @property
    def start(self) -> float:
        """Start in seconds."""
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        """End in seconds."""
        return self.end_sample / SAMPLE_RATE


def decode(path: str | Path) -> np.ndarray:
    """Decode the first audio stream of any ffmpeg-readable file to float32 mono 16 kHz samples."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-i", str(path),
        "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=DECODE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise UnsupportedAudio("decoding the upload took too long") from None
    if proc.returncode != 0:
        raise UnsupportedAudio(f"not decodable audio: {_ffmpeg_reason(proc.stderr)}")
    # ffmpeg may write a trailing partial sample when it stops on a corrupt packet; drop it.
    usable = len(proc.stdout) - len(proc.stdout) % 4
    samples = np.frombuffer(proc.stdout[:usable], dtype=np.float32)
    if samples.size == 0:
        raise UnsupportedAudio("the file contains no audio samples")
    if not np.isfinite(samples).all():
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return samples


def probe(path: str | Path) -> None:
    """Cheaply check that the file has an audio stream ffmpeg understands; raise UnsupportedAudio if not."""
    cmd = [
        "ffprobe", "-v", "error", "-select_streams", "a:0",
        "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(path),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise UnsupportedAudio("probing the upload took too long") from None
    if proc.returncode != 0:
        raise UnsupportedAudio(f"not decodable audio: {_ffmpeg_reason(proc.stderr)}")
    if b"audio" not in proc.stdout:
        raise UnsupportedAudio("not decodable audio: the file has no audio stream")


def _ffmpeg_reason(stderr: bytes) -> str:
    """The last meaningful line of ffmpeg's error output, without the local file path."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return "ffmpeg could not read it"
    if any("matches no streams" in ln for ln in lines):
        return "the file has no audio stream"
    # ffmpeg prefixes many messages with the input path; keep only what follows it.
    return lines[-1].split(": ", 1)[-1][:300]


def duration_of(samples: np.ndarray) -> float:
    """Length of decoded audio in seconds."""
    return len(samples) / SAMPLE_RATE


def split(samples: np.ndarray, segment_duration: float) -> list[Segment]:
    """Cut audio into segments of at most segment_duration seconds that cover the whole file.

    Each cut moves back to the quietest 10 ms frame in the last QUIET_SEARCH_SECONDS before it, so
    words are not cut in half. Segments are views into `samples`, not copies.
    """
    total = len(samples)
    size = round(segment_duration * SAMPLE_RATE)
    # The search window never reaches back past the middle of the segment, so every cut moves forward.
    window = min(int(QUIET_SEARCH_SECONDS * SAMPLE_RATE), size // 2)
    segments: list[Segment] = []
    start = 0
    while start < total:
        nominal = start + size
        end = total if nominal >= total else _quietest_cut(samples, nominal - window, nominal)
        segments.append(Segment(len(segments), start, end, samples[start:end]))
        start = end
    return segments


def _quietest_cut(samples: np.ndarray, lo: int, hi: int) -> int:
    """The sample index at the centre of the quietest 10 ms frame in samples[lo:hi]."""
    frames = (hi - lo) // FRAME
    if frames < 1:
        return hi
    region = samples[hi - frames * FRAME : hi].reshape(frames, FRAME)
    energy = np.einsum("ij,ij->i", region, region)
    # Among equally quiet frames (digital silence), prefer the latest: segments stay close to nominal.
    quietest = frames - 1 - int(np.argmin(energy[::-1]))
    return hi - frames * FRAME + quietest * FRAME + FRAME // 2
