"""The OpenAI-compatible API, driven by the unmodified official SDK given only a base URL."""

from __future__ import annotations

import base64
import html
import io
import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import srt
import webvtt

from tests.support import AISHELL, JFK, LIBRISPEECH, Server, make_audio, post

pytestmark = pytest.mark.e2e

# Cue rules every SRT and VTT must keep.
MAX_LINES, MAX_CHARS, MAX_CJK_CHARS, MAX_CUE_SECONDS = 2, 42, 16, 7.0
# Greedy decoding: the formats of one file can then be compared with each other.
GREEDY = 0.0


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    """The official SDK pointed at the server; no retries, so an error surfaces as it was sent."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """95 s of speech: four segments at 30 s, so cues come from several segments."""
    return make_audio(tmp_path_factory.mktemp("openai-audio"), 95, "long.mp3")


def transcribe(client: openai.OpenAI, path: Path, **kwargs: Any) -> Any:
    """One transcription through the SDK."""
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, **kwargs)


def is_cjk(text: str) -> bool:
    """Mostly Han or kana, as the renderer decides it."""
    chars = [c for c in text if not c.isspace()]
    cjk = [c for c in chars if "\u3000" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef"]
    return len(cjk) * 2 > len(chars)


def check_cues(cues: list[tuple[float, float, str]], segments: list[dict[str, Any]]) -> None:
    """Every cue rule: line count and width, duration, order, and staying inside one segment."""
    assert cues, "no cues"
    previous_end = 0.0
    for start, end, text in cues:
        assert start >= previous_end - 1e-6, f"cue at {start} overlaps the one ending {previous_end}"
        assert end > start
        assert end - start <= MAX_CUE_SECONDS + 1e-6
        assert any(s["start"] - 1e-3 <= start and end <= s["end"] + 1e-3 for s in segments), (start, end)
        lines = text.split("\n")
        assert 1 <= len(lines) <= MAX_LINES, text
        width = MAX_CJK_CHARS if is_cjk(text) else MAX_CHARS
        assert all(0 < len(line) <= width for line in lines), text
        previous_end = end


def words(text: str) -> str:
    """The text without whitespace, "-->" written as subtitles write it: wrapping may break lines anywhere."""
    return "".join(text.replace("-->", "\u2192").split())


# Translations ----------------------------------------------------------------------------------------


# OpenAI's SDK marks translations deprecated (whisper-1 is); clients call them all the same.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_translations_in_every_format(client: openai.OpenAI) -> None:
    """audio.translations.create: json and verbose_json parse as the SDK's types (english, segments), text, srt
    and vtt as text that the subtitle libraries read."""

    def translate(**kwargs: Any) -> Any:
        with open(JFK, "rb") as f:
            return client.audio.translations.create(model="whisper-1", file=f, temperature=GREEDY, **kwargs)

    assert isinstance(translate().text, str)
    assert isinstance(translate(prompt="Kennedy, Americans").text, str)
    verbose = translate(response_format="verbose_json")
    assert verbose.language == "english" and verbose.duration == pytest.approx(11.0, abs=0.05)
    assert verbose.segments and all(0 <= s.start < s.end <= 11.05 for s in verbose.segments)
    assert isinstance(translate(response_format="text"), str)
    for cue in srt.parse(translate(response_format="srt")):
        assert cue.end.total_seconds() <= 11.05
    for caption in webvtt.from_string(translate(response_format="vtt")):
        assert caption.end_in_seconds <= 11.05


def test_transcriptions_refuse_to_translate(client: openai.OpenAI) -> None:
    """The transcription route transcribes: task=translate (a native option) points to the translation route."""
    with open(JFK, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f, extra_body={"task": "translate"})
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "task"
    assert "/v1/audio/translations" in caught.value.body["message"]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_translation_of_what_is_not_audio_is_a_bad_request(client: openai.OpenAI, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not audio")
    with open(junk, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="whisper-1", file=f)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "unsupported_audio"


# Transcriptions --------------------------------------------------------------------------------------


def test_json_is_a_transcription_with_duration_usage(client: openai.OpenAI) -> None:
    """The default format parses as the SDK's Transcription."""
    result = transcribe(client, JFK)
    assert isinstance(result, openai.types.audio.Transcription)
    assert isinstance(result.text, str) and result.text
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds == 11


def test_every_format_agrees_on_the_text(client: openai.OpenAI) -> None:
    """json, text, verbose_json, srt and vtt of one file carry the same words."""
    text = transcribe(client, LIBRISPEECH, temperature=GREEDY).text
    plain = transcribe(client, LIBRISPEECH, temperature=GREEDY, response_format="text")
    assert isinstance(plain, str) and plain == text + "\n"
    verbose = transcribe(client, LIBRISPEECH, temperature=GREEDY, response_format="verbose_json")
    assert verbose.text == text
    subrip = transcribe(client, LIBRISPEECH, temperature=GREEDY, response_format="srt")
    assert words(" ".join(c.content for c in srt.parse(subrip))) == words(text)
    vtt = transcribe(client, LIBRISPEECH, temperature=GREEDY, response_format="vtt")
    captions = webvtt.from_string(vtt)
    assert words(" ".join(html.unescape(c.text) for c in captions)) == words(text)


def test_verbose_json_carries_openai_segment_fields(client: openai.OpenAI, long_audio: Path) -> None:
    """duration, language, text and segments with every field of OpenAI's segment, honest or null."""
    result = transcribe(
        client,
        long_audio,
        response_format="verbose_json",
        language="en",
        timestamp_granularities=["segment"],
        temperature=GREEDY,
        extra_body={"segment_duration": "30", "vad": "false"},  # fixed cuts: four contiguous segments
    )
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    assert result.language == "english"
    assert result.duration == pytest.approx(95, abs=0.1)
    segments = result.segments or []
    assert len(segments) == 4
    assert [s.id for s in segments] == [0, 1, 2, 3]
    assert segments[0].start == 0 and segments[-1].end == result.duration
    for before, after in itertools.pairwise(segments):
        assert before.end == after.start
    for segment in segments:
        assert segment.seek == round(segment.start * 100)
        assert segment.temperature == GREEDY
        assert segment.avg_logprob is None and segment.no_speech_prob is None and segment.tokens is None
        assert segment.compression_ratio is None or segment.compression_ratio > 0
    joined = " ".join(s.text for s in segments)
    assert words(joined) == words(result.text)


def test_language_unknown_is_null_in_verbose_json(client: openai.OpenAI) -> None:
    """No language asked and none detected: null, not a guess."""
    result = transcribe(client, AISHELL, response_format="verbose_json")
    assert result.language is None


@pytest.mark.parametrize("response_format", ["srt", "vtt"])
def test_subtitles_keep_the_cue_rules(client: openai.OpenAI, long_audio: Path, response_format: str) -> None:
    """Standard parsers accept the file and every cue keeps the rules, across several segments."""
    options = {"temperature": GREEDY, "extra_body": {"segment_duration": "30", "max_new_tokens": "200"}}
    verbose = transcribe(client, long_audio, response_format="verbose_json", **options)
    segments = [{"start": s.start, "end": s.end} for s in verbose.segments or []]
    body = transcribe(client, long_audio, response_format=response_format, **options)
    if response_format == "srt":
        cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(body)]
    else:
        assert body.startswith("WEBVTT")
        cues = [(_seconds(c.start), _seconds(c.end), html.unescape(c.text)) for c in webvtt.from_string(body)]
    check_cues(cues, segments)
    assert words(" ".join(text for _, _, text in cues)) == words(verbose.text)


def _seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_stream_sends_a_delta_per_segment_then_done(client: openai.OpenAI, server: Server, long_audio: Path) -> None:
    """transcript.text.delta events add up to the transcript.text.done text."""
    with open(long_audio, "rb") as f:
        stream = client.audio.transcriptions.create(
            model="whisper-1", file=f, stream=True, extra_body={"segment_duration": "30"}
        )
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
    assert 1 <= len(kinds) - 1 <= 4
    deltas = "".join(e.delta for e in events[:-1])
    assert deltas == events[-1].text and events[-1].text
    assert no_uploads_left(server)


def no_uploads_left(server: Server) -> bool:
    """The uploads dir empties once responses close (a streamed one closes just after its last event; one whose
    client left, once the server notices, at its next event or check, later on a loaded machine)."""
    deadline = time.monotonic() + 30
    while any((server.data_dir / "uploads").iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stream_abandoned_midway_leaves_nothing_behind(server: Server, long_audio: Path) -> None:
    """A client that hangs up after the first event: the rest is cancelled, the upload copy removed."""
    with open(long_audio, "rb") as f:
        response = requests.post(
            server.url + "/v1/audio/transcriptions",
            files={"file": ("long.mp3", f)},
            data={"model": "whisper-1", "stream": "true", "segment_duration": "5"},
            stream=True,
            timeout=60,
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = next(response.iter_lines(decode_unicode=True))
        assert first.startswith("data: ") and "transcript.text.delta" in first
        response.close()
    assert no_uploads_left(server)
    # The service goes on serving.
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_stream_as_text_format_too(client: openai.OpenAI) -> None:
    """stream=true with response_format text streams the same events."""
    with open(JFK, "rb") as f:
        events = list(
            client.audio.transcriptions.create(model="whisper-1", file=f, stream=True, response_format="text")
        )
    assert events[-1].type == "transcript.text.done"


def test_stream_of_a_file_that_is_not_audio_is_a_400_before_the_stream(client: openai.OpenAI, tmp_path: Path) -> None:
    """The status can still be set: a plain error, not an event stream."""
    fake = tmp_path / "notes.mp3"
    fake.write_text("not audio at all")
    with open(fake, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
    assert caught.value.code == "unsupported_audio"


# Errors: OpenAI's envelope, statuses and SDK exception types ----------------------------------------


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    """404 model_not_found, param model."""
    with open(JFK, "rb") as f, pytest.raises(openai.NotFoundError) as caught:
        client.audio.transcriptions.create(model="no-such-model", file=f)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert body["type"] == "invalid_request_error" and "no-such-model" in body["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": 5}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"timestamp_granularities": ["word"], "response_format": "json"}, "timestamp_granularities[]"),
        ({"timestamp_granularities": ["word"], "response_format": "text"}, "timestamp_granularities[]"),
        ({"timestamp_granularities": ["char"], "response_format": "verbose_json"}, "timestamp_granularities[]"),
        ({"stream": True, "response_format": "srt"}, "stream"),
        ({"extra_body": {"segment_duration": "9999"}}, "segment_duration"),
    ],
)
def test_bad_options_name_the_param(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    """400 invalid_request_error with the field in param."""
    with open(JFK, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f, **kwargs)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param and body["type"] == "invalid_request_error"
    assert "Traceback" not in body["message"]


def test_not_audio_is_bad_request(client: openai.OpenAI, tmp_path: Path) -> None:
    """An undecodable upload: 400 (OpenAI's status), code unsupported_audio."""
    fake = tmp_path / "picture.mp3"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with open(fake, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert caught.value.code == "unsupported_audio"


def test_missing_file_and_unknown_routes_use_the_envelope(server: Server) -> None:
    """Errors raised by routing and form parsing are in OpenAI's envelope under /v1 too."""
    missing = requests.post(server.url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "file"
    unknown = requests.get(server.url + "/v1/no-such-route", timeout=30)
    error = unknown.json()["error"]
    assert unknown.status_code == 404 and set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["request_id"] == unknown.headers["X-Request-ID"]
    wrong_method = requests.get(server.url + "/v1/audio/transcriptions", timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    # The native API keeps its own body.
    native = requests.get(server.url + "/no-such-route", timeout=30).json()
    assert native["status"] == "error" and native["error"]["code"] == "not_found"


# Models ----------------------------------------------------------------------------------------------


def test_models_lists_the_served_model(client: openai.OpenAI, server: Server) -> None:
    """One model, named by the checkpoint's directory (a local checkpoint's path is never shown)."""
    models = list(client.models.list())
    assert [m.id for m in models] == [server.checkpoint.name]
    assert models[0].object == "model" and models[0].owned_by == "local"
    assert client.models.retrieve(server.checkpoint.name).id == server.checkpoint.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# Chat ------------------------------------------------------------------------------------------------


def audio_part(path: Path, fmt: str = "wav") -> dict[str, Any]:
    """An input_audio content part."""
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": fmt}}


def chat_messages(*parts: dict[str, Any]) -> list[Any]:
    """A system turn and one user turn with these parts."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What is said in this recording?"}, *parts]},
    ]


def test_chat_with_audio(client: openai.OpenAI, server: Server) -> None:
    """A chat completion answered by the thinker, with usage counting the audio in the prompt."""
    with_audio = client.chat.completions.create(
        model=server.checkpoint.name, messages=chat_messages(audio_part(LIBRISPEECH)), max_tokens=16
    )
    choice = with_audio.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = with_audio.usage
    assert usage is not None and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    text_only = client.chat.completions.create(model=server.checkpoint.name, messages=chat_messages(), max_tokens=4)
    assert text_only.usage is not None
    # 8.7 s of audio is about 218 audio tokens in the prompt.
    assert usage.prompt_tokens - text_only.usage.prompt_tokens > 150


def test_chat_with_two_audios_in_any_ffmpeg_format(client: openai.OpenAI, server: Server, tmp_path: Path) -> None:
    """Several input_audio parts; mp3 as well as wav."""
    mp3 = tmp_path / "jfk.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK), str(mp3)], check=True)
    result = client.chat.completions.create(
        model="whisper-1", messages=chat_messages(audio_part(AISHELL), audio_part(mp3, "mp3")), max_tokens=8
    )
    assert result.usage is not None and result.usage.prompt_tokens > 300


def test_chat_stream(client: openai.OpenAI, server: Server) -> None:
    """chat.completion.chunk events: role first, content pieces, a finish reason, usage, then [DONE]."""
    stream = client.chat.completions.create(
        model=server.checkpoint.name,
        messages=chat_messages(audio_part(AISHELL)),
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(
        model=server.checkpoint.name, messages=chat_messages(audio_part(AISHELL)), max_tokens=24, temperature=0
    )
    assert streamed.strip() == (whole.choices[0].message.content or "")
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens if whole.usage else False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "@@@"}}]}]},
            "messages[0].content[0].input_audio.data",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ],
)
def test_chat_bad_requests(client: openai.OpenAI, body: dict[str, Any], param: str | None) -> None:
    """400 with the offending field named."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="whisper-1", **body)
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_chat_audio_that_is_not_audio(client: openai.OpenAI) -> None:
    """Valid base64 of something ffmpeg cannot decode: 400 unsupported_audio."""
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"hello").decode(), "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="whisper-1", messages=chat_messages(part), max_tokens=4)
    assert caught.value.code == "unsupported_audio"


def test_chat_body_that_is_not_json(server: Server) -> None:
    """A form or garbage body: 400 in the envelope."""
    response = requests.post(server.url + "/v1/chat/completions", data=b"{not json", timeout=30)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


# The native VTT route --------------------------------------------------------------------------------


def test_native_vtt_route(server: Server) -> None:
    """/transcribe/vtt: a WebVTT attachment named after the upload, parsed by webvtt-py."""
    response = post(server, "/transcribe/vtt", JFK, max_new_tokens="64")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/vtt")
    assert response.headers["Content-Disposition"] == "attachment; filename=jfk.vtt"
    captions = list(webvtt.from_buffer(io.StringIO(response.text)))
    assert captions and all(_seconds(c.end) <= 11.01 for c in captions)


def check_words(timed: list[Any], start: float, end: float) -> None:
    """Words in order, none overlapping the one before, each inside [start, end]."""
    assert timed
    floor = start
    for word in timed:
        assert word.word.strip() == word.word and word.word
        assert floor - 1e-3 <= word.start <= word.end <= end + 1e-3, (word, floor, end)
        floor = word.end


def test_word_granularity_gives_openais_top_level_words(client: openai.OpenAI, long_audio: Path) -> None:
    """word alone: words and no segments (as OpenAI answers); word and segment: both, the words inside them."""
    alone = transcribe(
        client, JFK, response_format="verbose_json", timestamp_granularities=["word"], temperature=GREEDY
    )
    assert alone.segments is None and alone.words
    check_words(alone.words, 0.0, alone.duration)
    assert words(" ".join(w.word for w in alone.words)) == words(alone.text)

    both = transcribe(
        client,
        long_audio,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        temperature=GREEDY,
        extra_body={"segment_duration": "30", "max_new_tokens": "64"},
    )
    assert both.segments and both.words
    check_words(both.words, 0.0, both.duration)
    for word in both.words:
        assert any(s.start - 1e-3 <= word.start <= word.end <= s.end + 1e-3 for s in both.segments), word
