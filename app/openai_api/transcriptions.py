"""POST /v1/audio/transcriptions and /v1/audio/translations: OpenAI's speech-to-text endpoints, every
response_format, and streaming for transcriptions."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

from flask import Response, jsonify, request
from werkzeug.datastructures import FileStorage

from app.audio import DecodeStats
from app.errors import InvalidOption, quoted
from app.formats import CONTENT_TYPES, render_srt, render_text, render_vtt
from app.openai_api.events import event_stream, sse
from app.openai_api.models import check_model
from app.outputs import save_transcript
from app.pipeline import identified
from app.protocol.native import LANGUAGES, Task, TranscribeOptions, WordTiming, whisper_segment
from app.protocol.openai import (
    STREAM_FORMATS,
    DurationUsage,
    TranscriptDelta,
    TranscriptDone,
    TranscriptionJson,
    TranscriptionRequest,
    TranslationJson,
    VerboseSegment,
    VerboseTranscription,
    VerboseTranslation,
)
from app.protocol.validation import validate
from app.services import Services, current_services
from app.text import join_text
from app.transcript import Transcript, TranscriptSegment
from app.uploads import client_check, detached_copy, form_options, local_path, uploaded_file
from app.words import words_of

log = logging.getLogger(__name__)


def _request(task: Task = "transcribe") -> TranscriptionRequest:
    """OpenAI's fields of the form, validated; the native options are read by form_options(). Translations take
    neither timestamp_granularities[] nor stream (OpenAI's translations have neither): both are ignored there."""
    form = request.form
    fields: dict[str, object] = {"model": form.get("model")}
    if (response_format := (form.get("response_format") or "").strip()) != "":
        fields["response_format"] = response_format
    if task == "translate":
        return validate(TranscriptionRequest, fields)
    # OpenAI's SDKs send the list as timestamp_granularities[]; plain form encoders without the brackets.
    granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    for value in granularities:
        # Named as the SDKs send the field, whichever spelling came: not as a position in a list.
        if value not in ("segment", "word"):
            raise InvalidOption("timestamp_granularities[]", f"must be segment or word, got {quoted(value)}")
    if "word" in granularities and (response_format or "json") in ("json", "text"):
        # As OpenAI answers it: json and text have nowhere to put words (subtitles are timed by them anyway).
        raise InvalidOption("timestamp_granularities[]", "word needs response_format verbose_json, srt or vtt")
    fields["timestamp_granularities[]"] = granularities
    fields["stream"] = form.get("stream") or "false"
    return validate(TranscriptionRequest, fields)


def transcriptions() -> Response:
    """OpenAI's transcription endpoint: every response_format, and server-sent events with stream=true."""
    services = current_services()
    file = uploaded_file()
    asked = _request()
    check_model(services.settings, asked.model)
    if asked.stream and asked.response_format not in STREAM_FORMATS:
        raise InvalidOption("stream", f"streams carry text only: use json or text, not {asked.response_format}")
    options = form_options()
    if options.task != "transcribe":
        raise InvalidOption("task", "this route transcribes; POST /v1/audio/translations translates")
    if asked.stream:
        path = detached_copy(file)
        try:
            # Reject what is not audio while a 4xx can still be sent: a stream's status is fixed once begun.
            services.pipeline.probe(path)
            response = _stream_transcription(services, path, options)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # The WSGI server closes every response, finished or abandoned: the copy goes with it.
        response.call_on_close(lambda: path.unlink(missing_ok=True))
        return response
    return _answer(services, file, asked, options)


def translations() -> Response:
    """OpenAI's translation endpoint: English text from speech in any language, in every response_format."""
    services = current_services()
    file = uploaded_file()
    asked = _request("translate")
    check_model(services.settings, asked.model)
    # The same options as a transcription, the task aside: language names the speech's, prompt is context.
    options = form_options().model_copy(update={"task": "translate"})
    if not services.settings.model_variant.translates:
        raise InvalidOption("model", services.settings.model_variant.why_not_translate)
    return _answer(services, file, asked, options)


def _answer(services: Services, file: FileStorage, asked: TranscriptionRequest, options: TranscribeOptions) -> Response:
    """Transcribe (or translate) the upload, keep its output file, and answer in the format asked for."""
    started = time.monotonic()
    with local_path(file) as path:
        # Subtitles are timed by words, and so is verbose_json's words array (a translation is never aligned).
        align = asked.response_format in ("srt", "vtt") or "word" in asked.timestamp_granularities
        transcript = services.pipeline.transcribe(path, options, check=client_check(), align=align)
    text, output_file = save_transcript(services.outputs_dir, transcript)
    log.info("%s: %.1f s of audio in %.1f s", options.task, transcript.duration, time.monotonic() - started)
    response = _render(asked, transcript, text, options)
    response.headers["X-Output-File"] = output_file
    return response


def _usage(transcript: Transcript) -> DurationUsage:
    return DurationUsage(seconds=math.ceil(transcript.duration))


def _render(asked: TranscriptionRequest, transcript: Transcript, text: str, options: TranscribeOptions) -> Response:
    response_format = asked.response_format
    translated = options.task == "translate"
    if response_format == "json":
        if translated:
            return jsonify(TranslationJson(text=text).body())
        return jsonify(TranscriptionJson(text=text, usage=_usage(transcript)).body())
    if response_format == "verbose_json":
        if translated:
            return jsonify(verbose_translation(transcript, text, options).body())
        return jsonify(verbose_json(transcript, text, options, asked.timestamp_granularities).body())
    body = {"text": render_text, "srt": render_srt, "vtt": render_vtt}[response_format]
    return Response(body(transcript), content_type=CONTENT_TYPES[response_format])


def verbose_json(
    transcript: Transcript, text: str, options: TranscribeOptions, granularities: Sequence[str] = ()
) -> VerboseTranscription:
    """OpenAI's verbose_json: Whisper's segment fields (null where this model has no such figure), words when
    asked; as OpenAI does, words alone leave the segments out."""
    language = LANGUAGES[transcript.language].lower() if transcript.language in LANGUAGES else None
    with_segments = "segment" in granularities or "word" not in granularities
    return VerboseTranscription(
        language=language,
        duration=round(transcript.duration, 3),
        text=text,
        segments=[_verbose_segment(s, options) for s in transcript.segments] if with_segments else None,
        words=[WordTiming.of(w) for s in transcript.segments for w in words_of(s)] if "word" in granularities else None,
        usage=_usage(transcript),
    )


def verbose_translation(transcript: Transcript, text: str, options: TranscribeOptions) -> VerboseTranslation:
    """OpenAI's verbose_json of a translation: its language is the output's, always english."""
    return VerboseTranslation(
        language="english",
        duration=round(transcript.duration, 3),
        text=text,
        segments=[_verbose_segment(s, options) for s in transcript.segments],
    )


def _verbose_segment(segment: TranscriptSegment, options: TranscribeOptions) -> VerboseSegment:
    return VerboseSegment(
        **whisper_segment(segment),
        # The thinker gives no token log-probabilities or no-speech probability here: null, not a guess.
        tokens=None,
        temperature=options.temperature,
        avg_logprob=None,
        no_speech_prob=None,
        stop_reason=segment.stop_reason,
    )


def _stream_transcription(services: Services, path: Path, options: TranscribeOptions) -> Response:
    """transcript.text.delta per finished segment, in order, then transcript.text.done; errors as an event."""

    def events() -> Iterator[str]:
        started = time.monotonic()
        segments: list[TranscriptSegment] = []
        sent = ""
        stats = DecodeStats()
        with closing(services.pipeline.segments(path, options, probed=True, stats=stats)) as produced:
            for segment in produced:
                segments.append(segment)
                joined = join_text([s.text for s in segments])
                if len(joined) > len(sent):
                    # join_text only ever appends, so the deltas add up to the final text exactly.
                    yield sse(TranscriptDelta(delta=joined[len(sent) :]))
                    sent = joined
        language = options.language or identified(segments)
        transcript = Transcript(segments, stats.seconds, language, time.monotonic() - started)
        text, _ = save_transcript(services.outputs_dir, transcript)
        yield sse(TranscriptDone(text=text, usage=_usage(transcript)))

    return event_stream(events(), "streamed transcription")
