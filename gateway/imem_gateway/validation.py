"""FastAPI's request validation errors (422 by default) as OpenAI's 400 naming the field."""

from __future__ import annotations

import re
from typing import Sequence

from imem_gateway.errors import ApiError, bad_request

FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}  # how pydantic names union members


def param_name(loc: tuple | list) -> str | None:
    """("body", "messages", 0, "content", "list[TextPart]", 1, "type") -> "messages[0].content[1].type"."""
    where, *path = list(loc) or ["body"]
    if where == "header" and path:
        return "-".join(part.capitalize() for part in str(path[0]).split("-"))
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        elif FIELD.match(str(part)) and part not in TYPE_TAGS:
            name += f".{part}" if name else str(part)
    return name or None


def validation_error(errors: Sequence[dict]) -> ApiError:
    if not errors:
        return bad_request("the request is not valid")
    # Of a union's alternatives, the deepest error says most (an image part: "content[0].type", not "content").
    error = max(errors, key=lambda e: len(e.get("loc", ())))
    kind, param = error.get("type", ""), param_name(error.get("loc", ()))
    if kind == "json_invalid":
        return bad_request(f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}".rstrip(": "))
    if kind == "extra_forbidden":  # the last loc item is the unknown key itself, whatever it looks like
        loc = tuple(error.get("loc", ()))
        parent, key = param_name(loc[:-1]), str(loc[-1]) if loc else ""
        param = f"{parent}.{key}" if parent else key
        return bad_request(f"'{param}' is not supported by this server", param, code="unsupported_parameter")
    if kind == "missing":
        if param is None:
            return bad_request("the request body must be a JSON object")
        return bad_request(f"'{param}' is required", param, code="missing_required_parameter")
    if param is None:
        return bad_request("the request body must be a JSON object (Content-Type: application/json): "
                           f"{error.get('msg', '')}")
    return bad_request(f"invalid '{param}': {error.get('msg', 'not valid')}", param, code="invalid_value")
