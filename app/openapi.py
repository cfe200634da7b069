"""The OpenAPI 3.1 description of the native API, built from the code's own limits, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any, get_args

from flask import Blueprint, Response, jsonify

from app.backends import StopReason
from app.options import LANGUAGES, MAX_PROMPT_CHARS, RANGES, allowed
from app.settings import Settings
from app.uploads import current_services

# The version of the HTTP API this document describes; bump it when a route or a body changes.
API_VERSION = "0.1.0"
OPENAPI_VERSION = "3.1.0"
TITLE = "Qwen-Omni speech transcription service"

JOB_STATES = ("queued", "processing", "completed", "failed", "cancelled")
# Both schemes are alternatives: a request passes with either header when the server has keys configured.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKey": []}]

# What each numeric option does; its type and range come from app/options.py's RANGES.
_NUMERIC_MEANINGS = {
    "segment_duration": "Seconds per segment the audio is cut into; each cut moves back to the quietest 10 ms "
    "in the 2 s before it. 300 is the model's limit.",
    "max_new_tokens": "Most tokens generated per segment; a runaway guard also caps each segment at 8 tokens per "
    "second of audio plus 32.",
    "temperature": "Sampling temperature; 0 is greedy decoding.",
    "repetition_penalty": "Repetition penalty; 1 means none.",
}

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """This server's OpenAPI document (its defaults and variant shape the option schemas)."""
    return jsonify(openapi_spec(current_services().settings))


def _ref(kind: str, name: str) -> dict[str, str]:
    """A reference to a component of this document."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON content map for a response."""
    return {"application/json": {"schema": schema}}


def _number(value: float, integer: bool) -> float | int:
    """A range bound as JSON writes it: 1 rather than 1.0 for an integer field."""
    return int(value) if integer else value


def _option_properties(settings: Settings) -> dict[str, dict[str, Any]]:
    """The transcription options as multipart properties, one per TranscribeOptions field."""
    defaults = settings.default_options()
    properties: dict[str, dict[str, Any]] = {}
    for name, (low, high, integer) in RANGES.items():
        properties[name] = {
            "type": "integer" if integer else "number",
            "minimum": _number(low, integer),
            "maximum": _number(high, integer),
            "default": getattr(defaults, name),
            "description": f"{_NUMERIC_MEANINGS[name]} Sent as a form string: {allowed(name)}. "
            "Empty or absent means the server's default.",
        }
    properties["enable_s2t"] = {
        "type": "boolean",
        "default": defaults.enable_s2t,
        "description": "Convert Simplified to Traditional Chinese (OpenCC s2t). Accepts true/false, 1/0, yes/no, "
        "on/off, in any case.",
    }
    properties["language"] = {
        "type": "string",
        # Codes and English names are both accepted; empty or "auto" leaves the language to the model.
        "enum": ["", "auto", *LANGUAGES, *LANGUAGES.values()],
        "description": "The audio's language, as a code or an English name (case-insensitive), named in the "
        "prompt. Empty or absent: the model detects it."
        + (" Caption variants ignore it." if settings.model_variant.task == "caption" else ""),
    }
    if settings.model_variant.task != "caption":
        # Caption variants take no text instruction and refuse a non-empty prompt: it is not offered there.
        properties["prompt"] = {
            "type": "string",
            "maxLength": MAX_PROMPT_CHARS,
            "description": f"An instruction replacing 'Transcribe the audio into text.', at most "
            f"{MAX_PROMPT_CHARS} characters after trimming. Empty means the default instruction.",
        }
    return properties


def _upload_body(settings: Settings) -> dict[str, Any]:
    """The multipart body every transcribe route takes: the audio plus the options as form fields."""
    schema = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "string",
                # 3.1 names binary content with contentMediaType; format: binary is what 3.0-era tools look for.
                "contentMediaType": "application/octet-stream",
                "format": "binary",
                "description": "The audio, in any format ffmpeg reads (its first audio stream is used); at most "
                f"{settings.max_upload_size} bytes.",
            },
            **_option_properties(settings),
        },
    }
    return {
        "required": True,
        "description": "Multipart form: the audio in `file`, the options as form fields (all values are strings "
        "on the wire; their types and ranges are given below).",
        "content": {"multipart/form-data": {"schema": schema}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    """References to the shared error responses for the given statuses."""
    return {str(status): _ref("responses", _ERROR_RESPONSES[status][0]) for status in statuses}


# status -> (component name, when it is answered, the error codes its body may carry)
_ERROR_RESPONSES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: (
        "BadRequest",
        "The request is malformed: no `file` field, or an option out of range.",
        ("missing_file", "invalid_option", "invalid_request"),
    ),
    401: ("Unauthorized", "API keys are configured and the request carries none of them.", ("unauthorized",)),
    404: ("NotFound", "No job with that id (or it belongs to another API key).", ("job_not_found", "not_found")),
    408: (
        "RequestTimeout",
        "The request body arrived too slowly (a pause over the body timeout, or under 1 KiB/s on average).",
        ("request_timeout",),
    ),
    413: (
        "UploadTooLarge",
        "The upload is over the server's size limit, the form over its limits, or the audio longer than the "
        "server's duration limit.",
        ("upload_too_large", "audio_too_long"),
    ),
    415: (
        "UnsupportedAudio",
        "ffmpeg cannot decode the upload, it has no audio stream, or it holds no samples.",
        ("unsupported_audio",),
    ),
    429: (
        "RateLimited",
        "The client is over the server's rate limit; retry after Retry-After seconds.",
        ("rate_limited",),
    ),
    500: (
        "InferenceFailed",
        "The model raised while generating; the service keeps running.",
        ("inference_failed", "internal_error"),
    ),
    503: (
        "Unavailable",
        "The model cannot be loaded or a segment does not fit in memory (the next request tries again), the "
        "service is shutting down, the data directory cannot be written, or, for async jobs, the job queue is "
        "full (with Retry-After).",
        ("model_unavailable", "out_of_memory", "queue_full", "shutting_down", "storage_unavailable"),
    ),
    507: (
        "InsufficientStorage",
        "The data directory's disk is full, or would go below the server's free-space reserve with this upload.",
        ("insufficient_storage",),
    ),
}


def _retry_after(required: bool) -> dict[str, Any]:
    """The Retry-After header object."""
    return {
        "description": "Seconds to wait before trying again.",
        "required": required,
        "schema": {"type": "integer", "minimum": 0},
    }


def _error_response(status: int) -> dict[str, Any]:
    """One shared error response: the one error body, plus the headers that status carries."""
    _, description, codes = _ERROR_RESPONSES[status]
    response: dict[str, Any] = {
        "description": f"{description} Codes: {', '.join(codes)}.",
        "content": _json(_ref("schemas", "Error")),
    }
    if status in (429, 503, 507):
        # Always sent with 429; with 503 and 507 when trying again later can help.
        response["headers"] = {"Retry-After": _retry_after(required=status == 429)}
    elif status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"description": "The scheme to authenticate with.", "schema": {"type": "string"}}
        }
    return response


def _schemas() -> dict[str, Any]:
    """The bodies the native API answers with."""
    nullable_string = {"type": ["string", "null"]}
    timestamp = {"type": "string", "format": "date-time"}
    segment = {
        "type": "object",
        "required": ["index", "start", "end", "text", "stop_reason"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "start": {"type": "number", "minimum": 0, "description": "Seconds from the start of the audio."},
            "end": {"type": "number", "minimum": 0},
            "text": {"type": "string"},
            "stop_reason": {
                "enum": list(get_args(StopReason)),
                "description": "eos: the model finished; max_tokens: a token limit cut it; repetition: the model "
                "looped and the repeated tail was trimmed to one copy.",
            },
        },
    }
    job_fields = {
        "job_id": {"type": "string"},
        "status": {"enum": list(JOB_STATES)},
        "progress": {
            "type": "object",
            "required": ["segments_done", "segments_total"],
            "properties": {
                "segments_done": {"type": "integer", "minimum": 0},
                "segments_total": {"type": "integer", "minimum": 0},
            },
        },
        "created_at": timestamp,
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "transcription": {"type": "string"},
        "output_file": nullable_string,
        "duration": {"type": "number", "minimum": 0},
        "segments": {"type": "array", "items": _ref("schemas", "Segment")},
        "error": {**nullable_string, "description": "Why the job failed or was cancelled."},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {
                "status": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "Health": {
            "type": "object",
            "required": [
                "status",
                "model_loaded",
                "gpu_available",
                "gpu_memory_allocated_gb",
                "gpu_memory_reserved_gb",
                "timestamp",
                "model",
                "storage",
                "jobs",
                "problems",
            ],
            "properties": {
                "status": {
                    "enum": ["ok", "degraded"],
                    "description": "degraded: up, but the model cannot be loaded or the disk is full or unwritable; "
                    "problems says why. Always answered with 200.",
                },
                "problems": {"type": "array", "items": {"type": "string"}},
                "model_loaded": {"type": "boolean"},
                "gpu_available": {"type": "boolean"},
                "gpu_memory_allocated_gb": {"type": "number", "minimum": 0},
                "gpu_memory_reserved_gb": {"type": "number", "minimum": 0},
                "timestamp": timestamp,
                "model": {
                    "type": "object",
                    "required": ["state", "device", "checkpoint", "variant", "task"],
                    "properties": {
                        "state": {"enum": ["unloaded", "loading", "loaded", "error"]},
                        "error": {**nullable_string, "description": "Why the last load failed."},
                        "device": {"type": "string"},
                        "idle_timeout": {"type": "number", "minimum": 0},
                        "seconds_until_unload": {"type": ["number", "null"]},
                        "loads": {"type": "integer", "minimum": 0},
                        "batch_size": {"type": "integer", "minimum": 1},
                        "token_budget": {"type": "integer", "minimum": 1},
                        "oom_batch_splits": {"type": "integer", "minimum": 0},
                        "pending_segments": {"type": "integer", "minimum": 0},
                        "retry_load_in": {
                            "type": ["number", "null"],
                            "description": "Seconds until a failed load is tried again; null when none failed.",
                        },
                        "download": {
                            "type": ["object", "null"],
                            "description": "The checkpoint download in progress, if any.",
                            "properties": {
                                "checkpoint": {"type": "string"},
                                "bytes_done": {"type": "integer", "minimum": 0},
                                "bytes_total": {"type": "integer", "minimum": 0},
                                "percent": {"type": ["number", "null"]},
                            },
                        },
                        "checkpoint": {"type": "string"},
                        "variant": {"type": "string"},
                        "task": {"enum": ["transcribe", "caption"]},
                    },
                },
                "storage": {
                    "type": "object",
                    "required": ["free_bytes", "reserve_bytes", "low", "error"],
                    "properties": {
                        "free_bytes": {"type": ["integer", "null"], "description": "Free space of the data dir."},
                        "reserve_bytes": {"type": "integer", "minimum": 0},
                        "low": {"type": "boolean", "description": "Free space is below the reserve."},
                        "error": {**nullable_string, "description": "The last failure to write the job database."},
                    },
                },
                "jobs": {
                    "type": ["object", "null"],
                    "description": "Null when the job database cannot be read.",
                    "required": ["queued", "running"],
                    "properties": {
                        "queued": {"type": "integer", "minimum": 0},
                        "running": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
        "Segment": segment,
        "Transcription": {
            "type": "object",
            "required": [
                "status",
                "transcription",
                "output_file",
                "timestamp",
                "duration",
                "language",
                "processing_time",
                "segments",
            ],
            "properties": {
                "status": {"const": "success"},
                "transcription": {"type": "string"},
                "output_file": {"type": "string", "description": "Its copy under the data dir's outputs/."},
                "timestamp": timestamp,
                "duration": {"type": "number", "minimum": 0},
                "language": {**nullable_string, "description": "The language asked for; null when none was."},
                "processing_time": {"type": "number", "minimum": 0},
                "segments": {"type": "array", "items": _ref("schemas", "Segment")},
            },
        },
        "JobQueued": {
            "type": "object",
            "required": ["job_id", "status", "status_url"],
            "properties": {
                "job_id": {"type": "string"},
                "status": {"const": "queued"},
                "status_url": {"type": "string", "description": "Where to poll: /status/{job_id}."},
            },
        },
        "Job": {
            "type": "object",
            "description": "A completed job adds transcription, output_file, completed_at, duration and segments; "
            "a failed or cancelled one adds error and completed_at.",
            "required": ["job_id", "status", "progress", "created_at", "started_at"],
            "properties": job_fields,
        },
        "JobDeleted": {
            "type": "object",
            "required": ["job_id", "status"],
            "properties": {"job_id": {"type": "string"}, "status": {"const": "deleted"}},
        },
    }


def _transcribe_operation(
    settings: Settings, summary: str, operation_id: str, media_type: str, body: dict[str, Any], extension: str | None
) -> dict[str, Any]:
    """A synchronous transcribe route: the upload in, the transcript in one format out."""
    headers: dict[str, Any] = {}
    if extension is not None:
        # Attachments carry the output file's name in a header; the JSON route has it in the body.
        headers["Content-Disposition"] = {
            "description": f"attachment, named after the upload (meeting.mp3 -> meeting.{extension}).",
            "required": True,
            "schema": {"type": "string"},
        }
        headers["X-Output-File"] = {
            "description": "The transcript's file name under the data dir's outputs/.",
            "required": True,
            "schema": {"type": "string"},
        }
    return {
        "tags": ["transcribe"],
        "summary": summary,
        "operationId": operation_id,
        "requestBody": _upload_body(settings),
        "responses": {
            "200": {
                "description": "The transcript.",
                **({"headers": headers} if headers else {}),
                "content": {media_type: {"schema": body}},
            },
            **_errors(400, 401, 408, 413, 415, 429, 500, 503, 507),
        },
    }


def _job_id_parameter() -> dict[str, Any]:
    """The job id in /status/{job_id}."""
    return {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The id /transcribe/async answered with.",
        "schema": {"type": "string"},
    }


def _paths(settings: Settings) -> dict[str, Any]:
    """Every native route with its operations."""
    text = {"type": "string"}
    job_links = {
        "status": {
            "operationId": "getJob",
            "parameters": {"job_id": "$response.body#/job_id"},
            "description": "Poll the job.",
        },
        "cancel": {
            "operationId": "deleteJob",
            "parameters": {"job_id": "$response.body#/job_id"},
            "description": "Cancel the job, or delete it once finished.",
        },
    }
    return {
        "/health": {
            "get": {
                "tags": ["service"],
                "summary": "Liveness, model state, device, GPU memory, idle countdown and job counts",
                "description": "Never waits on the model; always open, even when API keys are configured.",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": {"description": "The service is up.", "content": _json(_ref("schemas", "Health"))}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["service"],
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                    },
                    **_errors(401, 429),
                },
            }
        },
        "/transcribe": {
            "post": _transcribe_operation(
                settings, "Transcribe to plain text (an attachment)", "transcribeText", "text/plain", text, "txt"
            )
        },
        "/transcribe/json": {
            "post": _transcribe_operation(
                settings,
                "Transcribe to JSON with timed segments",
                "transcribeJson",
                "application/json",
                _ref("schemas", "Transcription"),
                None,
            )
        },
        "/transcribe/srt": {
            "post": _transcribe_operation(
                settings, "Transcribe to SubRip subtitles", "transcribeSrt", "application/x-subrip", text, "srt"
            )
        },
        "/transcribe/vtt": {
            "post": _transcribe_operation(
                settings, "Transcribe to WebVTT subtitles", "transcribeVtt", "text/vtt", text, "vtt"
            )
        },
        "/transcribe/async": {
            "post": {
                "tags": ["jobs"],
                "summary": "Queue a transcription job",
                "description": "The upload is checked for audio now and kept until the job ends. Jobs survive "
                "restarts. A full queue answers 503 queue_full with Retry-After.",
                "operationId": "createJob",
                "requestBody": _upload_body(settings),
                "responses": {
                    "202": {
                        "description": "Queued.",
                        "content": _json(_ref("schemas", "JobQueued")),
                        "links": job_links,
                    },
                    **_errors(400, 401, 408, 413, 415, 429, 503, 507),
                },
            }
        },
        "/status/{job_id}": {
            "parameters": [_job_id_parameter()],
            "get": {
                "tags": ["jobs"],
                "summary": "A job's state and progress; its transcript once completed",
                "operationId": "getJob",
                "responses": {
                    "200": {"description": "The job.", "content": _json(_ref("schemas", "Job"))},
                    **_errors(401, 404, 429),
                },
            },
            "delete": {
                "tags": ["jobs"],
                "summary": "Cancel a queued or running job, or delete a finished one and its files",
                "operationId": "deleteJob",
                "responses": {
                    "200": {
                        "description": "Cancelled (the job, now with status cancelled) or deleted.",
                        "content": _json({"oneOf": [_ref("schemas", "Job"), _ref("schemas", "JobDeleted")]}),
                    },
                    **_errors(401, 404, 429),
                },
            },
        },
    }


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the native API, for a server running with these settings."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": "Speech to text on the Qwen-Omni family: plain text, JSON with timed segments, SRT and "
            "WebVTT, synchronously or as asynchronous jobs. Security applies only when the server has API keys "
            "configured (ASR_API_KEY); then every route but /health needs one, sent as `Authorization: Bearer "
            "<key>` or `X-API-Key: <key>`. An OpenAI-compatible API is served under /v1 (not described here).",
        },
        "tags": [
            {"name": "service", "description": "Health and this document."},
            {"name": "transcribe", "description": "Synchronous transcription in four formats."},
            {"name": "jobs", "description": "Asynchronous transcription jobs."},
        ],
        "security": SECURITY,
        "paths": _paths(settings),
        "components": {
            "schemas": _schemas(),
            "responses": {name: _error_response(status) for status, (name, _, _) in _ERROR_RESPONSES.items()},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key as a bearer token; needed only when the server has keys configured.",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "An API key in a header; needed only when the server has keys configured.",
                },
            },
        },
    }
