"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status
the SDKs map to their exception classes (401 AuthenticationError, 429 RateLimitError, ...)."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, code=code)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


def rate_limited(message: str, retry_after: float) -> ApiError:
    seconds = max(1, int(retry_after + 0.999))
    return ApiError(429, f"{message}; retry after {seconds} s", type="requests", code="rate_limit_exceeded",
                    headers={"Retry-After": str(seconds)})


def upstream(status: int, message: str) -> ApiError:
    """Triton failed (502) or cannot be reached (503): not the caller's fault."""
    return ApiError(status, message, type="server_error", code="upstream_unavailable" if status == 503 else
                    "upstream_error")


def overloaded(message: str, retry_after: int = 1) -> ApiError:
    """Triton refused the request for capacity (503 with Retry-After, as OpenAI answers when overloaded)."""
    return ApiError(503, message, type="server_error", code="server_overloaded",
                    headers={"Retry-After": str(retry_after)})
