"""The memory handle: what memory's recall hands to its own commit step, through the llm step.

Triton lets a step after the decoupled llm read only llm's outputs, so recall's result (the exchange id,
the message and its vector, what was recalled) travels through llm as one opaque string and comes back
with llm's responses. It is "<exchange id>\n<JSON>": the exchange id (32 hex digits) is read without
parsing the rest, which is decoded only where a turn is stored.
"""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np

from imem.errors import BadRequest

EXCHANGE_LENGTH = 32


def new_exchange() -> str:
    return uuid.uuid4().hex


def encode(exchange: str, fields: dict, vector: np.ndarray) -> str:
    body = {**fields, "vector": base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii")}
    return exchange + "\n" + json.dumps(body)


def exchange_of(raw: str) -> str:
    return raw[:EXCHANGE_LENGTH]


def decode(raw: str) -> dict:
    """The handle's fields, with "exchange" and the "vector" as an array; BadRequest if memory did not
    issue it."""
    try:
        exchange, body = raw.split("\n", 1)
        handle = json.loads(body)
        handle["exchange"] = exchange
        handle["vector"] = np.frombuffer(base64.b64decode(handle["vector"]), dtype=np.float32)
        return handle
    except (ValueError, KeyError, TypeError) as error:
        raise BadRequest(f"'memory_handle' is not one that memory issued: {error}") from None
