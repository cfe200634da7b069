"""Word timestamps on a real server started with `--aligner` pointing at the tiny Qwen3-ForcedAligner.

The aligner loads only for outputs that need word times, once, and /health reports it. Its random head piles
every word at the end of the audio, which the service refuses as a failed alignment, so the words served here
are the estimate over the speech; tests/integration/test_aligner.py follows a usable alignment through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import srt

from app.words import text_words
from tests.support import JFK, Server, build_tiny, post, wait_for

pytestmark = pytest.mark.e2e

FAST = {"max_new_tokens": "24", "segment_duration": "4"}


@pytest.fixture(scope="module")
def aligned(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the tiny aligner."""
    aligner = build_tiny(tmp_path_factory.mktemp("tiny-aligner"), "qwen3-aligner")
    data = tmp_path_factory.mktemp("aligned") / "data"
    server = Server(tiny_checkpoint, data, ["--aligner", str(aligner), "--idle-timeout", "300"]).start()
    server.aligner = aligner  # type: ignore[attr-defined]
    yield server
    server.stop()


def aligner_health(server: Server) -> Any:
    return requests.get(server.url + "/health", timeout=10).json()["model"]["aligner"]


def check_words(segment: dict[str, Any]) -> None:
    """The segment's words: its text word by word as written, in order, inside it."""
    if not text_words(segment["text"]):  # random weights also write runs of "/": no word to time
        assert segment["words"] == []
        return
    assert segment["words"], segment
    floor = segment["start"]
    for word in segment["words"]:
        assert floor - 1e-3 <= word["start"] <= word["end"] <= segment["end"] + 1e-3, (word, segment)
        floor = word["end"]
    assert all(w["word"] == " ".join(w["word"].split()) for w in segment["words"])
    assert "".join("".join(w["word"].split()) for w in segment["words"]) == "".join(segment["text"].split())


def test_the_aligner_loads_once_and_only_for_word_times(aligned: Server) -> None:
    health = aligner_health(aligned)
    assert health == {"checkpoint": str(aligned.aligner), "state": "unloaded", "error": None, "loads": 0}  # type: ignore[attr-defined]

    assert post(aligned, "/transcribe", JFK, **FAST).status_code == 200
    plain = post(aligned, "/transcribe/json", JFK, **FAST).json()
    assert all("words" not in s for s in plain["segments"])
    assert aligner_health(aligned)["loads"] == 0, "text and JSON without words must not load the aligner"

    body = post(aligned, "/transcribe/json", JFK, word_timestamps="true", **FAST).json()
    assert len(body["segments"]) >= 2
    for segment in body["segments"]:
        check_words(segment)
    assert aligner_health(aligned) == {**health, "state": "loaded", "loads": 1}

    subrip = post(aligned, "/transcribe/srt", JFK, **FAST)
    assert subrip.status_code == 200 and list(srt.parse(subrip.text))
    assert aligner_health(aligned)["loads"] == 1, "loaded once, kept with the model"


def test_a_jobs_words_time_its_subtitles(aligned: Server) -> None:
    """A job keeps its words: the SRT fetched later is cut on them, each cue from a word's start to a word's end."""
    job_id = post(aligned, "/transcribe/async", JFK, **FAST).json()["job_id"]
    wait_for(
        lambda: requests.get(f"{aligned.url}/status/{job_id}", timeout=10).json()["status"] == "completed",
        what="the job to complete",
    )
    url = f"{aligned.url}/status/{job_id}/result"
    body = requests.get(url, params={"format": "json", "word_timestamps": "true"}, timeout=10).json()
    for segment in body["segments"]:
        check_words(segment)
    starts = {round(w["start"], 3) for s in body["segments"] for w in s["words"]}
    # A segment without words (random weights also write runs of "/") shows its text from its start.
    starts |= {round(s["start"], 3) for s in body["segments"] if not s["words"]}
    ends = [round(w["end"], 3) for s in body["segments"] for w in s["words"]]
    ends += [round(s["end"], 3) for s in body["segments"] if not s["words"]]
    cues = list(srt.parse(requests.get(url, params={"format": "srt"}, timeout=10).text))
    assert cues
    for k, cue in enumerate(cues):
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert start in starts, f"cue {k} starts at {start}, at no word's start"
        assert any(abs(end - e) < 1e-3 or e < end for e in ends if e >= start), f"cue {k} ends before its words"
        if k + 1 < len(cues):
            assert end <= cues[k + 1].start.total_seconds()
    written = "".join("".join(s["text"].split()) for s in body["segments"])
    assert "".join("".join(c.content.split()) for c in cues) == written.replace("-->", "\u2192")


def test_verbose_json_word_granularity(aligned: Server) -> None:
    """/v1 words from the same word timings, inside the segments given beside them."""
    with open(JFK, "rb") as f:
        response = requests.post(
            aligned.url + "/v1/audio/transcriptions",
            files={"file": ("jfk.flac", f)},
            data={
                "response_format": "verbose_json",
                "timestamp_granularities[]": ["word", "segment"],
                **FAST,
            },
            timeout=300,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["words"] and body["segments"]
    floor = 0.0
    for word in body["words"]:
        assert floor - 1e-3 <= word["start"] <= word["end"]
        assert any(s["start"] - 1e-3 <= word["start"] and word["end"] <= s["end"] + 1e-3 for s in body["segments"])
        floor = word["end"]


def test_aligner_none(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--aligner none: /health says null, and subtitles are timed by the estimate."""
    server = Server(tiny_checkpoint, tmp_path / "data", ["--aligner", "none"]).start()
    try:
        assert aligner_health(server) is None
        subrip = post(server, "/transcribe/srt", JFK, **FAST)
        assert subrip.status_code == 200 and list(srt.parse(subrip.text))
    finally:
        server.stop()
