"""The native HTTP API: routes parse and validate, then delegate to the pipeline and the job store."""

from __future__ import annotations

import io
import shutil
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.datastructures import FileStorage

from app import audio
from app.devices import gpu_memory
from app.errors import JobNotFound, QueueFull
from app.formats import render_srt, render_text, render_vtt, segments_json
from app.jobs import new_job_id
from app.options import TranscribeOptions, parse_options
from app.outputs import now_iso, save_transcript
from app.pipeline import Transcript
from app.services import Services
from app.uploads import current_services, keep_file, local_path, uploaded_file

bp = Blueprint("api", __name__)


@bp.get("/health")
def health() -> Response:
    """Liveness plus model, device and job figures; never waits on the model."""
    services = current_services()
    model = services.engine.status()
    gpu, allocated, reserved = gpu_memory()
    counts = services.jobs.counts()
    return jsonify(
        {
            "status": "ok",
            "model_loaded": model["state"] == "loaded",
            "gpu_available": gpu,
            "gpu_memory_allocated_gb": allocated,
            "gpu_memory_reserved_gb": reserved,
            "timestamp": now_iso(),
            "model": {
                **model,
                # Before the first load, the configured choice (e.g. "auto"); after it, the device in use.
                "device": model["device"] or services.settings.device,
                "checkpoint": services.settings.checkpoint_path,
                "variant": services.settings.variant,
                "task": services.settings.model_variant.task,
            },
            "jobs": {"queued": counts["queued"], "running": counts["processing"]},
        }
    )


def _stem(file: FileStorage) -> str:
    """The upload's name without directories or extension, for naming the attachment only."""
    raw = file.filename or ""
    name = PureWindowsPath(PurePosixPath(raw).name).name
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    # Control characters (NUL, escapes, newlines) cannot go into a Content-Disposition header.
    stem = "".join(char for char in stem if char.isprintable())
    return stem.strip()[:200] or "transcription"


def _options(services: Services) -> TranscribeOptions:
    """The request's options over the server's defaults, checked against what the model accepts."""
    settings = services.settings
    accepts_prompt = settings.model_variant.task != "caption"
    return parse_options(request.form, settings.default_options(), accepts_prompt=accepts_prompt)


def _run_sync(file: FileStorage) -> tuple[Transcript, str, str]:
    """Validate, transcribe the upload, write the output file; returns transcript, text and output name."""
    services = current_services()
    options = _options(services)
    with local_path(file) as path:
        transcript = services.pipeline.transcribe(path, options)
    text, output_file = save_transcript(services.outputs_dir, transcript)
    return transcript, text, output_file


def _attachment(body: str, filename: str, mimetype: str, output_file: str) -> Response:
    response = send_file(
        io.BytesIO(body.encode("utf-8")), mimetype=mimetype, as_attachment=True, download_name=filename
    )
    response.headers["X-Output-File"] = output_file
    return response


@bp.post("/transcribe")
def transcribe_text() -> Response:
    """The transcript as a text/plain attachment named after the upload."""
    file = uploaded_file()
    transcript, _, output_file = _run_sync(file)
    return _attachment(render_text(transcript), f"{_stem(file)}.txt", "text/plain", output_file)


@bp.post("/transcribe/json")
def transcribe_json() -> Response:
    """The transcript with its segments as JSON."""
    transcript, text, output_file = _run_sync(uploaded_file())
    return jsonify(
        {
            "status": "success",
            "transcription": text,
            "output_file": output_file,
            "timestamp": now_iso(),
            "duration": round(transcript.duration, 3),
            "language": transcript.language,
            "processing_time": round(transcript.processing_seconds, 3),
            "segments": segments_json(transcript),
        }
    )


@bp.post("/transcribe/srt")
def transcribe_srt() -> Response:
    """The transcript as a SubRip attachment, in subtitle-sized cues within each segment's span."""
    file = uploaded_file()
    transcript, _, output_file = _run_sync(file)
    return _attachment(render_srt(transcript), f"{_stem(file)}.srt", "application/x-subrip; charset=utf-8", output_file)


@bp.post("/transcribe/vtt")
def transcribe_vtt() -> Response:
    """The transcript as a WebVTT attachment, with the same cues as the SRT."""
    file = uploaded_file()
    transcript, _, output_file = _run_sync(file)
    return _attachment(render_vtt(transcript), f"{_stem(file)}.vtt", "text/vtt; charset=utf-8", output_file)


@bp.post("/transcribe/async")
def transcribe_async() -> tuple[Response, int]:
    """Queue a job; the upload is kept under the data dir until the job ends."""
    services = current_services()
    file = uploaded_file()
    options = _options(services)
    limit = services.settings.max_queued_jobs
    if services.jobs.counts()["queued"] >= limit:
        # Refused before the upload is kept for a job, so a full queue holds no more audio on disk.
        raise QueueFull(f"{limit} jobs are already queued; try again later", retry_after=60)
    job_id = new_job_id()
    audio_path = services.runner.audio_path(job_id)
    audio_path.parent.mkdir(parents=True)
    try:
        with local_path(file) as path:
            # Reject what is plainly not audio now, rather than as a failed job later.
            audio.probe(path)
            keep_file(path, audio_path)
        services.jobs.create(job_id, options, audio_path)
    except BaseException:
        shutil.rmtree(audio_path.parent, ignore_errors=True)
        raise
    services.runner.notify()
    body = {"job_id": job_id, "status": "queued", "status_url": f"/status/{job_id}"}
    return jsonify(body), 202


@bp.get("/status/<job_id>")
def job_status(job_id: str) -> Response:
    """A job's state and progress; the transcription once completed, the error once failed."""
    return jsonify(_job_body(job_id))


@bp.delete("/status/<job_id>")
def job_delete(job_id: str) -> Response:
    """Cancel a queued or running job; delete a finished one with its files."""
    runner = current_services().runner
    if runner.cancel(job_id) is not None:
        return jsonify(_job_body(job_id))
    if runner.delete(job_id):
        return jsonify({"job_id": job_id, "status": "deleted"})
    # Neither cancellable nor finished: it never existed, or another request deleted it just now.
    raise JobNotFound(f"no job with id {_shown(job_id)}")


def _shown(job_id: str) -> str:
    """A job id as error messages quote it: clipped, so a megabyte-long id is not echoed back."""
    return repr(job_id if len(job_id) <= 64 else job_id[:64] + "...")


def _job_body(job_id: str) -> dict[str, Any]:
    job = current_services().jobs.get(job_id)
    if job is None:
        raise JobNotFound(f"no job with id {_shown(job_id)}")
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status,
        "progress": {"segments_done": job.segments_done, "segments_total": job.segments_total},
        "created_at": job.created_at,
        "started_at": job.started_at,
    }
    if job.status == "completed" and job.result is not None:
        body.update(
            transcription=job.result["transcription"],
            output_file=job.output_file,
            completed_at=job.completed_at,
            duration=job.result["duration"],
            segments=job.result["segments"],
        )
    if job.status in ("failed", "cancelled"):
        body.update(error=job.error, completed_at=job.completed_at)
    return body
