#!/usr/bin/env python3
"""VAD benchmark: the speed of Silero VAD on one core, and where its cuts fall on speech with known pauses.

    python3 bench/vad.py [--minutes 60] [--out bench/results]

1. Speed, pinned to one core: the VAD pass alone over an hour of decoded audio (app.vad.FrameProbabilities
   fed a second at a time, as the service feeds it), as a real-time factor (goal: at most 0.005); then
   the whole front-end on an hour of 44.1 kHz stereo MP3 (made with ffmpeg from jfk.flac): ffmpeg alone
   to 16 kHz mono float32, app.audio.stream_segments (no VAD) and app.vad.speech_segments, wall time.
2. Cuts, on a program synthesized with espeak-ng: sentences separated by pauses of 0.5 to 3 s (seeded),
   with stretches of silence, a tone, a chord and noise between them. Where each sentence lies is known,
   so the report gives the share of segment boundaries that fall inside a pause (goal: all), the share of
   the seconds sent to the model that are not speech (goal: under 5 %), and the share of speech sent.
3. Subtitles, on the same program with its known sentences as the text: each segment gets the sentences
   its speech holds, and the SRT is rendered as the service renders it. Longest cue, cues on screen over
   a pause of more than 1.5 s, characters per second; with VAD and without.

Writes OUT/vad.json and OUT/vad.md. Needs espeak-ng for parts 2 and 3 (apt-get install espeak-ng).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import audio, formats, subtitles, vad  # noqa: E402
from app.audio import SAMPLE_RATE as SR  # noqa: E402
from app.transcript import Transcript, TranscriptSegment  # noqa: E402
from bench.common import base_machine, commit_label, git_state, write_report  # noqa: E402

SOURCE = ROOT.parent / "shared" / "audio" / "jfk.flac"
TARGETS = {"vad_rtf_max": 0.005, "boundaries_in_pauses_min": 1.0, "non_speech_sent_max": 0.05}
SENTENCES = [
    "The service cuts the audio where the speaker pauses.",
    "Every segment is sent to the model on its own.",
    "Subtitles should appear when the words are spoken.",
    "A long stretch of music must never turn into text.",
    "She walked to the station before the rain began.",
    "Numbers such as twenty three are read aloud.",
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you have a moment.",
    "We measured the time it takes to decode an hour.",
    "Nothing is generated over silence or noise.",
    "The meeting was moved to Thursday afternoon.",
    "He asked whether the train would be late again.",
    "Short answers are fine, but long ones are better.",
    "Each cue stays on screen for at least a moment.",
    "The last sentence of the program ends here.",
]
PAUSE_RANGE = (0.5, 3.0)
PADDINGS = (0.03, 0.05, 0.1, 0.2)
SEGMENT_SECONDS = 30.0
LONG_PAUSE = 1.5


def pin_one_core() -> int | None:
    """Run on one core (the goal is per core); the core used, or None where affinity cannot be set."""
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return core
    except (AttributeError, OSError):
        return None


def make_mp3(minutes: float, out: Path) -> Path:
    """jfk.flac looped to `minutes` as 44.1 kHz stereo 128 kb/s MP3."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(SOURCE), "-t", str(minutes * 60),
         "-ar", "44100", "-ac", "2", "-b:a", "128k", str(out)],
        check=True,
    )  # fmt: skip
    return out


def timed(fn: Any) -> tuple[float, Any]:
    """Wall seconds of fn() and its result."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def speed(minutes: float, work: Path, model: vad.SpeechModel) -> dict[str, Any]:
    """The VAD pass alone, and the front-end with and without it, on an hour of MP3."""
    mp3 = make_mp3(minutes, work / "hour.mp3")
    samples = audio.decode(mp3)
    seconds = len(samples) / SR
    model.session()  # loaded before the clock starts

    def vad_pass(pcm: Any) -> int:
        stream = model.probabilities()
        frames = 0
        for at in range(0, len(pcm), SR):
            frames += len(stream.feed(pcm[at : at + SR]))
        return frames + len(stream.flush())

    started = time.perf_counter()
    frames = vad_pass(samples)
    vad_seconds = time.perf_counter() - started
    del samples  # the hour of float32 is not kept through the front-end runs
    floor_cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(mp3), "-ac", "1", "-ar", str(SR),
                 "-f", "f32le", "-y", "/dev/null"]  # fmt: skip
    floor, _ = timed(lambda: subprocess.run(floor_cmd, check=True))
    plain, plain_count = timed(lambda: sum(1 for _ in audio.stream_segments(mp3, 60)))
    with_vad, vad_count = timed(lambda: sum(1 for _ in vad.speech_segments(mp3, 60, model)))
    return {
        "audio_seconds": round(seconds, 1),
        "frames": frames,
        "vad_pass_seconds": round(vad_seconds, 2),
        "vad_rtf": round(vad_seconds / seconds, 5),
        "front_end_seconds": {
            "ffmpeg_16k_alone": round(floor, 2),
            "stream_segments_no_vad": round(plain, 2),
            "speech_segments_vad": round(with_vad, 2),
        },
        "segments": {"no_vad": plain_count, "vad": vad_count},
        "vad_front_end_vs_ffmpeg": round(with_vad / floor, 2),
    }


def espeak(text: str, work: Path, n: int) -> np.ndarray:
    """A sentence spoken by espeak-ng, at 16 kHz, trimmed to where its sound starts and ends."""
    wav = work / f"s{n}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(wav), text], check=True)
    samples = audio.decode(wav)
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[loud[0] : loud[-1] + 1]


def program(work: Path, seed: int = 7) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Sentences with pauses between them and stretches of non-speech; the audio and each sentence's place."""
    rng = np.random.default_rng(seed)
    t = np.arange(8 * SR) / SR
    stretches = {
        3: np.zeros(10 * SR, dtype=np.float32),  # silence
        6: (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),  # a tone
        9: (0.1 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))).astype(np.float32),  # a chord
        12: (rng.standard_normal(8 * SR) * 0.02).astype(np.float32),  # noise
    }
    pieces: list[np.ndarray] = [np.zeros(SR, dtype=np.float32)]
    speech: list[tuple[int, int, str]] = []
    at = SR
    for n, text in enumerate(SENTENCES):
        spoken = espeak(text, work, n)
        speech.append((at, at + len(spoken), text))
        pieces.append(spoken)
        at += len(spoken)
        gap = np.zeros(round(rng.uniform(*PAUSE_RANGE) * SR), dtype=np.float32)
        pieces.append(gap)
        at += len(gap)
        if n in stretches:
            pieces.append(stretches[n])
            pieces.append(np.zeros(SR // 2, dtype=np.float32))
            at += len(stretches[n]) + SR // 2
    return np.concatenate(pieces), speech


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def cuts(segments: list[audio.Segment], speech: list[tuple[int, int, str]]) -> dict[str, Any]:
    """Where the boundaries fall, and how much of what is sent is speech."""
    regions = [(a, b) for a, b, _ in speech]
    boundaries = [(p.end_sample, n.start_sample) for p, n in itertools.pairwise(segments)]
    in_pause = [not any(overlap((lo, max(hi, lo + 1)), r) for r in regions) for lo, hi in boundaries]
    spans = [span for s in segments for span in (s.spans or ((s.start_sample, s.end_sample),))]
    sent = sum(b - a for a, b in spans)
    covered = sum(overlap(span, r) for span in spans for r in regions)
    total_speech = sum(b - a for a, b in regions)
    return {
        "segments": len(segments),
        "boundaries": len(boundaries),
        "boundaries_in_pauses": round(sum(in_pause) / len(boundaries), 3) if boundaries else 1.0,
        "sent_seconds": round(sent / SR, 2),
        "non_speech_sent_share": round((sent - covered) / sent, 4) if sent else 0.0,
        "speech_sent_share": round(covered / total_speech, 4),
    }


def transcript_of(segments: list[audio.Segment], speech: list[tuple[int, int, str]], duration: float) -> Transcript:
    """The program's transcript as a perfect model would give it: each sentence in the segment holding most of it."""
    texts: list[list[str]] = [[] for _ in segments]
    for a, b, text in speech:
        shares = [
            sum(overlap((a, b), span) for span in (s.spans or ((s.start_sample, s.end_sample),))) for s in segments
        ]
        if max(shares) > 0:
            texts[int(np.argmax(shares))].append(text)
    return Transcript(
        [
            TranscriptSegment(s.index, s.start, s.end, " ".join(t), "eos", s.speech if s.spans else ())
            for s, t in zip(segments, texts, strict=True)
        ],
        duration,
        "en",
        0.0,
    )


def cue_stats(transcript: Transcript, speech: list[tuple[int, int, str]]) -> dict[str, Any]:
    """Longest cue, cues over a long pause, reading speed."""
    cues = subtitles.cues(transcript)
    pauses = [(b / SR, c / SR) for (_, b, _), (c, _, _) in itertools.pairwise(speech)]
    long_pauses = [(a, b) for a, b in pauses if b - a > LONG_PAUSE]
    over = sum(1 for cue in cues if any(cue.start < a and b < cue.end for a, b in long_pauses))
    cps = [len(cue.text.replace("\n", " ")) / max(cue.end - cue.start, 1e-3) for cue in cues]
    assert formats.render_srt(transcript).count("-->") == len(cues)
    return {
        "cues": len(cues),
        "longest_cue_seconds": round(max(c.end - c.start for c in cues), 2) if cues else 0.0,
        "shortest_cue_seconds": round(min(c.end - c.start for c in cues), 2) if cues else 0.0,
        "cues_over_a_pause_over_1_5_s": over,
        "long_pauses": len(long_pauses),
        "chars_per_second_median": round(statistics.median(cps), 1) if cps else 0.0,
        "chars_per_second_max": round(max(cps), 1) if cps else 0.0,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["speed"]
    lines = [
        "# VAD",
        "",
        f"Machine: {report['machine']['cpu']}, pinned to one core: {'yes' if report['one_core'] else 'no'}; "
        f"{commit_label(report['git'])}.",
        "",
        "## Speed (one core)",
        "",
        "| what | seconds | of real time |",
        "|---|---|---|",
        f"| VAD pass alone, {s['audio_seconds']:.0f} s of audio | {s['vad_pass_seconds']} "
        f"| {s['vad_rtf']} (goal ≤ 0.005) |",
    ]
    for name, value in s["front_end_seconds"].items():
        lines.append(f"| front-end: {name} | {value} | {round(value / s['audio_seconds'], 5)} |")
    lines += ["", f"With VAD the front-end takes {s['vad_front_end_vs_ffmpeg']}× ffmpeg's 16 kHz decode alone.", ""]
    if "cuts" in report:
        lines += [
            "## Cuts on synthesized speech with known pauses",
            "",
            f"{len(SENTENCES)} espeak-ng sentences, pauses of {PAUSE_RANGE[0]}-{PAUSE_RANGE[1]} s, plus 10 s of "
            f"silence, 8 s of a tone, 8 s of a chord and 8 s of noise; {report['program_seconds']} s, segments "
            f"of at most {SEGMENT_SECONDS:g} s.",
            "",
            "| cutting | segments | boundaries in pauses | non-speech share of what is sent | speech sent |",
            "|---|---|---|---|---|",
        ]
        for name, c in report["cuts"].items():
            lines.append(
                f"| {name} | {c['segments']} | {c['boundaries_in_pauses']:.0%} | {c['non_speech_sent_share']:.1%} "
                f"| {c['speech_sent_share']:.1%} |"
            )
        lines += [
            "",
            f"The default padding is {vad.VadSettings().padding:g} s. With other paddings:",
            "",
            "| padding (s) | non-speech share of what is sent | speech sent | boundaries in pauses |",
            "|---|---|---|---|",
        ]
        for padding, c in report["padding_sweep"].items():
            lines.append(
                f"| {padding} | {c['non_speech_sent_share']:.1%} | {c['speech_sent_share']:.1%} | "
                f"{c['boundaries_in_pauses']:.0%} |"
            )
        lines += [
            "",
            "## Subtitles of the same program (its known sentences as the text)",
            "",
            "| cutting | cues | longest cue (s) | shortest (s) | cues over a pause > 1.5 s | chars/s median "
            "| chars/s max |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, c in report["cues"].items():
            lines.append(
                f"| {name} | {c['cues']} | {c['longest_cue_seconds']} | {c['shortest_cue_seconds']} | "
                f"{c['cues_over_a_pause_over_1_5_s']} of {c['long_pauses']} pauses | {c['chars_per_second_median']} | "
                f"{c['chars_per_second_max']} |"
            )
    else:
        lines += ["Parts 2 and 3 were skipped: espeak-ng is not installed."]
    lines += ["", "Targets met: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in report["met"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the speed test's audio")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    core = pin_one_core()
    model = vad.SpeechModel(vad.VadSettings())
    report: dict[str, Any] = {"machine": base_machine(), "git": git_state(), "one_core": core is not None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report["speed"] = speed(args.minutes, work, model)
        met = {"vad_rtf": report["speed"]["vad_rtf"] <= TARGETS["vad_rtf_max"]}
        if shutil.which("espeak-ng"):
            samples, speech = program(work)
            path = write_wav(work / "program.wav", samples)
            duration = len(samples) / SR
            report["program_seconds"] = round(duration, 1)
            with_vad = list(vad.speech_segments(path, SEGMENT_SECONDS, model))
            without = list(audio.stream_segments(path, SEGMENT_SECONDS))
            report["cuts"] = {"vad": cuts(with_vad, speech), "no vad": cuts(without, speech)}
            # The padding is what most of the non-speech sent is made of: how the shares move with it.
            report["padding_sweep"] = {
                f"{padding:g}": cuts(
                    list(vad.speech_segments(path, SEGMENT_SECONDS, vad.SpeechModel(vad.VadSettings(padding=padding)))),
                    speech,
                )
                for padding in PADDINGS
            }
            report["cues"] = {
                "vad": cue_stats(transcript_of(with_vad, speech, duration), speech),
                "no vad": cue_stats(transcript_of(without, speech, duration), speech),
            }
            c = report["cuts"]["vad"]
            met["boundaries_in_pauses"] = c["boundaries_in_pauses"] >= TARGETS["boundaries_in_pauses_min"]
            met["non_speech_sent"] = c["non_speech_sent_share"] < TARGETS["non_speech_sent_max"]
    report["targets"], report["met"] = TARGETS, met
    write_report(report, args.out, "vad", markdown)
    print(markdown(report))


if __name__ == "__main__":
    main()
