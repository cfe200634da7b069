"""The OpenAPI document: valid OpenAPI 3.1, complete for the native routes, and in step with the code's limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask

from app import create_app
from app.backends import Backend
from app.jobs import JobStore
from app.openapi import API_VERSION, TITLE, openapi_spec
from app.protocol.native import JOB_STATES, LANGUAGES, MAX_PROMPT_CHARS, RANGES, TranscribeOptions
from app.settings import Settings

# Blueprints whose routes the document does not describe: none, both APIs are in it.
# The web page is a client of the API, not part of it.
UNDESCRIBED_BLUEPRINTS = {"web"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def no_model() -> Backend:
    """A loader that must never be reached: these tests load no model."""
    raise AssertionError("the OpenAPI tests never load a model")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with non-default option defaults, so the document's defaults are seen to follow them."""
    return Settings(data_dir=str(tmp_path / "data"), device="cpu", max_new_tokens=512, temperature=0.3)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The app as the factory builds it, every blueprint registered."""
    flask_app = create_app(settings, loader=no_model)
    yield flask_app
    flask_app.extensions["asr"].stop()


@pytest.fixture
def spec(settings: Settings) -> dict[str, Any]:
    """The document for these settings."""
    return openapi_spec(settings)


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) for every operation in the document."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref."""
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def form_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """The multipart schema of an upload route."""
    body = spec["paths"][path]["post"]["requestBody"]
    schema: dict[str, Any] = body["content"]["multipart/form-data"]["schema"]
    return schema


def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    """The OpenAPI 3.1 meta-schema accepts it, and schemathesis finds every operation in it."""
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["title"] == TITLE == "Qwen-Omni speech transcription service"
    assert spec["info"]["version"] == API_VERSION
    loaded = schemathesis.openapi.from_dict(spec)
    loaded.validate()  # raises on any violation of the meta-schema
    labels = {result.ok().label for result in loaded.get_all_operations()}
    assert labels == {f"{method.upper()} {path}" for path, method, _ in operations(spec)}


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    """No $ref points at a component that is not there."""

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(spec))
    assert found
    for ref in found:
        assert ref.startswith("#/components/"), ref
        resolve(spec, {"$ref": ref})


def test_every_body_component_describes_its_fields(spec: dict[str, Any]) -> None:
    """No object schema left opaque (a custom serializer can hide a model's fields): each lists them."""
    for name, schema in spec["components"]["schemas"].items():
        if schema.get("type") == "object" and "enum" not in schema:
            assert schema.get("properties"), f"{name} describes no fields"


def test_the_described_routes_are_the_apps_native_routes(app: Flask, spec: dict[str, Any]) -> None:
    """A route added to the app without a description fails this test, and so does a description of no route."""
    described = {(path, method) for path, method, _ in operations(spec)}
    routes = set()
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.rpartition(".")[0]
        if rule.endpoint == "static" or blueprint in UNDESCRIBED_BLUEPRINTS:
            continue
        # Flask's <converter:name> is OpenAPI's {name}.
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    assert routes, "no native routes found"
    missing = sorted(routes - described)
    assert not missing, f"routes without an OpenAPI description: {missing}"
    stale = sorted(described - routes)
    assert not stale, f"described operations the app does not serve: {stale}"


def test_served_document_is_the_one_built_for_the_settings(app: Flask, settings: Settings) -> None:
    """GET /openapi.json answers the document as JSON."""
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == openapi_spec(settings)


@pytest.mark.parametrize(
    "path", ["/transcribe", "/transcribe/json", "/transcribe/srt", "/transcribe/vtt", "/transcribe/async"]
)
def test_upload_form_follows_the_option_code(spec: dict[str, Any], settings: Settings, path: str) -> None:
    """Fields, types, ranges and defaults come from app/options.py and the server's settings."""
    schema = form_schema(spec, path)
    properties = schema["properties"]
    assert schema["required"] == ["file"]
    assert set(properties) == {"file"} | set(TranscribeOptions.model_fields)
    assert properties["file"]["contentMediaType"] == "application/octet-stream"
    defaults = settings.default_options()
    for name, (low, high, integer) in RANGES.items():
        option = properties[name]
        assert option["type"] == ("integer" if integer else "number")
        assert (option["minimum"], option["maximum"]) == (low, high)
        assert option["default"] == getattr(defaults, name)
        assert f"[{low:g}, {high:g}]" in option["description"]
    assert properties["max_new_tokens"]["default"] == 512 and properties["temperature"]["default"] == 0.3
    assert properties["enable_s2t"]["type"] == "boolean"
    assert set(LANGUAGES) | set(LANGUAGES.values()) | {"", "auto"} == set(properties["language"]["enum"])
    assert properties["prompt"]["maxLength"] == MAX_PROMPT_CHARS


def test_caption_variants_offer_no_prompt(tmp_path: Path) -> None:
    """A Captioner refuses any prompt, so its document has no prompt field."""
    spec = openapi_spec(Settings(variant="captioner", data_dir=str(tmp_path), device="cpu"))
    properties = form_schema(spec, "/transcribe/json")["properties"]
    assert "prompt" not in properties and "language" in properties


def test_job_states_are_the_stores(tmp_path: Path, spec: dict[str, Any]) -> None:
    """The documented job states are exactly the ones the job store counts."""
    assert set(JobStore(tmp_path / "jobs.db").counts()) == set(JOB_STATES)
    assert spec["components"]["schemas"]["Job"]["properties"]["status"]["enum"] == list(JOB_STATES)


def test_security_applies_to_every_route_but_health(spec: dict[str, Any]) -> None:
    """Bearer or X-API-Key everywhere, as alternatives; /health is open; 401 is documented where keys apply."""
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert spec["security"] == [{"bearerAuth": []}, {"apiKey": []}]
    for path, method, operation in operations(spec):
        if path == "/health":
            assert operation["security"] == []
            assert "401" not in operation["responses"]
        else:
            assert "security" not in operation, f"{method} {path} overrides the document's security"
            assert {"401", "429"} <= set(operation["responses"]), f"{method} {path}"


def test_error_responses_share_one_body_and_retry_after(spec: dict[str, Any]) -> None:
    """Every 4xx/5xx is the one error body; 429 always and 503 sometimes carry Retry-After."""
    for path, method, operation in operations(spec):
        for status, response in operation["responses"].items():
            response = resolve(spec, response)
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                # /v1 answers OpenAI's envelope, the native API its own body.
                body = "OpenAIError" if path.startswith("/v1/") else "Error"
                assert schema == {"$ref": f"#/components/schemas/{body}"}, f"{method} {path} {status}"
            if status in ("429", "503"):
                retry_after = response["headers"]["Retry-After"]
                assert retry_after["schema"]["type"] == "integer"
                assert retry_after["required"] is (status == "429")
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["status", "error"] and error["properties"]["status"] == {"const": "error"}
    assert "queue_full" in spec["components"]["responses"]["Unavailable"]["description"]
    assert "unauthorized" in spec["components"]["responses"]["Unauthorized"]["description"]
    assert "rate_limited" in spec["components"]["responses"]["RateLimited"]["description"]


def test_success_media_types(spec: dict[str, Any]) -> None:
    """Each transcribe route's 200 media type, and the async route's 202."""
    expected = {
        "/transcribe": "text/plain",
        "/transcribe/json": "application/json",
        "/transcribe/srt": "application/x-subrip",
        "/transcribe/vtt": "text/vtt",
    }
    for path, media_type in expected.items():
        responses = spec["paths"][path]["post"]["responses"]
        assert list(responses["200"]["content"]) == [media_type]
        assert {"400", "401", "413", "415", "429", "500", "503"} <= set(responses)
    async_responses = spec["paths"]["/transcribe/async"]["post"]["responses"]
    assert set(async_responses) == {"202", "400", "401", "408", "413", "415", "429", "503", "507"}
    assert set(spec["paths"]["/status/{job_id}"]) == {"parameters", "get", "delete"}
