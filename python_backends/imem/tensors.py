"""Reading and writing Triton tensors with errors that name the field. Imports pb_utils lazily so
the modules that use it stay testable without Triton."""

from __future__ import annotations

import json

import numpy as np

from imem.errors import BadRequest


def optional_input(request, name: str):
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def text(request, name: str, *, required: bool = True, default: str = "", max_bytes: int | None = None) -> str:
    array = optional_input(request, name)
    if array is None or array.size == 0:
        if required:
            raise BadRequest(f"'{name}' is required")
        return default
    if array.size != 1:
        raise BadRequest(f"'{name}' must hold exactly one value, got {array.size} (send one request per turn)")
    value = array.reshape(-1)[0]
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise BadRequest(f"'{name}' must be a string (BYTES tensor)")
    if max_bytes is not None and len(value) > max_bytes:
        raise BadRequest(f"'{name}' is {len(value)} bytes; the limit is {max_bytes}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"'{name}' is not valid UTF-8 (byte {error.start})") from None


def scalar(request, name: str, default, kind=bool):
    array = optional_input(request, name)
    if array is None or array.size == 0:
        return default
    return kind(array.reshape(-1)[0])


def json_object(raw: str, name: str) -> dict:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise BadRequest(f"'{name}' is not valid JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"'{name}' must be a JSON object")
    return value


def bytes_tensor(name: str, value: str):
    """One string as a [1, 1] tensor: batch of one, as every model of ours has max_batch_size > 0."""
    import triton_python_backend_utils as pb_utils

    return pb_utils.Tensor(name, np.array([[value.encode("utf-8")]], dtype=np.object_))


def int_tensor(name: str, value: int):
    import triton_python_backend_utils as pb_utils

    return pb_utils.Tensor(name, np.array([[value]], dtype=np.int64))


def bool_tensor(name: str, value: bool):
    import triton_python_backend_utils as pb_utils

    return pb_utils.Tensor(name, np.array([[value]], dtype=bool))
