"""The app built by the factory, through Flask's test client, with faults injected at the backend seam."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from app.backends import Backend, GenerationRequest, GenerationResult
from app.settings import Settings
from tests.support import AISHELL


def broken_loader() -> Backend:
    """A checkpoint that cannot be loaded."""
    raise OSError("Qwen/Qwen2.5-Omni-7B-AWQ is not in the cache and --local-model forbids downloading it")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """An app whose model never loads."""
    flask_app = create_app(Settings(data_dir=str(tmp_path), device="cpu"), loader=broken_loader)
    yield flask_app
    flask_app.extensions["asr"].stop()


def test_model_that_cannot_load_gives_503_with_reason(app: Flask) -> None:
    """503 model_unavailable naming the cause; /health stays up and reports the error."""
    client = app.test_client()
    with open(AISHELL, "rb") as f:
        response = client.post("/transcribe/json", data={"file": (f, "a.wav")})
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "error" and body["error"]["code"] == "model_unavailable"
    assert "--local-model forbids downloading" in body["error"]["message"]
    health = client.get("/health").get_json()
    assert health["status"] == "degraded" and health["model_loaded"] is False
    assert any("not in the cache" in problem for problem in health["problems"])
    assert health["model"]["state"] == "error" and "not in the cache" in health["model"]["error"]
    assert not any((Path(app.extensions["asr"].settings.data_dir) / "uploads").iterdir())


def test_async_job_waits_while_the_model_cannot_load(app: Flask) -> None:
    """The job meets the failing load, goes back to the queue with its audio (attempt uncounted) and waits."""
    client = app.test_client()
    with open(AISHELL, "rb") as f:
        job = client.post("/transcribe/async", data={"file": (f, "a.wav")}).get_json()
    services = app.extensions["asr"]
    deadline = time.monotonic() + 30
    while services.engine.status()["state"] != "error":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    status = client.get(f"/status/{job['job_id']}").get_json()
    assert status["status"] in ("queued", "processing") and "error" not in status
    assert services.jobs.get(job["job_id"]).attempts <= 1
    assert services.runner.audio_path(job["job_id"]).exists()


class CrashOnPrompt:
    """A backend that raises for segments whose request carries the prompt "crash", and answers the rest."""

    device = "cpu"

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if any(r.prompt == "crash" for r in batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [GenerationResult(f"{len(r.samples)} samples", "eos", 1) for r in batch]

    def close(self) -> None:
        pass


def test_a_backend_crash_fails_that_job_or_request_and_the_next_runs(tmp_path: Path) -> None:
    """The crashing job is failed with the reason, the sync request gets 500 inference_failed; then both work."""
    flask_app = create_app(
        Settings(data_dir=str(tmp_path), device="cpu", job_workers=1), loader=lambda: CrashOnPrompt()
    )
    client = flask_app.test_client()
    try:

        def submit(prompt: str) -> str:
            with open(AISHELL, "rb") as f:
                return str(
                    client.post("/transcribe/async", data={"file": (f, "a.wav"), "prompt": prompt}).json["job_id"]
                )

        crashing, healthy = submit("crash"), submit("fine")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and client.get(f"/status/{healthy}").json["status"] != "completed":
            time.sleep(0.05)
        failed = client.get(f"/status/{crashing}").json
        assert failed["status"] == "failed" and "illegal memory access" in failed["error"]
        transcription = client.get(f"/status/{healthy}").json["transcription"]
        assert transcription.endswith(" samples") and int(transcription.split()[0]) > 60000
        with open(AISHELL, "rb") as f:
            response = client.post("/transcribe/json", data={"file": (f, "a.wav"), "prompt": "crash"})
        assert response.status_code == 500 and response.json["error"]["code"] == "inference_failed"
        assert "Traceback" not in response.get_data(as_text=True)
        with open(AISHELL, "rb") as f:
            assert client.post("/transcribe/json", data={"file": (f, "a.wav")}).status_code == 200
    finally:
        flask_app.extensions["asr"].stop()


def test_the_captioner_refuses_detection_and_translation_before_any_work(tmp_path: Path) -> None:
    """The Captioner takes no instruction: /detect-language, /asr task=translate and /v1 translations are 400s
    naming why, answered without loading the model."""
    settings = Settings(data_dir=str(tmp_path), device="cpu", variant="captioner")
    flask_app = create_app(settings, loader=broken_loader)
    client = flask_app.test_client()
    try:
        for route, field, data in (
            ("/detect-language", "audio_file", {}),
            ("/asr?task=translate", "audio_file", {}),
            ("/v1/audio/translations", "file", {"model": "captioner"}),
            ("/transcribe/json", "file", {"task": "translate"}),
        ):
            with open(AISHELL, "rb") as f:
                response = client.post(route, data={field: (f, "a.wav"), **data})
            assert response.status_code == 400, (route, response.get_json())
            assert "describes" in response.get_data(as_text=True), route
        assert flask_app.extensions["asr"].engine.status()["state"] == "unloaded"
    finally:
        flask_app.extensions["asr"].stop()


def test_health_tells_a_client_what_the_server_accepts(tmp_path: Path) -> None:
    """/health's upload section follows the settings and the variant: keys, limits, languages, defaults."""
    settings = Settings(
        data_dir=str(tmp_path / "a"), device="cpu", api_key="k1", max_upload_size=5_000_000, segment_duration=30
    )
    app = create_app(settings, loader=broken_loader)
    try:
        upload = app.test_client().get("/health").get_json()["upload"]
    finally:
        app.extensions["asr"].stop()
    assert upload["api_key_required"] is True and upload["max_upload_bytes"] == 5_000_000
    assert upload["languages"]["en"] == "English" and upload["translates"] and upload["takes_prompt"] and upload["sees"]
    assert upload["defaults"] == {**settings.default_options().to_dict(), "segment_duration": 30.0}
    assert upload["defaults"]["vad"] is True and upload["defaults"]["max_new_tokens"] == 8192
    captioner_settings = Settings(data_dir=str(tmp_path / "b"), device="cpu", variant="captioner", vad=False)
    captioner = create_app(captioner_settings, broken_loader)
    try:
        upload = captioner.test_client().get("/health").get_json()["upload"]
    finally:
        captioner.extensions["asr"].stop()
    assert upload["api_key_required"] is False and not upload["takes_prompt"] and not upload["translates"]
    assert upload["sees"] is False  # the Captioner takes no images
    assert upload["defaults"]["vad"] is False


def test_a_queued_job_shows_its_place_in_the_queue(app: Flask) -> None:
    """With the runners stopped, jobs wait in the order they came: positions 1, 2, 3; a cancelled one leaves
    the queue and the ones behind it move up."""
    app.extensions["asr"].runner.stop(timeout=5)
    client = app.test_client()
    ids = []
    for _ in range(3):
        with open(AISHELL, "rb") as f:
            ids.append(client.post("/transcribe/async", data={"file": (f, "a.wav")}).get_json()["job_id"])
    assert [client.get(f"/status/{job_id}").get_json()["queue_position"] for job_id in ids] == [1, 2, 3]
    assert client.delete(f"/status/{ids[0]}").get_json()["queue_position"] is None
    assert [client.get(f"/status/{job_id}").get_json()["queue_position"] for job_id in ids[1:]] == [1, 2]


def test_cancel_only_never_deletes_a_finished_job(app: Flask) -> None:
    """?cancel_only=true cancels a queued job, leaves a completed one as it is (the plain DELETE deletes it),
    and anything but a flag is a 400 naming the field."""
    services = app.extensions["asr"]
    services.runner.stop(timeout=5)
    client = app.test_client()
    ids = []
    for _ in range(2):
        with open(AISHELL, "rb") as f:
            ids.append(client.post("/transcribe/async", data={"file": (f, "a.wav")}).get_json()["job_id"])
    cancelled = client.delete(f"/status/{ids[0]}?cancel_only=true")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    claimed = services.jobs.claim_next()
    assert claimed is not None and claimed.id == ids[1]
    result = {"transcription": "", "duration": 1.0, "language": None, "segments": []}
    assert services.jobs.complete(ids[1], result, "out.txt")
    for _ in range(2):
        kept = client.delete(f"/status/{ids[1]}?cancel_only=true")
        assert kept.status_code == 200 and kept.get_json()["status"] == "completed"
    refused = client.delete(f"/status/{ids[1]}?cancel_only=maybe")
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_option"
    assert "cancel_only" in refused.get_json()["error"]["message"]
    assert client.delete(f"/status/{ids[1]}").get_json()["status"] == "deleted"
