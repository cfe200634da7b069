#!/usr/bin/env python3
"""Print the segments the service would cut a recording into, one JSON object per line.

    python3 serve/segment_audio.py FILE [--segment-duration N]

Each line is {"index", "start", "end", "duration"} in seconds (3 decimals), as the segments decode: the file
is decoded and cut in one streaming pass (app.audio.stream_segments), so memory stays small however long it
is. Exits 2 with a message on an invalid segment duration or a file ffmpeg cannot decode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.audio import stream_segments  # noqa: E402
from app.errors import InvalidOption, UnsupportedAudio  # noqa: E402
from app.protocol.native import parse_options  # noqa: E402
from app.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, stream the segments to stdout; the exit status."""
    defaults = Settings().default_options()
    parser = argparse.ArgumentParser(
        prog="segment_audio.py",
        description="Print the segments the service would cut FILE into, one JSON object per line.",
    )
    parser.add_argument("file", metavar="FILE", help="any audio or video file ffmpeg can read")
    parser.add_argument(
        "--segment-duration",
        metavar="N",
        default=None,
        help=f"segment length in seconds, 1 to 300, as the API's segment_duration [{defaults.segment_duration:g}]",
    )
    args = parser.parse_args(argv)
    try:
        # The API's own parsing and range check, so the same values pass and fail with the same message.
        form = {} if args.segment_duration is None else {"segment_duration": args.segment_duration}
        segment_duration = parse_options(form, defaults).segment_duration
    except InvalidOption as exc:
        parser.error(exc.message)
    try:
        for segment in stream_segments(args.file, segment_duration):
            line = {
                "index": segment.index,
                "start": round(segment.start, 3),
                "end": round(segment.end, 3),
                "duration": round(segment.end - segment.start, 3),
            }
            print(json.dumps(line), flush=True)
    except UnsupportedAudio as exc:
        print(f"segment_audio.py: {args.file}: {exc.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
