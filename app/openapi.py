"""The OpenAPI 3.1 document of both APIs, generated from the protocol models, served at GET /openapi.json.

The schemas are pydantic's own (model_json_schema), so a field's name, type, range, default and description
have one source. This module adds only what models cannot say: which route answers which body, with which
statuses and headers. Error codes are read off the exception classes.
"""

from __future__ import annotations

import copy
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from app.errors import HTTP_CODES, OPENAI_STATUS, ServiceError
from app.protocol import native, openai, vision, webservice
from app.protocol.validation import allowed
from app.services import current_services
from app.settings import Settings

# The version of the HTTP API this document describes; bump it when a route or a body changes.
API_VERSION = "0.5.0"
OPENAPI_VERSION = "3.1.0"
TITLE = "Qwen-Omni speech transcription service"
# Both schemes are alternatives: a request passes with either header when the server has keys configured.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKey": []}]
_REF = "#/components/schemas/{model}"

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """This server's OpenAPI document (its defaults and variant shape the option schemas)."""
    return jsonify(openapi_spec(current_services().settings))


class _Schema(GenerateJsonSchema):
    """pydantic's JSON schema, without a title on every field and with bare consts ({"const": "error"})."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def literal_schema(self, schema: core_schema.LiteralSchema) -> dict[str, Any]:
        result = super().literal_schema(schema)
        if "const" in result:
            result.pop("type", None)
        return result


# (model, mode): requests are described as they are validated, responses as they are sent.
_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (native.Error, "serialization"),
    (native.Health, "serialization"),
    (native.Transcription, "serialization"),
    (native.JobQueued, "serialization"),
    (native.Job, "serialization"),
    (native.TranscriptResult, "serialization"),
    (native.JobDeleted, "serialization"),
    (openai.OpenAIError, "serialization"),
    (openai.TranscriptionJson, "serialization"),
    (openai.VerboseTranscription, "serialization"),
    (openai.TranscriptDelta, "serialization"),
    (openai.TranscriptDone, "serialization"),
    (openai.ModelList, "serialization"),
    (openai.ModelCard, "serialization"),
    (openai.ChatCompletionRequest, "validation"),
    (openai.ChatCompletion, "serialization"),
    (openai.ChatCompletionChunk, "serialization"),
    (openai.TranslationJson, "serialization"),
    (openai.VerboseTranslation, "serialization"),
    (webservice.AsrTranscription, "serialization"),
    (webservice.DetectedLanguage, "serialization"),
    (vision.OcrResult, "serialization"),
    (vision.Description, "serialization"),
]


def _components() -> dict[str, Any]:
    """Every model's schema, under its class name (a copy: each document is the caller's to keep)."""
    return copy.deepcopy(_model_schemas())


@functools.cache
def _model_schemas() -> dict[str, Any]:
    _, defs = models_json_schema(_MODELS, ref_template=_REF, schema_generator=_Schema)
    schemas: dict[str, Any] = defs["$defs"]
    _drop_needless_defaults(schemas)
    return schemas


def _drop_needless_defaults(node: Any) -> None:
    """A const's default is the const itself, and a response field's null default says nothing: both go."""
    if isinstance(node, dict):
        if "default" in node and (node["default"] is None or node["default"] == node.get("const", ...)):
            del node["default"]
        for value in node.values():
            _drop_needless_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_needless_defaults(value)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _form_property(schema: dict[str, Any]) -> dict[str, Any]:
    """A model property as a multipart field: form fields are never null (absent says none), so `X or null` is X."""
    schema = {k: v for k, v in schema.items() if not (k == "default" and v is None)}
    options = schema.get("anyOf")
    if options is None:
        return schema
    kept = [option for option in options if option.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


def _option_properties(settings: Settings) -> dict[str, Any]:
    """The transcription options as multipart properties, with this server's defaults."""
    defaults = settings.default_options()
    properties: dict[str, Any] = {}
    caption = settings.model_variant.task == "caption"
    for name, schema in native.TranscribeOptions.model_json_schema(schema_generator=_Schema)["properties"].items():
        if name == "prompt" and caption:
            # Caption variants take no text instruction and refuse a non-empty prompt: it is not offered there.
            continue
        prop = _form_property(schema)
        value = getattr(defaults, name)
        if value is not None:
            prop["default"] = value
        else:
            prop.pop("default", None)
        if (words := allowed(native.TranscribeOptions, name)) is not None:
            prop["description"] += f" Sent as a form string: {words}. Empty or absent means the server's default."
        if name == "language" and caption:
            prop["description"] += " Caption variants ignore it."
        asr = settings.model_variant.family == "qwen3-asr"
        if name == "prompt" and asr:
            prop["description"] += (
                " Qwen3-ASR variants take it as context (names and terms the audio holds), not as an instruction."
            )
        if name == "language" and asr:
            prop["description"] += " Qwen3-ASR variants identify it when it is left out."
        if name == "task" and not settings.model_variant.translates:
            prop["enum"] = ["transcribe"]
            prop["description"] += f" This variant cannot translate: {settings.model_variant.why_not_translate}."
        properties[name] = prop
    return properties


def _file_property(settings: Settings) -> dict[str, Any]:
    return {
        "type": "string",
        # 3.1 names binary content with contentMediaType; format: binary is what 3.0-era tools look for.
        "contentMediaType": "application/octet-stream",
        "format": "binary",
        "description": "The audio, in any format ffmpeg reads (its first audio stream is used); at most "
        f"{settings.max_upload_size} bytes.",
    }


def _upload_body(settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The multipart body of an upload route: the audio plus the options as form fields."""
    schema = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": _file_property(settings), **(extra or {}), **_option_properties(settings)},
    }
    return {
        "required": True,
        "description": "Multipart form: the audio in `file`, the options as form fields (all values are strings "
        "on the wire; their types and ranges are given below).",
        "content": {"multipart/form-data": {"schema": schema}},
    }


def _v1_upload_body(settings: Settings, translation: bool = False) -> dict[str, Any]:
    """/v1/audio/transcriptions and translations: OpenAI's fields, then the native options it accepts too (a
    translation reads neither timestamp_granularities[] nor stream)."""
    fields = openai.TranscriptionRequest.model_json_schema(schema_generator=_Schema, by_alias=True)
    kept = ("model", "response_format") if translation else tuple(fields["properties"])
    extra = {name: _form_property(schema) for name, schema in fields["properties"].items() if name in kept}
    body = _upload_body(settings, extra)
    # Each route does one task (the translations route whatever the form says; the transcriptions route refuses
    # translate, which has a route of its own).
    del body["content"]["multipart/form-data"]["schema"]["properties"]["task"]
    return body


# status -> what it means; the codes a body may carry are read off the exception classes.
_STATUS_MEANINGS = {
    400: "The request is malformed: no `file` field, an option out of range, a body that is not what the route takes.",
    401: "API keys are configured and the request carries none of them.",
    404: "No such job (or it belongs to another API key), model or route.",
    408: "The request body arrived too slowly (a pause over the body timeout, or under 1 KiB/s on average).",
    413: "The upload is over the server's size limit, the form over its limits, or the audio longer than the "
    "server's duration limit.",
    415: "ffmpeg cannot decode the upload, it has no audio stream, or it holds no samples.",
    422: "The audio decodes but holds no speech to identify a language in.",
    429: "The client is over the server's rate limit; retry after Retry-After seconds.",
    500: "The model raised while generating; the service keeps running.",
    503: "The model cannot be loaded or a segment does not fit in memory (the next request tries again), the "
    "service is shutting down, the data directory cannot be written, for async jobs the job queue is full, or, in "
    "cluster mode, the broker (Redis) cannot be reached or no worker is running.",
    507: "The data directory's disk is full, or would go below the server's free-space reserve with this upload.",
}
_RESPONSE_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    408: "RequestTimeout",
    413: "UploadTooLarge",
    415: "UnsupportedAudio",
    422: "NoSpeech",
    429: "RateLimited",
    500: "InferenceFailed",
    503: "Unavailable",
    507: "InsufficientStorage",
}


def _codes(openai_api: bool) -> dict[int, list[str]]:
    """The error codes each status can carry, from the exception classes and werkzeug's own refusals."""
    found: dict[int, set[str]] = defaultdict(set)
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found[cls.status].add(cls.code)
    for status, code in HTTP_CODES.items():
        found[status].add(code)
    if openai_api:
        for status, mapped in OPENAI_STATUS.items():
            found[mapped] |= found.pop(status, set())
    return {status: sorted(codes) for status, codes in found.items()}


def _retry_after(required: bool) -> dict[str, Any]:
    return {
        "description": "Seconds to wait before trying again.",
        "required": required,
        "schema": {"type": "integer", "minimum": 0},
    }


def _error_responses(openai_api: bool) -> dict[str, Any]:
    """The shared error responses of one API: its error body, the codes, the headers each status carries."""
    codes = _codes(openai_api)
    prefix = "OpenAI" if openai_api else ""
    responses = {}
    for status, meaning in _STATUS_MEANINGS.items():
        if openai_api and status in OPENAI_STATUS:
            continue
        response: dict[str, Any] = {
            "description": f"{meaning} Codes: {', '.join(codes.get(status, []))}.",
            "content": {"application/json": {"schema": _ref("OpenAIError" if openai_api else "Error")}},
        }
        if status in (429, 503, 507):
            # Always sent with 429; with 503 and 507 when trying again later can help.
            response["headers"] = {"Retry-After": _retry_after(required=status == 429)}
        elif status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"description": "The scheme to authenticate with.", "schema": {"type": "string"}}
            }
        responses[prefix + _RESPONSE_NAMES[status]] = response
    return responses


def _errors(*statuses: int, openai_api: bool = False) -> dict[str, Any]:
    prefix = "OpenAI" if openai_api else ""
    return {str(status): {"$ref": f"#/components/responses/{prefix}{_RESPONSE_NAMES[status]}"} for status in statuses}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


_TEXT = {"type": "string"}


def _events(description: str, *payloads: str, done: bool = False) -> dict[str, Any]:
    """A text/event-stream response: the schema of one event (OpenAPI 3.1 reads `schema` so), whose data is
    JSON of one of the payload components, or OpenAI's error envelope for a failure after the stream began.
    done: the stream ends with `data: [DONE]`, as OpenAI's chat streams do.
    """
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"oneOf": [_ref(name) for name in (*payloads, "OpenAIError")]},
    }
    data = {"anyOf": [{"const": "[DONE]"}, json_data]} if done else json_data
    return {
        "schema": {
            "type": "object",
            "description": f"Server-sent events, `data: <JSON>` separated by blank lines: {description}",
            "required": ["data"],
            "properties": {"event": {"const": "message"}, "data": data},
        }
    }


@dataclass(frozen=True)
class _Operation:
    """One route and method, as the document describes it."""

    path: str
    method: str
    operation_id: str
    summary: str
    tag: str
    responses: dict[str, Any]
    request: dict[str, Any] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        operation: dict[str, Any] = {"tags": [self.tag], "summary": self.summary, "operationId": self.operation_id}
        if self.description:
            operation["description"] = self.description
        if self.request is not None:
            operation["requestBody"] = self.request
        operation["responses"] = self.responses
        return {**operation, **self.extra}


def _header(description: str) -> dict[str, Any]:
    """A string header every such response carries."""
    return {"description": description, "required": True, "schema": {"type": "string"}}


def _attachment_headers(disposition: str) -> dict[str, Any]:
    """Attachments carry their file names in headers (disposition says which); the JSON route has them in the body."""
    return {
        "Content-Disposition": _header(disposition),
        "X-Output-File": _header("The transcript's file name under the data dir's outputs/."),
    }


_SYNC_ERRORS = (400, 401, 408, 413, 415, 429, 500, 503, 507)
_V1_UPLOAD_ERRORS = (400, 401, 404, 408, 413, 429, 500, 503, 507)


def _transcribe(settings: Settings, path: str, op: str, summary: str, media: str, extension: str | None) -> _Operation:
    schema = _ref("Transcription") if extension is None else _TEXT
    ok: dict[str, Any] = {"description": "The transcript.", "content": {media: {"schema": schema}}}
    if extension is not None:
        disposition = f"attachment, named after the upload (meeting.mp3 -> meeting.{extension})."
        ok = {"description": "The transcript.", "headers": _attachment_headers(disposition), **ok}
    responses = {"200": ok, **_errors(*_SYNC_ERRORS)}
    return _Operation(path, "post", op, summary, "transcribe", responses, _upload_body(settings))


def _native_operations(settings: Settings) -> list[_Operation]:
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
    return [
        _Operation(
            "/health",
            "get",
            "health",
            "Liveness, model state, device, GPU memory, idle countdown and job counts",
            "service",
            {"200": {"description": "The service is up.", "content": _json("Health")}},
            description="Never waits on the model; always open, even when API keys are configured.",
            extra={"security": []},
        ),
        _Operation(
            "/metrics",
            "get",
            "metrics",
            "Prometheus metrics: requests, stage times, audio, tokens, batches, model state, jobs",
            "service",
            {
                "200": {
                    "description": "Prometheus' text exposition format (version 0.0.4).",
                    "content": {"text/plain": {"schema": _TEXT}},
                },
                **_errors(401, 429),
            },
            description="Needs an API key like every route but /health, unless the server runs with "
            "--metrics-public (then it needs none and is not rate limited).",
        ),
        _Operation(
            "/openapi.json",
            "get",
            "openapi",
            "This document",
            "service",
            {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {
                        "application/json": {"schema": {"type": "object", "required": ["openapi", "info", "paths"]}}
                    },
                },
                **_errors(401, 429),
            },
        ),
        _transcribe(
            settings, "/transcribe", "transcribeText", "Transcribe to plain text (an attachment)", "text/plain", "txt"
        ),
        _transcribe(
            settings,
            "/transcribe/json",
            "transcribeJson",
            "Transcribe to JSON with timed segments",
            "application/json",
            None,
        ),
        _transcribe(
            settings,
            "/transcribe/srt",
            "transcribeSrt",
            "Transcribe to SubRip subtitles",
            "application/x-subrip",
            "srt",
        ),
        _transcribe(settings, "/transcribe/vtt", "transcribeVtt", "Transcribe to WebVTT subtitles", "text/vtt", "vtt"),
        _Operation(
            "/transcribe/async",
            "post",
            "createJob",
            "Queue a transcription job",
            "jobs",
            {
                "202": {"description": "Queued.", "content": _json("JobQueued"), "links": job_links},
                **_errors(400, 401, 408, 413, 415, 429, 503, 507),
            },
            _upload_body(settings),
            description="The upload is checked for audio now and kept until the job ends. Jobs survive restarts. "
            "A full queue answers 503 queue_full with Retry-After.",
        ),
        _Operation(
            "/status/{job_id}",
            "get",
            "getJob",
            "A job's state and progress; its transcript once completed",
            "jobs",
            {"200": {"description": "The job.", "content": _json("Job")}, **_errors(401, 404, 429, 503)},
        ),
        _Operation(
            "/status/{job_id}/result",
            "get",
            "getJobResult",
            "A completed job's transcript as text, JSON, SRT or WebVTT",
            "jobs",
            {
                "200": {
                    "description": "The transcript, as an attachment named after the upload.",
                    "content": {
                        "text/plain": {"schema": _TEXT},
                        "application/json": {"schema": _ref("TranscriptResult")},
                        "application/x-subrip": {"schema": _TEXT},
                        "text/vtt": {"schema": _TEXT},
                    },
                },
                **_errors(400, 401, 404, 429, 503),
            },
            description="404 job_not_found for an unknown job, result_not_ready until it has completed (and for "
            "a failed or cancelled one). Subtitles are timed by the words the job kept.",
            extra={
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "description": "The format: txt (the default), json, srt or vtt.",
                        "schema": {"type": "string", "enum": list(native.RESULT_FORMATS), "default": "txt"},
                    },
                    {
                        "name": "word_timestamps",
                        "in": "query",
                        "description": "json: each segment's words (true) or none (false); absent, as the job "
                        "was submitted (its word_timestamps option).",
                        "schema": {"type": "boolean"},
                    },
                ]
            },
        ),
        _Operation(
            "/status/{job_id}",
            "delete",
            "deleteJob",
            "Cancel a queued or running job, or delete a finished one and its files",
            "jobs",
            {
                "200": {
                    "description": "Cancelled (the job, now with status cancelled) or deleted; with cancel_only, "
                    "a job that had already finished, as it is.",
                    "content": {"application/json": {"schema": {"oneOf": [_ref("Job"), _ref("JobDeleted")]}}},
                },
                **_errors(400, 401, 404, 429, 503),
            },
            extra={
                "parameters": [
                    {
                        "name": "cancel_only",
                        "in": "query",
                        "description": "true: cancel a queued or running job, but never delete one that has "
                        "finished (it is answered as it is), so a cancel that crosses the job's end keeps its "
                        "result.",
                        "schema": {"type": "boolean", "default": False},
                    }
                ]
            },
        ),
    ]


def _v1_operations(settings: Settings) -> list[_Operation]:
    transcription_media = {
        "application/json": {
            "schema": {"oneOf": [_ref("TranscriptionJson"), _ref("VerboseTranscription")]},
        },
        "text/plain": {"schema": _TEXT},
        "application/x-subrip": {"schema": _TEXT},
        "text/vtt": {"schema": _TEXT},
        "text/event-stream": _events(
            "one TranscriptDelta per finished segment, then one TranscriptDone; a failure after the stream began "
            "is one OpenAIError event.",
            "TranscriptDelta",
            "TranscriptDone",
        ),
    }
    translation_media = {
        "application/json": {"schema": {"oneOf": [_ref("TranslationJson"), _ref("VerboseTranslation")]}},
        "text/plain": {"schema": _TEXT},
        "application/x-subrip": {"schema": _TEXT},
        "text/vtt": {"schema": _TEXT},
    }
    chat_media = {
        "application/json": {"schema": _ref("ChatCompletion")},
        "text/event-stream": _events(
            "ChatCompletionChunk events, then `data: [DONE]`; a failure after the stream began is one OpenAIError "
            "event.",
            "ChatCompletionChunk",
            done=True,
        ),
    }
    return [
        _Operation(
            "/v1/models",
            "get",
            "listModels",
            "The one model this server serves",
            "openai",
            {
                "200": {"description": "The model list.", "content": _json("ModelList")},
                **_errors(401, 429, openai_api=True),
            },
        ),
        _Operation(
            "/v1/models/{name}",
            "get",
            "getModel",
            "The served model, by its id, variant name or an OpenAI alias",
            "openai",
            {
                "200": {"description": "The model.", "content": _json("ModelCard")},
                **_errors(401, 404, 429, openai_api=True),
            },
            extra={"parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]},
        ),
        _Operation(
            "/v1/audio/transcriptions",
            "post",
            "createTranscription",
            "OpenAI's transcription endpoint: every response_format, and server-sent events with stream=true",
            "openai",
            {
                "200": {"description": "The transcript in the format asked for.", "content": transcription_media},
                **_errors(*_V1_UPLOAD_ERRORS, openai_api=True),
            },
            _v1_upload_body(settings),
            description="An undecodable upload is a 400 with code unsupported_audio, as OpenAI answers.",
        ),
        _Operation(
            "/v1/audio/translations",
            "post",
            "createTranslation",
            "OpenAI's translation endpoint: English text from speech in any language, every response_format",
            "openai",
            {
                "200": {"description": "The English text in the format asked for.", "content": translation_media},
                **_errors(*_V1_UPLOAD_ERRORS, openai_api=True),
            },
            _v1_upload_body(settings, translation=True),
            description="The Omni variants translate; Qwen3-ASR and the Captioner answer 400 (param model). "
            "language names the speech's language; prompt is context (names and terms), not an instruction. "
            "Subtitles are timed from each segment's speech, not aligned word by word.",
        ),
        _Operation(
            "/v1/chat/completions",
            "post",
            "createChatCompletion",
            "OpenAI chat completions with text and input_audio parts, answered by the loaded model",
            "openai",
            {
                "200": {"description": "The answer, whole or streamed.", "content": chat_media},
                **_errors(*_V1_UPLOAD_ERRORS, openai_api=True),
            },
            {
                "required": True,
                "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
            },
        ),
    ]


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A model's fields as optional query parameters (strings on the wire, typed as the model reads them)."""
    schema = model.model_json_schema(schema_generator=_Schema)
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _form_property(prop)
        description = prop.pop("description", "")
        parameters.append({"name": name, "in": "query", "required": False, "description": description, "schema": prop})
    return parameters


def _webservice_operations(settings: Settings) -> list[_Operation]:
    body = {
        "required": True,
        "description": "Multipart form: the audio in `audio_file`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["audio_file"],
                    "properties": {"audio_file": _file_property(settings)},
                }
            }
        },
    }
    headers = {
        **_attachment_headers("attachment, the upload's name plus the output's extension (meeting.mp3.srt)."),
        "Asr-Engine": _header("The model family that answered."),
    }
    ok = {
        "description": "The result in the asked output, always sent as text/plain (JSON included), as "
        "whisper-asr-webservice sends it; output=json is the AsrTranscription object.",
        "headers": headers,
        "content": {"text/plain": {"schema": {"anyOf": [_TEXT, _ref("AsrTranscription")]}}},
    }
    return [
        _Operation(
            "/asr",
            "post",
            "asr",
            "whisper-asr-webservice's transcription: txt, vtt, srt, tsv or json",
            "webservice",
            {"200": ok, **_errors(*_SYNC_ERRORS)},
            body,
            description="For Bazarr, subgen, Speakr and other whisper-asr-webservice clients. Query parameters "
            "this model cannot honour (diarize, min_speakers, max_speakers, hotwords, video_file, ...) are "
            "accepted and ignored.",
            extra={"parameters": _query_parameters(webservice.AsrQuery)},
        ),
        _Operation(
            "/detect-language",
            "post",
            "detectLanguage",
            "whisper-asr-webservice's language detection, from the first 30 s of speech",
            "webservice",
            {
                "200": {
                    "description": "The language, with the model's confidence.",
                    "headers": {"Asr-Engine": headers["Asr-Engine"]},
                    "content": _json("DetectedLanguage"),
                },
                **_errors(400, 401, 408, 413, 415, 422, 429, 500, 503, 507),
            },
            body,
            description="Qwen3-ASR names the language as it does before every transcript; the Omni models are "
            "asked which language they hear and may answer only with one of the languages they transcribe. "
            "A file without speech is 422 no_speech, never an empty or und code. The Captioner answers 400.",
            extra={"parameters": _query_parameters(webservice.DetectLanguageQuery)},
        ),
    ]


_VISION_ERRORS = (400, 401, 404, 408, 413, 415, 429, 500, 503, 507)


def _vision_body(
    settings: Settings, takes: str, fields: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The multipart body of a vision route: the file (or a media_id) and the route's form fields."""
    schema = vision.VisionForm.model_json_schema(schema_generator=_Schema)["properties"]
    file = {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "format": "binary",
        "description": f"{takes}; at most {settings.max_upload_size} bytes. Leave it out to ask about media_id.",
    }
    properties = {"file": file, **{name: _form_property(schema[name]) for name in ("media_id", *fields)}}
    return {
        "required": True,
        "description": "Multipart form: the file in `file`, or the `media_id` of one sent before.",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": list(required), "properties": properties}}
        },
    }


def _vision_operations(settings: Settings) -> list[_Operation]:
    sees = settings.model_variant.sees
    refusal = "" if sees else f" This server's variant answers 400: {settings.model_variant.why_blind}."
    image = "An image: PNG, JPEG, WebP, GIF (first frame), BMP or TIFF"
    media_note = (
        " Images are scaled, aspect kept, to multiples of 28 pixels with at most 12,845,056 pixels (the processor's "
        "own bounds); videos are sampled at 2 frames per second (4 to 768 frames, fewer when the context is short), "
        "their sound not used. The answer's media_id asks more about the same file for an hour after its last use."
    )
    ocr_ok = {
        "description": "The text: a text/plain attachment, or OcrResult with ?format=json.",
        # Only the text answer carries them: the JSON one has both in its body.
        "headers": {
            "Content-Disposition": {
                **_header("attachment; filename=ocr_result_<YYYYMMDDHHMMSS>.txt (text only)."),
                "required": False,
            },
            "X-Media-Id": {**_header("The media_id of the image (text only)."), "required": False},
        },
        "content": {"text/plain": {"schema": _TEXT}, **_json("OcrResult")},
    }
    return [
        _Operation(
            "/ocr",
            "post",
            "ocr",
            "All the readable text of an image, plain, without commentary",
            "vision",
            {"200": ocr_ok, **_errors(*_VISION_ERRORS)},
            _vision_body(settings, image, ("max_new_tokens", "temperature")),
            description="Greedy decoding unless temperature is sent." + media_note + refusal,
            extra={"parameters": _query_parameters(vision.OcrQuery)},
        ),
        _Operation(
            "/describe",
            "post",
            "describe",
            "Answer a question about an image or a video (default: describe it)",
            "vision",
            {"200": {"description": "The answer.", "content": _json("Description")}, **_errors(*_VISION_ERRORS)},
            _vision_body(
                settings,
                f"{image}; or a video: MP4, WebM, MOV, MKV, AVI",
                ("question", "max_new_tokens", "temperature"),
            ),
            description="A follow-up with media_id is answered with the earlier questions and answers about that "
            "file (the last 8) as context." + media_note + refusal,
        ),
        _Operation(
            "/describe-region",
            "post",
            "describeRegion",
            "Describe what is inside a rectangle of an image",
            "vision",
            {"200": {"description": "The answer.", "content": _json("Description")}, **_errors(*_VISION_ERRORS)},
            _vision_body(settings, image, ("box", "question", "max_new_tokens", "temperature"), required=("box",)),
            description="box is x1,y1,x2,y2 in the uploaded image's pixels: exactly four numbers separated by commas, "
            "x1 < x2, y1 < y2, inside the image; anything else is 400 naming box and the rule. The model sees the "
            "whole image with the box drawn in red, then a close-up of the box with 15% of its size around it as "
            "context." + media_note + refusal,
        ),
    ]


def _paths(settings: Settings) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    operations = [
        *_native_operations(settings),
        *_vision_operations(settings),
        *_v1_operations(settings),
        *_webservice_operations(settings),
    ]
    for operation in operations:
        item = paths.setdefault(operation.path, {})
        if operation.path.startswith("/status/{job_id}"):
            item["parameters"] = [
                {
                    "name": "job_id",
                    "in": "path",
                    "required": True,
                    "description": "The id /transcribe/async answered with.",
                    "schema": {"type": "string"},
                }
            ]
        item[operation.method] = operation.document()
    return paths


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of both APIs, for a server running with these settings."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": "Speech to text on the Qwen-Omni family: plain text, JSON with timed segments, SRT and "
            "WebVTT, synchronously or as asynchronous jobs, and an OpenAI-compatible API under /v1 "
            "(transcriptions, models, chat with audio, images and video), and OCR and descriptions of images and "
            "video. Security applies only when the server has API keys "
            "configured (ASR_API_KEY); then every route but /health needs one, sent as `Authorization: Bearer "
            "<key>` or `X-API-Key: <key>`. Errors on /v1 use OpenAI's envelope. Every response of the service "
            "carries an `X-Request-ID` header: the client's own (a token of up to 128 letters, digits and `._:-`) "
            "or a new one; error bodies, async jobs and the server's log lines carry the same id.",
        },
        "tags": [
            {"name": "service", "description": "Health and this document."},
            {"name": "transcribe", "description": "Synchronous transcription in four formats."},
            {"name": "jobs", "description": "Asynchronous transcription jobs."},
            {"name": "openai", "description": "The OpenAI-compatible API."},
            {"name": "webservice", "description": "whisper-asr-webservice's API, for its clients."},
            {"name": "vision", "description": "Images and video: OCR, descriptions, regions, follow-up questions."},
        ],
        "security": SECURITY,
        "paths": _paths(settings),
        "components": {
            "schemas": _components(),
            "responses": {**_error_responses(openai_api=False), **_error_responses(openai_api=True)},
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
