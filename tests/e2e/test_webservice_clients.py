"""whisper-asr-webservice's POST /asr and /detect-language on the real server, called as its clients' own code
calls them.

Bazarr (subliminal_patch/providers/whisperai.py) sends raw PCM that it made with ffmpeg, with encode=false: to
/detect-language for a file whose audio language is unknown (reading detected_language and language_code without
looking at the status), then to /asr with output=srt, task=translate when the subtitle wanted is English and the
audio is not, storing the body as the subtitle file. Speakr (connectors/asr_endpoint.py) uploads the file itself
with output=json and parameters this model has no use for (diarize, min_speakers, hotwords, model). subgen
serves this same API to Bazarr and adds video_file, detect_lang_length and detect_lang_offset to it: those are
sent here as Bazarr-through-subgen setups send them, and ignored.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests
import srt
import webvtt

from app.protocol.native import LANGUAGES
from app.text import is_cjk, join_text
from tests.support import AISHELL, JFK, Server

pytestmark = pytest.mark.e2e

SECONDS = 11.0  # jfk.flac


def bazarr_pcm(path: Path) -> bytes:
    """The audio as Bazarr's encode_audio_stream makes it: s16le mono 16 kHz on ffmpeg's stdout."""
    cmd = ["ffmpeg", "-nostdin", "-threads", "0", "-i", str(path), "-map", "0:a:0"]
    cmd += ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", "16000", "-"]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def pcm() -> bytes:
    return bazarr_pcm(JFK)


def bazarr_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "Subliminal/2.1.0"
    return session


def test_bazarr_transcribes_raw_pcm_into_an_srt(server: Server, pcm: bytes) -> None:
    """Bazarr's exact call: the body is a valid SRT inside the audio, sent as whisper-asr-webservice sends it."""
    with bazarr_session() as session:
        r = session.post(
            f"{server.url}/asr",
            params={"task": "transcribe", "language": "en", "output": "srt", "encode": "false"},
            files={"audio_file": pcm},
            timeout=(5, 3600),
        )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    # requests names a bytes part after its field; whisper-asr-webservice keeps the name and adds the extension.
    assert r.headers["Content-Disposition"] == 'attachment; filename="audio_file.srt"'
    assert r.headers["Asr-Engine"] == "qwen2.5-omni"
    cues = list(srt.parse(r.content.decode("utf-8")))
    # Random weights may write no words at all; whatever they write is timed inside the audio.
    for cue in cues:
        assert 0 <= cue.start.total_seconds() < cue.end.total_seconds() <= SECONDS + 0.05
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))


def test_raw_pcm_keeps_its_length_and_rate(server: Server, pcm: bytes) -> None:
    """Without VAD the segments cover the audio: 11 s of PCM read at 16 kHz, not at another rate."""
    r = requests.post(
        f"{server.url}/asr",
        params={"output": "json", "encode": "false", "vad_filter": "false"},
        files={"audio_file": ("episode.mkv", pcm)},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = json.loads(r.text)
    assert body["segments"] and body["segments"][0]["start"] == 0
    assert body["segments"][-1]["end"] == pytest.approx(SECONDS, abs=0.05)


def test_odd_pcm_is_a_clear_415(server: Server) -> None:
    """A body that is not whole 16-bit samples is refused, not read as noise (and never a 500)."""
    r = requests.post(f"{server.url}/asr", params={"encode": "false"}, files={"audio_file": b"A"}, timeout=60)
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_audio" and "16-bit" in r.json()["error"]["message"]


def test_speakr_gets_whispers_json_and_its_extra_parameters_are_ignored(server: Server) -> None:
    """Speakr's call: the file with its name and type, json output, diarization and model parameters."""
    params = {
        "encode": "true", "task": "transcribe", "output": "json", "language": "en", "diarize": "true",
        "enable_diarization": "true", "min_speakers": "1", "max_speakers": "2", "initial_prompt": "Kennedy",
        "hotwords": "Americans", "model": "large-v3",
    }  # fmt: skip
    r = requests.post(
        f"{server.url}/asr",
        params=params,
        files={"audio_file": ("jfk.flac", JFK.read_bytes(), "audio/flac")},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Content-Disposition"] == 'attachment; filename="jfk.flac.json"'
    body = json.loads(r.text)
    assert set(body) == {"text", "segments", "language"} and body["language"] == "en"
    fields = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio"}
    for i, segment in enumerate(body["segments"]):
        assert set(segment) == fields | {"no_speech_prob"}, segment
        assert segment["id"] == i and segment["seek"] == round(segment["start"] * 100)
        assert segment["tokens"] == [] and 0 <= segment["start"] < segment["end"] <= SECONDS + 0.05
    assert body["text"] == join_text([s["text"] for s in body["segments"]])


def test_every_output_and_word_timestamps(server: Server) -> None:
    """txt a line per segment, tsv in integer milliseconds, vtt read by webvtt-py, json words when asked."""
    audio = JFK.read_bytes()

    def asr(**params: str) -> requests.Response:
        r = requests.post(f"{server.url}/asr", params=params, files={"audio_file": ("a.flac", audio)}, timeout=300)
        assert r.status_code == 200, r.text
        return r

    body = json.loads(asr(output="json", word_timestamps="true", vad_filter="false").text)
    # Each call samples afresh (the server's temperature is above 0): the formats are compared in shape only.
    txt = asr(output="txt", vad_filter="false").text
    assert txt == "" or (txt.endswith("\n") and all(line.strip() == line != "" for line in txt[:-1].split("\n")))
    tsv = asr(output="tsv", vad_filter="false").text.splitlines()
    assert tsv[0] == "start\tend\ttext"
    for row in tsv[1:]:
        start, end, text = row.split("\t")
        assert 0 <= int(start) < int(end) <= SECONDS * 1000 + 50 and text
    for segment in body["segments"]:
        for word in segment["words"]:
            # A space before each word, as Whisper writes them, except before a CJK character.
            assert word["word"].startswith(" ") or is_cjk(word["word"][0]), word
            assert word["word"].strip() and word["probability"] is None
            assert segment["start"] <= word["start"] <= word["end"] <= segment["end"]
    vtt = asr(output="vtt").text
    assert vtt.startswith("WEBVTT")
    for caption in webvtt.from_string(vtt):
        assert caption.start_in_seconds < caption.end_in_seconds <= SECONDS + 0.05


@pytest.mark.parametrize(
    ("params", "field"),
    [({"output": "docx"}, "output"), ({"task": "summarize"}, "task"), ({"language": "xx"}, "language")],
)
def test_bad_parameters_name_themselves(server: Server, params: dict[str, str], field: str) -> None:
    r = requests.post(f"{server.url}/asr", params=params, files={"audio_file": ("a.flac", b"x")}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_option" and r.json()["error"]["message"].startswith(f"{field}:")


def test_no_audio_file_is_a_400_naming_the_field(server: Server) -> None:
    r = requests.post(f"{server.url}/asr", files={"file": ("a.flac", JFK.read_bytes())}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "missing_file" and "'audio_file'" in r.json()["error"]["message"]


def test_empty_parameters_mean_their_defaults(server: Server) -> None:
    """httpx sends None as an empty value: output= is txt, encode= reads the file, vad_filter= the server's VAD."""
    params = {"output": "", "encode": "", "vad_filter": "", "language": "", "task": "", "initial_prompt": ""}
    r = requests.post(
        f"{server.url}/asr", params=params, files={"audio_file": ("jfk.flac", JFK.read_bytes())}, timeout=300
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Disposition"] == 'attachment; filename="jfk.flac.txt"'


def test_bazarr_detects_the_language_then_transcribes_or_translates(server: Server, pcm: bytes) -> None:
    """Bazarr's two calls for an untagged audio track: the detection Bazarr parses, then the subtitle it asks for
    (English subtitles: translate unless the audio is English)."""
    with bazarr_session() as session:
        r = session.post(
            f"{server.url}/detect-language",
            params={"encode": "false"},
            files={"audio_file": pcm},
            timeout=(5, 3600),
        )
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/json"
        body = r.json()
        assert set(body) == {"detected_language", "language_code", "confidence"}
        code = body["language_code"]
        # Bazarr builds a babelfish Language from the code (or the name): never empty, never und.
        assert code in LANGUAGES and body["detected_language"] == LANGUAGES[code].lower()
        assert 0 < body["confidence"] <= 1
        task = "transcribe" if code == "en" else "translate"
        r = session.post(
            f"{server.url}/asr",
            params={"task": task, "language": code, "output": "srt", "encode": "false"},
            files={"audio_file": pcm},
            timeout=(5, 3600),
        )
    assert r.status_code == 200, r.text
    for cue in srt.parse(r.content.decode("utf-8")):
        assert 0 <= cue.start.total_seconds() < cue.end.total_seconds() <= SECONDS + 0.05


def test_translate_answers_every_output(server: Server) -> None:
    """task=translate (German speech named, a context prompt) gives each output in its usual shape; subtitles of a
    translation are timed from the speech (no word alignment), inside the audio."""
    for output in ("txt", "json", "srt", "vtt", "tsv"):
        params = {"task": "translate", "language": "de", "initial_prompt": "Kennedy", "output": output}
        r = requests.post(
            f"{server.url}/asr", params=params, files={"audio_file": ("jfk.flac", JFK.read_bytes())}, timeout=300
        )
        assert r.status_code == 200, (output, r.text)
        assert r.headers["Content-Disposition"] == f'attachment; filename="jfk.flac.{output}"'
        if output == "json":
            body = json.loads(r.text)
            assert body["language"] == "de" and body["text"] == join_text([s["text"] for s in body["segments"]])
        if output == "srt":
            for cue in srt.parse(r.text):
                assert cue.end.total_seconds() <= SECONDS + 0.05


def test_subgen_style_detection_parameters_are_ignored(server: Server) -> None:
    """An encoded upload with subgen's extra parameters: answered from the file's first speech all the same."""
    params = {
        "encode": "true",
        "video_file": "/media/tv/show.mkv",
        "detect_lang_length": "30",
        "detect_lang_offset": "0",
    }
    r = requests.post(
        f"{server.url}/detect-language",
        params=params,
        files={"audio_file": ("aishell.wav", AISHELL.read_bytes(), "audio/wav")},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.json()["language_code"] in LANGUAGES


def test_detection_of_silence_is_a_clear_422_never_und(server: Server) -> None:
    """Two seconds of zeros as Bazarr would send them: no speech, so no language, said with a 4xx, not und."""
    r = requests.post(
        f"{server.url}/detect-language", params={"encode": "false"}, files={"audio_file": bytes(64000)}, timeout=60
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "no_speech"


@pytest.mark.parametrize("body", [b"", b"A", b"not audio at all, just text"])
def test_detection_of_what_is_not_audio_is_a_4xx(server: Server, body: bytes) -> None:
    for encode in ("true", "false"):
        r = requests.post(
            f"{server.url}/detect-language", params={"encode": encode}, files={"audio_file": body}, timeout=60
        )
        assert 400 <= r.status_code < 500 and "Traceback" not in r.text, (encode, body, r.text)
