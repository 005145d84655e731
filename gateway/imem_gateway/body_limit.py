"""A cap on request bodies (IMEM_GATEWAY_MAX_BODY_BYTES), enforced before the body is read into memory.

Uvicorn and FastAPI read any body a client sends; a body over the cap is refused with OpenAI's error
shape and 413, whether it announces its size (Content-Length) or streams it in chunks."""

from __future__ import annotations

from imem_gateway.errors import ApiError


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware, so that a refused body is never buffered whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen, too_large = 0, False

        async def limited_receive():
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message):
            if not too_large:  # once over the cap, the app's own answer (a parse error) is replaced
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if too_large:
            await self._refuse(send)

    async def _refuse(self, send):
        response = ApiError(413, f"the request body is larger than {self.max_bytes} bytes "
                                 f"(IMEM_GATEWAY_MAX_BODY_BYTES)", code="request_too_large").response()
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
