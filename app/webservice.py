"""whisper-asr-webservice's API (POST /asr, POST /detect-language), so that Bazarr, Speakr and its other clients
switch by URL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel
from werkzeug.datastructures import FileStorage

from app.audio import pcm_to_wav
from app.backends.qwen_omni import instruction_for
from app.errors import InvalidOption, InvalidRequest
from app.formats import render_lines, render_srt, render_tsv, render_vtt
from app.outputs import save_transcript
from app.protocol.native import TranscribeOptions, parse_options
from app.protocol.validation import validate
from app.protocol.webservice import AsrQuery, AsrTranscription, DetectedLanguage, DetectLanguageQuery
from app.services import current_services
from app.transcript import Transcript
from app.uploads import client_check, local_path, temporary_file, uploaded_file

bp = Blueprint("webservice", __name__)
Query = TypeVar("Query", bound=BaseModel)

# whisper-asr-webservice answers every output as text/plain, JSON included; its clients expect exactly that.
CONTENT_TYPE = "text/plain; charset=utf-8"
# Its query names -> the native option each one sets.
NATIVE_NAMES = {
    "task": "task",
    "language": "language",
    "initial_prompt": "prompt",
    "word_timestamps": "word_timestamps",
    "vad_filter": "vad",
}
RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "txt": render_lines,
    "vtt": render_vtt,
    "srt": render_srt,
    "tsv": render_tsv,
}


def _given() -> dict[str, str]:
    """The query's parameters; as on the native form, an empty value means the default (httpx sends None so)."""
    return {name: value for name, value in request.args.items() if value.strip()}


def _options() -> TranscribeOptions:
    """The query's options over the server's defaults, errors naming the client's own parameter."""
    settings = current_services().settings
    given = _given()
    form = {native: given[name] for name, native in NATIVE_NAMES.items() if name in given}
    try:
        options = parse_options(form, settings.default_options(), settings.model_variant)
    except InvalidOption as exc:
        theirs = {native: name for name, native in NATIVE_NAMES.items()}.get(exc.field, exc.field)
        raise InvalidOption(theirs, exc.message.split(": ", 1)[-1]) from None
    if options.prompt and options.task == "transcribe" and settings.model_variant.family != "qwen3-asr":
        # Whisper's initial_prompt is context (names, spellings), not an instruction: the Omni models keep
        # their transcription instruction and are told the terms to expect. Qwen3-ASR takes it as context, and
        # so does a translation (the backend adds it to the translation instruction).
        instruction = instruction_for(options.language, None)
        options = options.model_copy(update={"prompt": f"{instruction} It may mention: {options.prompt}"})
    return options


def _file_name(file: FileStorage) -> str:
    """The upload's name without directories, as the attachment's stem (whisper-asr-webservice keeps the
    extension: meeting.mp3 -> meeting.mp3.srt); percent-encoded, so any name is safe in a header."""
    raw = file.filename or ""
    name = PureWindowsPath(PurePosixPath(raw).name).name
    name = "".join(char for char in name if char.isprintable()).strip()[:200]
    return quote(name or "audio")


@contextmanager
def _audio(file: FileStorage, encode: bool) -> Iterator[Path]:
    """A path ffmpeg reads for audio_file: the upload itself, or (encode=false) its raw PCM wrapped as WAV."""
    services = current_services()
    with local_path(file) as path:
        if encode:
            yield path
            return
        # The WAV is a second copy of the body on the data disk: the free-space reserve applies to it too.
        services.disk.check(path.stat().st_size)
        with temporary_file(services.uploads_dir) as wav:
            pcm_to_wav(path, wav, services.pipeline.max_audio_seconds)
            yield wav


def _query(model: type[Query]) -> Query:
    """The query, validated."""
    return validate(model, _given())


@bp.post("/asr")
def asr() -> Response:
    """Transcribe (or translate into English) audio_file into query `output` (txt, vtt, srt, tsv, json), as
    whisper-asr-webservice does."""
    services = current_services()
    query = _query(AsrQuery)
    options = _options()
    file = uploaded_file("audio_file")
    align = query.output in ("srt", "vtt") or (query.output == "json" and options.word_timestamps)
    with _audio(file, query.encode) as path:
        transcript = services.pipeline.transcribe(path, options, check=client_check(), align=align)
    text, output_file = save_transcript(services.outputs_dir, transcript)
    if query.output == "json":
        result = AsrTranscription.of(transcript, text, options.temperature, words=options.word_timestamps)
        body = json.dumps(result.body())
    else:
        body = RENDERERS[query.output](transcript)
    response = Response(body, content_type=CONTENT_TYPE)
    response.headers["Asr-Engine"] = services.settings.model_variant.family
    response.headers["Content-Disposition"] = f'attachment; filename="{_file_name(file)}.{query.output}"'
    response.headers["X-Output-File"] = output_file
    return response


@bp.post("/detect-language")
def detect_language() -> Response:
    """The language of the first 30 s of speech in audio_file, with the model's confidence, as
    whisper-asr-webservice answers it (JSON, Whisper's lower-case language name)."""
    services = current_services()
    variant = services.settings.model_variant
    if not variant.identifies:
        raise InvalidRequest(f"the {variant.name} variant describes audio; it cannot identify the language spoken")
    query = _query(DetectLanguageQuery)
    file = uploaded_file("audio_file")
    with _audio(file, query.encode) as path:
        # Speech only, whatever the server's --vad: a language read off silence or music would be made up.
        guess = services.pipeline.identify(path, speech_only=True, check=client_check())
    response = jsonify(DetectedLanguage.of(guess.language, guess.confidence).body())
    response.headers["Asr-Engine"] = variant.family
    return response
