"""The errors our models answer with, each carrying the Triton error code a caller can branch on.

Triton keeps the code of an error response end to end: gRPC callers that ask for it (the
`triton_grpc_error` header) get it as the stream's status, HTTP callers as the status code (400, 404,
503, 500). The message names the field, the limit or the setting that moves it.
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


def triton_error(error: Exception):
    """`error` as a pb_utils.TritonError with its code (INTERNAL for anything not a ServiceError)."""
    import triton_python_backend_utils as pb_utils

    code = error.code if isinstance(error, ServiceError) else "INTERNAL"
    return pb_utils.TritonError(str(error), getattr(pb_utils.TritonError, code))


def error_response(error: Exception):
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error(error))


def from_code(code: str, message: str) -> ServiceError:
    """The ServiceError of a Triton error code's name (as memory answers the chat model's calls)."""
    kinds = {cls.code: cls for cls in (BadRequest, NotFound, Unavailable)}
    return kinds.get(code, ServiceError)(message)
