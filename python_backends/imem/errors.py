"""The errors our models answer with, each carrying the Triton error code a caller can branch on.

HTTP callers get the code as the status (400, 404, 503, 500), unary gRPC callers as the status; a gRPC
stream carries only the message in Triton 2.51, so the message ends with the code as a tag
(" [not_found]"), which the client library reads back (imem_client/wire.py). The message names the field,
the limit or the setting that moves it.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service could not serve; `code` is the name of a pb_utils.TritonError code."""
    code = "INTERNAL"


class BadRequest(ServiceError, ValueError):
    """The request is wrong; the message names the field and the problem. Nothing was stored."""
    code = "INVALID_ARG"


class NotFound(ServiceError):
    """An unknown conversation, or one deleted while an exchange of it was in flight."""
    code = "NOT_FOUND"


class Unavailable(ServiceError):
    """Not now: generations at their limit, the engine restarting, the store full or busy. Retry later."""
    code = "UNAVAILABLE"


TAGS = {"INVALID_ARG": "invalid", "NOT_FOUND": "not_found", "UNAVAILABLE": "unavailable", "INTERNAL": "internal"}


def triton_error(error: Exception):
    """`error` as a pb_utils.TritonError with its code, and its code's tag at the end of the message
    (INTERNAL for anything not a ServiceError)."""
    import triton_python_backend_utils as pb_utils

    code = error.code if isinstance(error, ServiceError) else "INTERNAL"
    return pb_utils.TritonError(f"{error} [{TAGS[code]}]", getattr(pb_utils.TritonError, code))


def error_response(error: Exception):
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error(error))


def from_code(code: str, message: str) -> ServiceError:
    """The ServiceError of a Triton error code's name (as memory answers the chat model's calls)."""
    kinds = {cls.code: cls for cls in (BadRequest, NotFound, Unavailable)}
    return kinds.get(code, ServiceError)(message)
