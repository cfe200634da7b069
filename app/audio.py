"""Audio front-end: one ffmpeg decode to 16 kHz mono float32, cut into segments at quiet points.

stream_segments() does both in one pass with memory bounded by a segment; decode() + split() hold the whole file.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import threading
import time
import wave
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from app.errors import AudioTooLong, DecodeInterrupted, UnsupportedAudio

SAMPLE_RATE = 16000
# Cuts move back to the quietest point within this many seconds before the nominal cut.
QUIET_SEARCH_SECONDS = 2.0
# Loudness is measured on 10 ms frames when looking for the quietest point.
FRAME = SAMPLE_RATE // 100
# A pathological file must not hold a request thread forever.
DECODE_TIMEOUT_SECONDS = 3600
PROBE_TIMEOUT_SECONDS = 60
# Plausible source formats: below 1 kHz a header is lying (each sample would stretch over a millisecond or
# more); 768 kHz is the highest rate audio interfaces record.
MIN_SOURCE_RATE = 1000
MAX_SOURCE_RATE = 768_000
MAX_SOURCE_CHANNELS = 64
# The demuxers ffmpeg may use: real audio and video containers. ffmpeg detects formats by content, and some
# that it would pick read other files or URLs (hls, dash, concat playlists), synthesize hours of audio from a
# few bytes (sbg scripts, lavfi) or open devices; none of those is on this list, and a file detected as one
# is refused (the probe included). Names are ffmpeg's: a demuxer matches if any of its names is listed.
ALLOWED_FORMATS = (
    "aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "avi", "caf", "dsf", "dts", "dtshd",
    "dv", "eac3", "flac", "flv", "loas", "matroska", "webm", "mlp", "mov", "mp4", "m4a", "3gp", "mp3", "mpc",
    "mpc8", "mpeg", "mpegts", "mxf", "nistsphere", "nut", "ogg", "qcp", "rm", "shn", "tak", "truehd", "tta",
    "voc", "w64", "wav", "wv", "xwma",
)  # fmt: skip
# Input options of every ffmpeg and ffprobe run on an upload: the only protocol is a local file (the upload
# itself: no allowed demuxer opens another), and only the formats above.
INPUT_GUARD = ("-protocol_whitelist", "file", "-format_whitelist", ",".join(ALLOWED_FORMATS))
# ffmpeg's output is read a second at a time; decode() collects it in blocks of about a minute.
_READ_SAMPLES = SAMPLE_RATE
_READ_BYTES = _READ_SAMPLES * 4
_DECODE_BLOCK_SAMPLES = 1 << 20
# What is kept of ffmpeg's stderr: its first and its last this many bytes.
_STDERR_KEEP = 64 * 1024
_STDERR_CHUNK = 8192


@dataclass(frozen=True)
class Segment:
    """A slice of the decoded audio with its position in the file.

    With VAD, samples are the segment's speech spans joined end to end, and spans says where each one lies
    in the file; without, spans is empty and samples are the whole of start_sample to end_sample.
    """

    index: int
    start_sample: int
    end_sample: int
    samples: np.ndarray
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def speech(self) -> tuple[tuple[float, float], ...]:
        """Where the samples lie in the file, in seconds: the spans, or the whole segment."""
        spans = self.spans or ((self.start_sample, self.end_sample),)
        return tuple((a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in spans)

    @property
    def start(self) -> float:
        """Start in seconds."""
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        """End in seconds."""
        return self.end_sample / SAMPLE_RATE


@dataclass
class DecodeStats:
    """What a streaming decode found out by the end: the length of the audio, and where the time went."""

    samples: int = 0
    # Seconds spent reading ffmpeg's output (decoding), and running the VAD over it.
    decode_seconds: float = 0.0
    vad_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """The length in seconds."""
        return self.samples / SAMPLE_RATE


def pcm_chunks(
    path: str | Path, max_seconds: float | None = None, stats: DecodeStats | None = None
) -> Generator[np.ndarray, None, None]:
    """The file's 16 kHz mono float32 samples, a second or so at a time, as ffmpeg decodes them.

    Raises like decode(), and UnsupportedAudio if there are no samples at all; stats gets the total.
    """
    chunk = np.empty(_READ_SAMPLES + 1, dtype=np.float32)
    raw = chunk.view(np.uint8)
    held = 0  # bytes of a partial sample carried over from the last read
    total = 0
    with _PcmReader(path, max_seconds) as reader:
        while not reader.eof:
            held += reader.read(raw.data[held : held + _READ_BYTES])
            whole = held // 4
            if whole:
                samples = chunk[:whole].copy()
                sanitize(samples)
                total += whole
                yield samples
                rest = held - whole * 4
                raw[:rest] = raw[whole * 4 : held]
                held = rest
        reader.finish()
        if stats is not None:
            stats.decode_seconds += reader.waited
    if total == 0:
        raise UnsupportedAudio("the file contains no audio samples")
    if stats is not None:
        stats.samples = total


def decode(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream of any ffmpeg-readable file to float32 mono 16 kHz samples.

    The samples are read from ffmpeg in blocks and copied once into the result, so the peak is about one
    copy of the audio plus one block (not the pipe's whole output plus the array made from it).
    """
    blocks: list[np.ndarray] = []
    total = 0
    with _PcmReader(path, max_seconds) as reader:
        while not reader.eof:
            block = np.empty(_DECODE_BLOCK_SAMPLES, dtype=np.float32)
            got = reader.fill(block.view(np.uint8).data) // 4
            if got:
                sanitize(block[:got])
                blocks.append(block[:got])
                total += got
        reader.finish()
    if total == 0:
        raise UnsupportedAudio("the file contains no audio samples")
    if len(blocks) == 1:
        return blocks[0].copy()  # trimmed: do not keep a whole block alive for a short file
    samples = np.empty(total, dtype=np.float32)
    at = 0
    blocks.reverse()
    while blocks:  # free each block as soon as it is copied
        block = blocks.pop()
        samples[at : at + len(block)] = block
        at += len(block)
        del block
    return samples


def stream_segments(
    path: str | Path, segment_duration: float, max_seconds: float | None = None, stats: DecodeStats | None = None
) -> Generator[Segment, None, None]:
    """Decode and cut in one pass: the segments split(decode(path), segment_duration) gives, as they decode.

    One ffmpeg process decodes straight to 16 kHz mono float32 on a pipe. It is read a second at a time
    into a buffer of one segment plus one read; a segment is yielded as soon as its cut is known (the
    sample after the nominal cut has arrived, so the 2 s searched before it is complete). Cuts are exactly
    split()'s. Each segment's samples are its own copy, so memory stays at about two segments whatever
    the length of the file; the last segment's end is the duration of the audio (stats gets it too).

    Raises UnsupportedAudio like decode(), and AudioTooLong once more than max_seconds have decoded. A
    failure ffmpeg reports only when it exits (a file corrupt midway) is raised after the segments before
    it were yielded, never after the last one. Closing the generator early, or an exception in the
    consumer, kills ffmpeg and reaps it.
    """
    size = round(segment_duration * SAMPLE_RATE)
    if size < 1:
        raise ValueError(f"segment_duration must be positive, got {segment_duration!r}")
    window = min(int(QUIET_SEARCH_SECONDS * SAMPLE_RATE), size // 2)
    # The segment, the sample after it (it decides whether the audio goes on), and room for one read.
    buf = np.empty(size + _READ_SAMPLES, dtype=np.float32)
    raw = buf.view(np.uint8)
    view = raw.data
    filled_bytes = 0  # bytes of buf holding decoded data (may end in a partial sample)
    clean = 0  # buf[:clean] has had non-finite values replaced
    start = 0  # position of buf[0] in the audio
    index = 0
    with _PcmReader(path, max_seconds) as reader:
        while True:
            while not reader.eof and filled_bytes // 4 <= size:
                filled_bytes += reader.read(view[filled_bytes : min(filled_bytes + _READ_BYTES, len(view))])
            if reader.eof:
                reader.finish()  # raises before the last segment if ffmpeg failed
                filled_bytes -= filled_bytes % 4  # a trailing partial sample from a corrupt packet
            filled = filled_bytes // 4
            sanitize(buf[clean:filled])
            clean = filled
            if filled == 0:
                if index == 0:
                    raise UnsupportedAudio("the file contains no audio samples")
                if stats is not None:
                    stats.samples = start
                    stats.decode_seconds += reader.waited
                return
            cut = filled if filled <= size else quietest_cut(buf, size - window, size)
            yield Segment(index, start, start + cut, buf[:cut].copy())
            index += 1
            start += cut
            rest = filled_bytes - cut * 4
            raw[:rest] = raw[cut * 4 : filled_bytes]  # numpy copies overlapping ranges safely
            filled_bytes = rest
            clean -= cut


def probe(path: str | Path, max_seconds: float | None = None) -> None:
    """Check that the file holds audio ffmpeg decodes, at a plausible rate; raise UnsupportedAudio if not.

    Four cheap checks: ffprobe finds an audio stream in an allowed format, its sample rate and channel
    count are plausible (a header claiming 1 Hz would turn a few kilobytes into hours of audio), the
    duration its header states is within max_seconds (AudioTooLong otherwise; decoding enforces the cap
    too, for files that state none or lie), and its first second decodes to samples (a stream of an
    unknown codec, or one with no samples, passes ffprobe but not this).
    """
    cmd = [
        "ffprobe", "-v", "error", *INPUT_GUARD, "-select_streams", "a:0",
        "-show_entries", "stream=codec_type,sample_rate,channels,duration:format=duration", "-of", "json", str(path),
    ]  # fmt: skip
    proc = run_probe(cmd)
    if proc.returncode != 0:
        raise UnsupportedAudio(f"not decodable audio: {ffmpeg_reason(proc.stderr)}")
    try:
        info = json.loads(proc.stdout or b"{}")
    except ValueError:
        info = {}
    streams = info.get("streams") or []
    if not streams or streams[0].get("codec_type") != "audio":
        raise UnsupportedAudio("not decodable audio: the file has no audio stream")
    rate, channels = _as_int(streams[0].get("sample_rate")), _as_int(streams[0].get("channels"))
    if rate is not None and not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise UnsupportedAudio(
            f"implausible sample rate {rate} Hz: audio must be {MIN_SOURCE_RATE} to {MAX_SOURCE_RATE} Hz"
        )
    if channels is not None and not 1 <= channels <= MAX_SOURCE_CHANNELS:
        raise UnsupportedAudio(f"implausible channel count {channels}: audio must have 1 to {MAX_SOURCE_CHANNELS}")
    stated = positive_number(streams[0].get("duration")) or positive_number((info.get("format") or {}).get("duration"))
    if max_seconds is not None and stated is not None and stated > max_seconds:
        raise too_long(max_seconds, f"it lasts {stated:.0f} s")
    decode_start = [
        "ffmpeg", "-nostdin", "-v", "error", *INPUT_GUARD, "-i", str(path), "-map", "0:a:0", "-t", "1",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-",
    ]  # fmt: skip
    proc = run_probe(decode_start)
    if proc.returncode != 0:
        raise UnsupportedAudio(f"not decodable audio: {ffmpeg_reason(proc.stderr)}")
    if len(proc.stdout) < 4:
        raise UnsupportedAudio("the file contains no audio samples")


def compact(source: str | Path, target: str | Path, max_seconds: float | None = None) -> None:
    """The file's first audio stream as 16 kHz mono FLAC at target: what the model hears, losslessly, in about two
    thirds of the bytes of its 16-bit PCM on speech (cluster mode keeps a job's audio so in Redis)."""
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", *INPUT_GUARD, "-i", str(source), "-map", "0:a:0", "-vn", "-sn", "-dn",
        *(("-t", f"{max_seconds:g}") if max_seconds is not None else ()),
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "flac", "-f", "flac", "-y", str(target),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=DECODE_TIMEOUT_SECONDS, check=False, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        raise DecodeInterrupted("compacting the upload took too long", retry_after=5) from None
    check_signalled(proc.returncode)
    if proc.returncode != 0:
        raise UnsupportedAudio(f"not decodable audio: {ffmpeg_reason(proc.stderr)}")


def too_long(max_seconds: float, what: str) -> AudioTooLong:
    """The error for audio over the server's duration cap."""
    return AudioTooLong(f"the audio is longer than this server's limit of {max_seconds:g} s ({what})")


def run_probe(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run ffprobe (or a short ffmpeg) on an upload: UnsupportedAudio if it takes too long."""
    try:
        # A session of its own: Ctrl-C in the service's terminal stops the service, which stops ffmpeg.
        proc = subprocess.run(
            cmd, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        raise UnsupportedAudio("probing the upload took too long") from None
    check_signalled(proc.returncode)
    return proc


def check_signalled(returncode: int) -> None:
    """DecodeInterrupted if a signal stopped ffmpeg: that is an interruption, not a verdict on the file."""
    # Killed outright (a negative code), or stopped by its own handler: ffmpeg exits 255 only after a signal
    # (its errors exit 1), and says so only at a log level above the one used here.
    if returncode < 0 or returncode == 255:
        raise DecodeInterrupted("decoding was interrupted (ffmpeg was stopped by a signal)", retry_after=5)


def _as_int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def positive_number(value: object) -> float | None:
    """A finite number above zero as ffprobe states it (a string, often); None for anything else."""
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def sanitize(samples: np.ndarray) -> None:
    """Replace NaN and infinities (from corrupt packets) in place, as the model cannot take them."""
    if samples.size and not np.isfinite(samples).all():
        np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)


class _PcmReader:
    """One ffmpeg process decoding a file to 16 kHz mono float32 on a pipe, read incrementally.

    stderr is drained by a thread into a bounded buffer (its first and last bytes), so a corrupt file that
    makes ffmpeg log without end can neither block it nor fill memory. DECODE_TIMEOUT_SECONDS bounds the
    time spent waiting for ffmpeg's output (not the time the consumer takes between reads). Leaving the
    `with` block, however it is left, kills ffmpeg if it is still running and reaps it.
    """

    def __init__(self, path: str | Path, max_seconds: float | None = None) -> None:
        cmd = [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *INPUT_GUARD,
            "-i", str(path),
            "-map", "0:a:0", "-vn", "-sn", "-dn",
            "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-acodec", "pcm_f32le",
            # On a pipe ffmpeg otherwise flushes every packet: ~1.7 KB writes, 20x the syscalls of its 32 KB buffer.
            "-flush_packets", "0",
            "pipe:1",
        ]  # fmt: skip
        self.eof = False
        self._max_seconds = max_seconds
        # Bytes ffmpeg may write before the audio is over the duration cap (one more sample says it is).
        self._allowed = None if max_seconds is None else math.floor(max_seconds * SAMPLE_RATE) * 4
        self._read = 0
        self._budget = float(DECODE_TIMEOUT_SECONDS)
        self._head = bytearray()
        self._tail = bytearray()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            # A session of its own: Ctrl-C in the service's terminal must not reach it (the service stops it).
            start_new_session=True,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._fd = self._proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, args=(self._proc.stderr,), name="ffmpeg-stderr", daemon=True
        )
        self._stderr_thread.start()

    def __enter__(self) -> _PcmReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, view: memoryview) -> int:
        """Read what ffmpeg has written, up to len(view) bytes, into view; 0 (and eof set) at its end."""
        while True:
            if self._budget <= 0:
                self.close()
                raise UnsupportedAudio("decoding the upload took too long")
            waited = time.monotonic()
            ready = self._poll.poll(self._budget * 1000)
            self._budget -= time.monotonic() - waited
            if ready:
                got = os.readv(self._fd, [view])
                self.eof = got == 0
                self._read += got
                if self._allowed is not None and self._read > self._allowed:
                    self.close()
                    assert self._max_seconds is not None
                    raise too_long(self._max_seconds, "it was cut off while decoding")
                return got

    @property
    def waited(self) -> float:
        """Seconds spent waiting for ffmpeg's output so far: the decode's own time, the consumer's left out."""
        return DECODE_TIMEOUT_SECONDS - self._budget

    def fill(self, view: memoryview) -> int:
        """Read until view is full or ffmpeg's output ends; the number of bytes read."""
        got = 0
        while got < len(view) and not self.eof:
            got += self.read(view[got:])
        return got

    def finish(self) -> None:
        """After eof: wait for ffmpeg to exit; UnsupportedAudio if it failed."""
        try:
            returncode = self._proc.wait(timeout=max(self._budget, 1.0))
        except subprocess.TimeoutExpired:
            self.close()
            raise UnsupportedAudio("decoding the upload took too long") from None
        self._stderr_thread.join(timeout=10)
        if returncode != 0:
            check_signalled(returncode)
            raise UnsupportedAudio(f"not decodable audio: {ffmpeg_reason(self._stderr())}")

    def close(self) -> None:
        """Kill ffmpeg if it still runs, reap it, close the pipes."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr_thread.join(timeout=10)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        while chunk := stream.read(_STDERR_CHUNK):
            if len(self._head) < _STDERR_KEEP:
                self._head += chunk[: _STDERR_KEEP - len(self._head)]
            self._tail += chunk
            if len(self._tail) > 2 * _STDERR_KEEP:
                del self._tail[: len(self._tail) - _STDERR_KEEP]

    def _stderr(self) -> bytes:
        """The start and the end of what ffmpeg wrote to stderr (all of it when it was short)."""
        if len(self._head) < _STDERR_KEEP:
            return bytes(self._head)
        tail = self._tail[-_STDERR_KEEP:]
        # The tail starts mid-line: keep whole lines only.
        return bytes(self._head) + b"\n" + bytes(tail[tail.find(b"\n") + 1 :])


def ffmpeg_reason(stderr: bytes) -> str:
    """The last meaningful line of ffmpeg's error output, without the local file path."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return "ffmpeg could not read it"
    if any("matches no streams" in ln for ln in lines):
        return "the file has no audio stream"
    refused = next((ln for ln in lines if "not on whitelist" in ln), None)
    if refused is not None:
        # "[hls @ 0x...] Format not on whitelist '...'": name the format, not the list.
        found = refused[1:].split(" @", 1)[0] if refused.startswith("[") else "unknown"
        return f"{found} is not an audio or video format this server reads"
    # ffmpeg prefixes many messages with the input path; keep only what follows it.
    return lines[-1].split(": ", 1)[-1][:300]


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
        end = total if nominal >= total else quietest_cut(samples, nominal - window, nominal)
        segments.append(Segment(len(segments), start, end, samples[start:end]))
        start = end
    return segments


def quietest_cut(samples: np.ndarray, lo: int, hi: int) -> int:
    """The sample index at the centre of the quietest 10 ms frame in samples[lo:hi]."""
    frames = (hi - lo) // FRAME
    if frames < 1:
        return hi
    region = samples[hi - frames * FRAME : hi].reshape(frames, FRAME)
    energy = np.einsum("ij,ij->i", region, region)
    # Among equally quiet frames (digital silence), prefer the latest: segments stay close to nominal.
    quietest = frames - 1 - int(np.argmin(energy[::-1]))
    return hi - frames * FRAME + quietest * FRAME + FRAME // 2


# A WAV header counts the data in 32 bits, less the header's own 36 bytes.
MAX_WAV_DATA = 0xFFFFFFFF - 36


def pcm_to_wav(source: Path, target: Path, max_seconds: float | None = None) -> None:
    """Headerless signed 16-bit little-endian mono PCM at 16 kHz, given a WAV header so that ffmpeg reads it.

    whisper-asr-webservice's encode=false body; an odd byte count is not whole samples and is refused, and so
    is audio over the duration cap, before anything is copied.
    """
    size = source.stat().st_size
    if size % 2:
        raise UnsupportedAudio(
            f"raw PCM (encode=false) must be whole 16-bit samples, but the upload has an odd {size} bytes"
        )
    seconds = size / (2 * SAMPLE_RATE)
    if max_seconds is not None and seconds > max_seconds:
        raise too_long(max_seconds, f"{seconds:.0f} s of raw PCM")
    if size > MAX_WAV_DATA:
        raise UnsupportedAudio("raw PCM (encode=false) over 4 GiB cannot be read: send the file encoded")
    with wave.open(str(target), "wb") as out, source.open("rb") as raw:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        # Written in chunks: the body can be as large as the upload limit.
        while chunk := raw.read(1024 * 1024):
            out.writeframesraw(chunk)
