"""app.protocol: the shapes both APIs validate with and answer in, and how their errors read."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from app.errors import InvalidOption, error_body, openai_error_body
from app.protocol.native import Error, Health, Job, JobProgress, JobState, TranscriptResult
from app.protocol.openai import ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, ChunkDelta, chunk_body
from app.protocol.validation import parse_flag, validate
from app.transcript import Transcript, TranscriptSegment

HI = [{"role": "user", "content": "hi"}]


def chat_error(body: dict[str, Any]) -> InvalidOption:
    """The error a chat body gets."""
    with pytest.raises(InvalidOption) as info:
        validate(ChatCompletionRequest, body, request_errors=frozenset({"model"}))
    return info.value


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "'robot'"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "required"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "non-empty"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].image_url", ""),
        ({"messages": [{"role": "user", "content": [{"type": "file"}]}]}, "messages[0].content[0].type", "video_url"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0].type", "missing"),
        (
            {"messages": [{"role": "user", "content": ["hi", {"type": "text", "text": 5}]}]},
            "messages[0].content[0]",
            "object",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text", ""),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].input_audio.data",
            "required",
        ),
        ({"messages": HI, "max_tokens": 0}, "max_tokens", "an integer in [1, 32768]"),
        ({"messages": HI, "max_tokens": 1.5}, "max_tokens", "an integer in [1, 32768]"),
        ({"messages": HI, "max_completion_tokens": True}, "max_completion_tokens", "an integer in [1, 32768]"),
        ({"messages": HI, "temperature": "hot"}, "temperature", "a number in [0, 2]"),
        ({"messages": HI, "temperature": 2.5}, "temperature", "a number in [0, 2]"),
        ({"messages": HI, "stream": "yes"}, "stream", "true or false"),
        ({"messages": HI, "stream_options": {"include_usage": 1}}, "stream_options.include_usage", "true or false"),
        ({"messages": HI, "n": 2}, "n", "1"),
        ({"messages": HI, "modalities": ["audio"]}, "modalities[0]", "text"),
    ],
)
def test_chat_errors_name_the_field_as_clients_write_it(body: dict[str, Any], field: str, words: str) -> None:
    """The path in the client's terms (no union tags in it), and the rule the value breaks."""
    error = chat_error(body)
    assert (error.status, error.code, error.field) == (400, "invalid_option", field)
    assert error.message.startswith(f"{field}: ") and words in error.message


def test_a_model_that_is_not_a_string_is_a_malformed_request() -> None:
    """As before the models: invalid_request, and now with the field named."""
    error = chat_error({"messages": HI, "model": 5})
    assert (error.status, error.code, error.param) == (400, "invalid_request", "model")


def test_a_plain_string_content_is_one_text_part_and_falsy_stream_is_false() -> None:
    """What OpenAI clients send most: content as a string, stream as null."""
    request = validate(ChatCompletionRequest, {"messages": HI, "stream": None, "top_p": 0.9})
    assert request.messages[0].content[0].model_dump() == {"type": "text", "text": "hi"}
    assert request.stream is False


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    """The newer name, when sent, sets the length (even as null: then the server's default)."""
    both = validate(ChatCompletionRequest, {"messages": HI, "max_tokens": 5, "max_completion_tokens": 7})
    assert both.token_limit() == ("max_completion_tokens", 7)
    assert validate(ChatCompletionRequest, {"messages": HI, "max_tokens": 5}).token_limit() == ("max_tokens", 5)


@pytest.mark.parametrize(("raw", "flag"), [("on", True), (" YES ", True), ("0", False), ("Off", False)])
def test_parse_flag_reads_the_service_booleans(raw: str, flag: bool) -> None:
    """true/false, 1/0, yes/no, on/off in any case."""
    assert parse_flag(raw) is flag


@pytest.mark.parametrize("raw", ["t", "f", "y", "n", "2", ""])
def test_parse_flag_refuses_what_pydantic_would_take(raw: str) -> None:
    """pydantic's lax booleans take t/f/y/n; a form value of "t" is refused here instead."""
    assert parse_flag(raw) is None


def test_the_transcript_json_rounds_once_for_every_route() -> None:
    """Duration and segment times to milliseconds: the sync route and the job result share this builder."""
    transcript = Transcript([TranscriptSegment(0, 0.0, 2.6449375, " ask not ")], 2.6449375, "en", 0.5)
    assert TranscriptResult.of(transcript).body() == {
        "transcription": "ask not",
        "duration": 2.645,
        "language": "en",
        "segments": [{"index": 0, "start": 0.0, "end": 2.645, "text": " ask not ", "stop_reason": "eos"}],
    }


def test_response_shapes_refuse_fields_they_do_not_document() -> None:
    """A field added to a body without its model fails at once, in every test that builds that body."""
    with pytest.raises(ValidationError):
        Error.model_validate({"error": {"code": "x", "message": "y"}, "extra": 1})


@pytest.mark.parametrize(("status", "code"), [(400, "invalid_option"), (401, "unauthorized"), (503, "queue_full")])
def test_the_error_bodies_are_the_documented_shapes(status: int, code: str) -> None:
    """errors.py writes its bodies as dicts (it sits below the protocol); they match the models exactly."""
    from app.protocol.openai import OpenAIError

    for request_id in (None, "r-1"):
        native = error_body(code, "message", request_id)
        assert Error.model_validate(native).body() == native
        envelope = openai_error_body(status, code, "message", "param", request_id)
        assert OpenAIError.model_validate(envelope).body() == envelope
        assert ("request_id" in native["error"]) == ("request_id" in envelope["error"]) == (request_id is not None)


def test_a_jobs_body_carries_only_what_its_state_has() -> None:
    """A queued job has no transcript, error or completion time: left out, not null."""
    body = Job(
        job_id="a",
        request_id="r-1",
        status=JobState.QUEUED,
        progress=JobProgress(segments_done=0, segments_total=0),
        created_at="2026-01-01T00:00:00+00:00",
        started_at=None,
    ).body()
    assert body == {
        "job_id": "a",
        "request_id": "r-1",
        "status": "queued",
        "progress": {"segments_done": 0, "segments_total": 0},
        "created_at": "2026-01-01T00:00:00+00:00",
        "started_at": None,
    }


def test_a_chunk_is_sent_as_openai_sends_it() -> None:
    """Every choice field present (finish_reason null), no usage until the last chunk."""
    chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChunkChoice(delta=ChunkDelta(role="assistant", content=""))]
    )
    assert chunk_body(chunk) == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
        ],
    }


@pytest.mark.parametrize("model", [Health, Job, ChatCompletionChunk])
def test_schemas_name_no_field_the_body_never_has(model: type[BaseModel]) -> None:
    """Every property of a response schema is a field of its model: the document and the code have one source."""
    schema = model.model_json_schema(mode="serialization")
    assert set(schema["properties"]) == set(model.model_fields)
