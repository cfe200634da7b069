"""The native HTTP API: routes parse and validate, then delegate to the pipeline and the job store."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from pydantic import ValidationError
from werkzeug.datastructures import FileStorage

from app.checkpoints import missing
from app.devices import gpu_memory
from app.errors import InvalidOption, JobNotFound, QueueFull, ResultNotReady, ServiceError, quoted
from app.formats import CONTENT_TYPES, render_srt, render_text, render_vtt
from app.jobs import Job, new_job_id
from app.outputs import now_iso, save_transcript
from app.protocol import native as shapes
from app.protocol.native import RESULT_FORMATS, JobState
from app.protocol.validation import parse_flag
from app.remote_engine import RemoteEngine
from app.security import caller
from app.services import Services, current_services
from app.tracing import current_id
from app.transcript import Transcript
from app.uploads import client_check, form_options, keep_file, local_path, uploaded_file

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


@bp.get("/health")
def health() -> Response:
    """Liveness plus model, device, storage and job figures; never waits on the model, always 200 when up.

    status is "degraded" when the service is up but cannot do its work as it stands (the model cannot be
    loaded, the disk is full or unwritable); problems says why, in words an operator can act on.
    """
    services = current_services()
    model = services.engine.status()
    gpu, allocated, reserved = gpu_memory()
    problems: list[str] = []
    cluster = _cluster_health(services, problems)
    if model["state"] == "error" and cluster is None:
        problems.append(f"the model cannot be loaded: {model['error']}")
    elif model["state"] == "error" and cluster is not None and cluster.reachable:
        problems.append(f"no worker can load the model: {model['error']}")
    elif cluster is None and model["state"] == "unloaded" and (absent := missing(services.settings)) is not None:
        # Known before any load is tried: the checkpoint is not on this machine and may not be fetched.
        problems.append(f"the model cannot be loaded: {absent}")
    jobs: shapes.JobCounts | None = None
    try:
        counts = services.jobs.counts()
        jobs = shapes.JobCounts(queued=counts[JobState.QUEUED], running=counts[JobState.PROCESSING])
    except (sqlite3.Error, OSError, ServiceError) as exc:  # the job store is unreadable: report it, never fail
        problems.append(f"the job database cannot be read: {exc}")
    disk = shapes.StorageHealth(**services.disk.status(), error=services.runner.storage_error)
    if disk.low:
        shown = "unknown" if disk.free_bytes is None else f"{disk.free_bytes / 1024**2:.0f} MiB"
        reserve = disk.reserve_bytes / 1024**2
        problems.append(f"the data directory's disk is nearly full: {shown} free, {reserve:.0f} MiB kept in reserve")
    if disk.error:
        problems.append(f"jobs cannot be saved: {disk.error}")
    settings = services.settings
    body = shapes.Health(
        status="degraded" if problems else "ok",
        problems=problems,
        model_loaded=model["state"] == "loaded",
        gpu_available=gpu,
        gpu_memory_allocated_gb=allocated,
        gpu_memory_reserved_gb=reserved,
        timestamp=now_iso(),
        model=shapes.ModelHealth(
            **{
                **model,
                # Before the first load, the configured choice (e.g. "auto"); after it, the device in use.
                "device": model["device"] or settings.device,
            },
            checkpoint=settings.checkpoint_path,
            variant=settings.variant,
            task=settings.model_variant.task,
            download=None if (download := services.download.status()) is None else shapes.Download(**download),
            aligner=None
            if (aligner := services.engine.aligner_status()) is None
            else shapes.AlignerHealth(checkpoint=settings.aligner, **aligner),
        ),
        storage=disk,
        jobs=jobs,
        upload=shapes.UploadConfig(
            api_key_required=bool(settings.every_api_key),
            max_upload_bytes=settings.max_upload_size,
            max_audio_duration=settings.max_audio_duration,
            languages=shapes.LANGUAGES,
            translates=settings.model_variant.translates,
            takes_prompt=settings.model_variant.task != "caption",
            sees=settings.model_variant.sees,
            defaults=settings.default_options().to_dict(),
        ),
        cluster=cluster,
    )
    return jsonify(body.body())


def _cluster_health(services: Services, problems: list[str]) -> shapes.ClusterHealth | None:
    """Cluster mode's section of /health (None in one process); adds its problems: no broker, no worker."""
    engine = services.engine
    if not isinstance(engine, RemoteEngine):
        return None
    found = engine.cluster_status()
    if not found["reachable"]:
        problems.append(f"the broker cannot be reached: {found['error']}")
    elif not any(w.get("variant") == services.settings.variant for w in found["workers"]):
        problems.append(
            f"no worker of the {services.settings.variant} variant is running: start serve/worker.py (one per GPU) "
            "with this node's --variant against this broker"
        )
    problems.extend(engine.mismatches(found["workers"]))
    workers = []
    for worker in found["workers"]:
        try:
            workers.append(
                shapes.WorkerHealth(
                    **{name: worker[name] for name in shapes.WorkerHealth.model_fields if name in worker},
                    model_state=worker["model"]["state"],
                    model_error=worker["model"].get("error"),
                )
            )
        except ValidationError:  # a worker of another version: listed in the log, not here
            log.warning("worker %s's heartbeat does not fit /health; it is left out", worker.get("id"))
    return shapes.ClusterHealth(**{**found, "workers": workers})


def _stem(file: FileStorage) -> str:
    """The upload's name without directories or extension, for naming the attachment only."""
    raw = file.filename or ""
    name = PureWindowsPath(PurePosixPath(raw).name).name
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    # Control characters (NUL, escapes, newlines) cannot go into a Content-Disposition header.
    stem = "".join(char for char in stem if char.isprintable())
    return stem.strip()[:200] or "transcription"


def _run_sync(file: FileStorage, kind: str) -> tuple[Transcript, shapes.TranscribeOptions, str]:
    """Validate, transcribe the upload for an output of this kind, write the output file; returns transcript,
    options and output name. Subtitles, and JSON with word_timestamps, have their words aligned."""
    services = current_services()
    options = form_options()
    align = kind in ("srt", "vtt") or (kind == "json" and options.word_timestamps)
    with local_path(file) as path:
        transcript = services.pipeline.transcribe(path, options, check=client_check(), align=align)
    _, output_file = save_transcript(services.outputs_dir, transcript)
    return transcript, options, output_file


RENDERERS: dict[str, tuple[Callable[[Transcript], str], str]] = {
    "text": (render_text, "txt"),
    "srt": (render_srt, "srt"),
    "vtt": (render_vtt, "vtt"),
}


def _rendered(transcript: Transcript, kind: str, stem: str) -> Response:
    """A transcript rendered as text, SRT or VTT, as an attachment named stem plus the format's extension."""
    render, extension = RENDERERS[kind]
    body = io.BytesIO(render(transcript).encode("utf-8"))
    response = send_file(body, as_attachment=True, download_name=f"{stem}.{extension}")
    response.headers["Content-Type"] = CONTENT_TYPES[kind]
    return response


def _attachment(kind: str) -> Response:
    """Transcribe the upload and answer it rendered, as an attachment named after the upload."""
    file = uploaded_file()
    transcript, _, output_file = _run_sync(file, kind)
    response = _rendered(transcript, kind, _stem(file))
    response.headers["X-Output-File"] = output_file
    return response


@bp.post("/transcribe")
def transcribe_text() -> Response:
    """The transcript as a text/plain attachment named after the upload."""
    return _attachment("text")


@bp.post("/transcribe/json")
def transcribe_json() -> Response:
    """The transcript with its segments as JSON."""
    transcript, options, output_file = _run_sync(uploaded_file(), "json")
    body = shapes.Transcription(
        **dict(shapes.TranscriptResult.of(transcript, words=options.word_timestamps)),
        output_file=output_file,
        timestamp=now_iso(),
        processing_time=round(transcript.processing_seconds, 3),
    )
    return jsonify(body.body())


@bp.post("/transcribe/srt")
def transcribe_srt() -> Response:
    """The transcript as a SubRip attachment, in subtitle-sized cues within each segment's span."""
    return _attachment("srt")


@bp.post("/transcribe/vtt")
def transcribe_vtt() -> Response:
    """The transcript as a WebVTT attachment, with the same cues as the SRT."""
    return _attachment("vtt")


@bp.post("/transcribe/async")
def transcribe_async() -> tuple[Response, int]:
    """Queue a job; the upload is kept under the data dir until the job ends."""
    services = current_services()
    file = uploaded_file()
    options = form_options()
    limit = services.settings.max_queued_jobs
    if services.jobs.counts()["queued"] >= limit:
        # A cheap early answer that spares the probe; the check that counts is the one inside create().
        raise QueueFull(f"{limit} jobs are already queued; try again later", retry_after=60)
    job_id = new_job_id()
    audio_path = services.runner.audio_path(job_id)
    audio_path.parent.mkdir(parents=True)
    try:
        with local_path(file) as path:
            # Reject what is plainly not audio now, rather than as a failed job later.
            services.pipeline.probe(path)
            keep_file(path, audio_path)
        services.jobs.create(
            job_id,
            options,
            audio_path,
            owner=caller().owner,
            max_queued=limit,
            name=_stem(file),
            request_id=current_id(),
        )
    except BaseException:
        shutil.rmtree(audio_path.parent, ignore_errors=True)
        raise
    services.runner.notify()
    return jsonify(shapes.JobQueued(job_id=job_id, status_url=f"/status/{job_id}").body()), 202


@bp.get("/status/<job_id>")
def job_status(job_id: str) -> Response:
    """A job's state and progress; the transcription once completed, the error once failed."""
    return jsonify(_job_body(_visible_job(job_id)))


@bp.get("/status/<job_id>/result")
def job_result(job_id: str) -> Response:
    """A completed job's transcript in any format (txt, json, srt, vtt), named after its upload."""
    job = _visible_job(job_id)
    wanted = (request.args.get("format") or "txt").strip().lower()
    if wanted not in RESULT_FORMATS:
        raise InvalidOption("format", f"must be one of {', '.join(RESULT_FORMATS)}, got {quoted(wanted)}")
    if job.status != JobState.COMPLETED or job.result is None:
        raise ResultNotReady(f"job {quoted(job_id)} is {job.status}: its result exists once it has completed")
    result = shapes.TranscriptResult.model_validate(job.result)
    if wanted == "json":
        # Given, the query decides; absent, what the job was submitted with.
        words = _query_flag("word_timestamps", job.options.word_timestamps)
        body = json.dumps(shapes.TranscriptResult.of(result.transcript(), words=words).body(), ensure_ascii=False)
        # An attachment like the other formats, so that a browser's download keeps the upload's name.
        name = f"{job.name or job.id}.json"
        return send_file(io.BytesIO(body.encode()), mimetype="application/json", as_attachment=True, download_name=name)
    return _rendered(result.transcript(), "text" if wanted == "txt" else wanted, job.name or job.id)


@bp.delete("/status/<job_id>")
def job_delete(job_id: str) -> Response:
    """Cancel a queued or running job; delete it once it has finished (so a retried DELETE only cancels), unless
    cancel_only=true asks only to cancel."""
    runner = current_services().runner
    _visible_job(job_id)
    cancel_only = _query_flag("cancel_only", False)
    if runner.cancel(job_id) is not None or runner.is_running(job_id) or cancel_only:
        # Cancelled now, or cancelled earlier and still stopping: the job stays until its run has ended. Asked
        # only to cancel, a job that has finished is left as it is.
        return jsonify(_job_body(_visible_job(job_id)))
    if runner.delete(job_id):
        return jsonify(shapes.JobDeleted(job_id=job_id).body())
    # Another request deleted it just now.
    raise JobNotFound(f"no job with id {quoted(job_id)}")


def _query_flag(name: str, default: bool) -> bool:
    """A true/false query parameter; absent or empty, the default; anything else is a 400 naming it."""
    raw = (request.args.get(name) or "").strip()
    flag = parse_flag(raw) if raw else default
    if flag is None:
        raise InvalidOption(name, f"must be true or false, got {quoted(raw)}")
    return flag


def _visible_job(job_id: str) -> Job:
    """The job, if it exists for this caller: another key's job is a 404, exactly like a missing one."""
    job = current_services().jobs.get(job_id)
    if job is None or not caller().may_see(job.owner):
        raise JobNotFound(f"no job with id {quoted(job_id)}")
    return job


def _job_body(job: Job) -> dict[str, Any]:
    """A job's status body: its transcript once completed, its error once failed or cancelled."""
    fields: dict[str, Any] = {}
    if job.status == JobState.COMPLETED and job.result is not None:
        # The stored result is TranscriptResult's body; jobs of older versions kept the same fields.
        result = job.result
        fields.update(
            transcription=result["transcription"],
            output_file=job.output_file,
            completed_at=job.completed_at,
            duration=round(result["duration"], 3),
            # Words are kept for every job (its subtitles are timed by them) and shown when they were asked for.
            segments=[
                s if job.options.word_timestamps else {k: v for k, v in s.items() if k != "words"}
                for s in result["segments"]
            ],
        )
    if job.status in (JobState.FAILED, JobState.CANCELLED):
        fields.update(error=job.error, completed_at=job.completed_at)
    body = shapes.Job(
        job_id=job.id,
        request_id=job.request_id,
        status=JobState(job.status),
        progress=shapes.JobProgress(segments_done=job.segments_done, segments_total=job.segments_total),
        queue_position=current_services().jobs.queue_position(job.id) if job.status == JobState.QUEUED else None,
        created_at=job.created_at,
        started_at=job.started_at,
        **fields,
    )
    return body.body()
