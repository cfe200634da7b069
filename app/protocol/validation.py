"""From pydantic's validation errors to the service's own: the field's path in the client's terms, and the rule."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic_core import ErrorDetails

from app.errors import InvalidOption, InvalidRequest, quoted

ModelT = TypeVar("ModelT", bound=BaseModel)

# Booleans as form fields and environment variables spell them. Deliberately narrower than pydantic's lax
# booleans, which also take t/f/y/n: a form value of "t" is more likely a mistake than a choice.
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_flag(raw: str) -> bool | None:
    """true/false, 1/0, yes/no, on/off in any case and with spaces around; None for anything else."""
    text = raw.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    return None


def _form_flag(value: object) -> object:
    if not isinstance(value, str):
        return value
    flag = parse_flag(value)
    if flag is None:
        raise ValueError(f"must be true or false, got {quoted(value)}")
    return flag


# A boolean that a form (or JSON) may send: a string is read by parse_flag, a JSON boolean as it is.
FormFlag = Annotated[bool, BeforeValidator(_form_flag)]


def validate(model: type[ModelT], data: object, *, request_errors: frozenset[str] = frozenset()) -> ModelT:
    """data as model, or the service's 400 naming the first field at fault and the rule it breaks.

    request_errors names top-level fields whose errors are malformed requests (invalid_request) rather than
    bad option values (invalid_option), as they were before the models existed.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise invalid(model, error, data, request_errors) from None


def invalid(
    model: type[BaseModel], error: ErrorDetails, data: object, request_errors: frozenset[str] = frozenset()
) -> InvalidOption:
    """The InvalidOption (or InvalidRequest) for one pydantic error of model against the client's data."""
    path, given, found = _path(error["loc"], data)
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind.startswith("union_tag"):
        path = f"{path}.{str(ctx.get('discriminator', 'type')).strip(chr(39))}"
    message = _rule(model, path, error, given if found else error.get("input"))
    error_ = InvalidOption(path, message)
    if path.split(".", 1)[0].split("[", 1)[0] in request_errors:
        # A malformed request rather than a bad option value: invalid_request, still naming the field.
        error_.code = InvalidRequest.code
    return error_


def _path(loc: tuple[int | str, ...], data: object) -> tuple[str, object, bool]:
    """The field's path as clients write it (messages[0].content[1].text), and the client's value there.

    pydantic puts the tag of a discriminated union into the location (content, 1, "text", "text"); the
    client's data tells the tag from a field: it is the value of the part's "type", right after an index.
    """
    path = ""
    node: object = data
    found = True
    after_index = False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node, found = _child(node, part, found)
            after_index = True
            continue
        if after_index and isinstance(node, Mapping) and node.get("type") == part:
            after_index = False
            continue  # a union tag, not a field
        path = f"{path}.{part}" if path else part
        node, found = _child(node, part, found)
        after_index = False
    return path, node, found


def _child(node: object, key: int | str, found: bool) -> tuple[object, bool]:
    if found and isinstance(key, int) and isinstance(node, list) and -len(node) <= key < len(node):
        return node[key], True
    if found and isinstance(key, str) and isinstance(node, Mapping) and key in node:
        return node[key], True
    return None, False


def _rule(model: type[BaseModel], path: str, error: ErrorDetails, given: object) -> str:
    """What the field must be, in words, and what it was."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    words = allowed(model, path)
    if words is not None:
        # Whatever was wrong with a number (not one, out of range, infinite), the answer is its range.
        return f"must be {words}, got {quoted(given)}"
    if kind == "value_error":
        # A validator's own words: they already say what the field must be.
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {quoted(given)}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')}, got {quoted(ctx.get('tag'))}"
    if kind == "union_tag_not_found":
        return "is missing: every content part needs one"
    if kind in ("too_short", "too_long") and isinstance(given, list):
        if kind == "too_short" and ctx.get("min_length") == 1:
            return "must be a non-empty list"
        bound = ctx.get("min_length", ctx.get("max_length"))
        return f"must have {'at least' if kind == 'too_short' else 'at most'} {bound} items"
    if kind == "string_too_long":
        length = len(given) if isinstance(given, str) else "more"
        return f"must be at most {ctx.get('max_length')} characters, got {length}"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {quoted(given)}"
    msg = error["msg"]
    return msg[:1].lower() + msg[1:]


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def allowed(model: type[BaseModel], field: str) -> str | None:
    """A top-level numeric field's allowed values in words ("a number in [1, 300]"), from the model's schema."""
    bounds = numeric_ranges(model).get(field)
    if bounds is None:
        return None
    low, high, integer = bounds
    return f"{'an integer' if integer else 'a number'} in [{low:g}, {high:g}]"


@functools.cache
def numeric_ranges(model: type[BaseModel]) -> dict[str, tuple[float, float, bool]]:
    """field -> (lowest, highest, whether only integers are allowed), for every bounded numeric field."""
    ranges = {}
    for name, schema in model.model_json_schema()["properties"].items():
        for option in [schema, *schema.get("anyOf", [])]:
            if option.get("type") in ("integer", "number") and "minimum" in option and "maximum" in option:
                ranges[name] = (option["minimum"], option["maximum"], option["type"] == "integer")
    return ranges
