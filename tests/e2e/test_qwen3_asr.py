"""The Qwen3-ASR variant on every endpoint: a tiny Qwen3ASRForConditionalGeneration served through the CLI.

Its weights are random, so the language it names is random: identification is covered where the output is
parsed (tests/unit/test_qwen3_asr_output.py) and where it is held to the model's languages
(tests/integration/test_language_id.py); here the forced language, the prompt as context, chat's and
translation's refusals, /detect-language and every format are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import requests
import srt

from app.backends.qwen3_asr import language_names
from app.words import text_words
from tests.support import JFK, Server, assert_error, build_tiny, post, wait_for

pytestmark = pytest.mark.e2e

FAST = {"max_new_tokens": "24", "segment_duration": "4"}


@pytest.fixture(scope="module")
def asr(tiny_checkpoints: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The asr variant on the tiny Qwen3-ASR checkpoint, with the tiny aligner."""
    aligner = build_tiny(tmp_path_factory.mktemp("tiny-aligner"), "qwen3-aligner")
    checkpoint = tiny_checkpoints("qwen3-asr", "none")
    data = tmp_path_factory.mktemp("asr") / "data"
    server = Server(checkpoint, data, ["--variant", "asr", "--device", "cpu", "--aligner", str(aligner)]).start()
    yield server
    server.stop()


def test_health_and_models_name_the_family(asr: Server) -> None:
    health = requests.get(asr.url + "/health", timeout=10).json()
    assert health["status"] == "ok"
    assert (health["model"]["variant"], health["model"]["task"]) == ("asr", "transcribe")
    card = requests.get(asr.url + "/v1/models", timeout=10).json()["data"][0]
    assert card["family"] == "qwen3-asr" and card["variant"] == "asr"


@pytest.mark.parametrize("language", [None, "en", "he"], ids=["identified", "forced", "not-in-its-table"])
def test_native_json_and_text(asr: Server, language: str | None) -> None:
    """JSON with segments and words; a language outside the model's table is identified rather than refused."""
    fields = {**FAST, "word_timestamps": "true", **({"language": language} if language else {})}
    response = post(asr, "/transcribe/json", JFK, **fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["duration"] == pytest.approx(11.0, abs=0.05)
    # Every segment whose text has a word (random weights also write runs of "/") carries its words.
    assert len(body["segments"]) >= 2
    assert all(bool(s["words"]) == bool(text_words(s["text"])) for s in body["segments"])
    # Random weights identify nothing, so the transcript's language is the one asked for, if any.
    assert body["language"] == language
    text = post(asr, "/transcribe", JFK, prompt="Kennedy, Americans", **FAST)
    assert text.status_code == 200 and text.headers["Content-Disposition"] == "attachment; filename=jfk.txt"


def test_subtitles_and_a_job(asr: Server) -> None:
    subrip = post(asr, "/transcribe/srt", JFK, **FAST)
    assert subrip.status_code == 200 and list(srt.parse(subrip.text))
    vtt = post(asr, "/transcribe/vtt", JFK, **FAST)
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")

    job_id = post(asr, "/transcribe/async", JFK, **FAST).json()["job_id"]
    status = wait_for(
        lambda: (s := requests.get(f"{asr.url}/status/{job_id}", timeout=10).json())["status"] == "completed" and s,
        what="the job to complete",
    )
    result = requests.get(f"{asr.url}/status/{job_id}/result", params={"format": "srt"}, timeout=10)
    assert result.status_code == 200 and list(srt.parse(result.text))
    assert status["segments"]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's translations (whisper-1)
def test_openai_transcriptions_and_chat_refused(asr: Server) -> None:
    client = openai.OpenAI(base_url=asr.url + "/v1", api_key="unused", max_retries=0)
    with open(JFK, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            language="en",
            timestamp_granularities=["word", "segment"],
            extra_body=FAST,
        )
    assert verbose.language == "english" and verbose.segments and verbose.words
    with open(JFK, "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, extra_body=FAST)
    assert isinstance(plain.text, str)

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="asr", messages=[{"role": "user", "content": "hello"}])
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "model" and "does not chat" in error["message"]

    with open(JFK, "rb") as f, pytest.raises(openai.BadRequestError) as refused:
        client.audio.translations.create(model="whisper-1", file=f)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "model" and "only transcribes" in error["message"]

    # No vision tower: the native vision routes refuse images with a 400 that says so.
    for route in ("/describe", "/ocr"):
        seen = requests.post(asr.url + route, files={"file": ("a.png", b"\x89PNG\r\n\x1a\n")}, timeout=30)
        assert "no vision tower" in assert_error(seen, 400, "invalid_option")


def test_detect_language_is_the_models_own_identification_and_translate_is_refused(asr: Server) -> None:
    """The model's own `language <Name>` answer, among its 30 languages; /asr task=translate is a 400 on task."""
    with open(JFK, "rb") as f:
        r = requests.post(asr.url + "/detect-language", files={"audio_file": ("jfk.flac", f)}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language_code"] in language_names() and 0 < body["confidence"] <= 1
    assert body["detected_language"] == language_names()[body["language_code"]].lower()
    assert r.headers["Asr-Engine"] == "qwen3-asr"
    with open(JFK, "rb") as f:
        r = requests.post(asr.url + "/asr", params={"task": "translate"}, files={"audio_file": f}, timeout=120)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("task: ")
