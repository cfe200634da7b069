"""The OpenAI-compatible API under /v1, a module per feature as vLLM lays out its entrypoints: models,
transcriptions and translations, chat completions, and the server-sent events they stream. The route table is
here.
"""

from __future__ import annotations

from flask import Blueprint

from app.openai_api import chat, models, transcriptions

bp = Blueprint("openai", __name__, url_prefix="/v1")
bp.add_url_rule("/models", view_func=models.list_models, methods=["GET"])
bp.add_url_rule("/models/<path:name>", view_func=models.get_model, methods=["GET"])
bp.add_url_rule("/audio/transcriptions", view_func=transcriptions.transcriptions, methods=["POST"])
bp.add_url_rule("/audio/translations", view_func=transcriptions.translations, methods=["POST"])
bp.add_url_rule("/chat/completions", view_func=chat.chat_completions, methods=["POST"])
