"""GET /v1/models: the one model this server serves, and the names a request may call it by."""

from __future__ import annotations

import time
from pathlib import Path

from flask import Response, jsonify

from app.checkpoints import is_local
from app.errors import InvalidRequest, ModelNotFound, quoted
from app.protocol.openai import ModelCard, ModelList
from app.services import current_services
from app.settings import Settings

# Names OpenAI clients send by default: accepted for this server's one model, so tools that hard-code
# them work unchanged.
MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
STARTED = int(time.time())


def model_id(settings: Settings) -> str:
    """The id /v1/models lists: the Hub id, or the directory name of a local checkpoint (never a path)."""
    path = settings.checkpoint_path
    if is_local(path):
        return Path(path).name or settings.variant
    return path


def check_model(settings: Settings, raw: object) -> str:
    """The model a request names: this server's id, its variant name or an OpenAI alias; absent means ours."""
    served = model_id(settings)
    if raw is None or raw == "":
        return served
    if not isinstance(raw, str):
        raise InvalidRequest("model: must be a string")
    if raw in (served, settings.variant, settings.checkpoint_path, *MODEL_ALIASES):
        return served
    raise ModelNotFound(f"the model {quoted(raw)} is not served here; this server serves {served!r}")


def model_card(settings: Settings) -> ModelCard:
    """The served model as /v1/models describes it."""
    served = model_id(settings)
    variant = settings.model_variant
    return ModelCard(
        id=served,
        created=STARTED,
        owned_by=served.split("/", 1)[0] if "/" in served else "local",
        variant=variant.name,
        family=variant.family,
        task=variant.task,
    )


def list_models() -> Response:
    """The one model this server serves."""
    return jsonify(ModelList(data=[model_card(current_services().settings)]).body())


def get_model(name: str) -> Response:
    """One model by id (or alias); 404 when it is not the served one."""
    settings = current_services().settings
    check_model(settings, name)
    return jsonify(model_card(settings).body())
