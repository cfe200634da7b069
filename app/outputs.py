"""Finished transcriptions written under <data dir>/outputs, one file each, never overwritten."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from app.transcript import Transcript


def now_iso() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def reserve_output(directory: Path) -> str:
    """Claim a fresh YYYYMMDDHHMMSS.txt name (a _N suffix when that second is taken); returns the name."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    for n in range(1, 10_000):
        name = f"{stamp}.txt" if n == 1 else f"{stamp}_{n}.txt"
        try:
            # O_EXCL on the final name reserves it, so two requests finishing in one second never share a file.
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise RuntimeError("no free output file name")


def write_reserved(directory: Path, name: str, text: str) -> None:
    """Write text to a reserved name: beside it first, then renamed over it, so no reader sees half a file."""
    tmp = directory / f".{name}.tmp"
    with tmp.open("wb") as out:
        out.write(text.encode("utf-8"))
        out.flush()
        # On disk before the rename: after a power cut the name holds the whole text or the empty reservation.
        os.fsync(out.fileno())
    os.replace(tmp, directory / name)


def write_output(directory: Path, text: str) -> str:
    """Write text to a newly reserved output name; returns the name."""
    name = reserve_output(directory)
    write_reserved(directory, name, text)
    return name


def save_transcript(directory: Path, transcript: Transcript) -> tuple[str, str]:
    """Write a finished transcription's text to the outputs; returns (text, output file name)."""
    text = transcript.text
    return text, write_output(directory, text + "\n")
