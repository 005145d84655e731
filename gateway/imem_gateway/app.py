"""The gateway's HTTP routes (FastAPI): OpenAI chat completions, models, health, and conversation
export/delete. Every route but /health needs an API key; the key decides the tenant."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from contextlib import asynccontextmanager, nullcontext
from typing import Any, AsyncGenerator, AsyncIterator

from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from imem_client import wire
from imem_client.wire import Chunk
from imem_gateway import translate
from imem_gateway.body_limit import BodyLimit
from imem_gateway.errors import ApiError, rate_limited, unauthorized, upstream
from imem_gateway.keys import ApiKey, KeyRing
from imem_gateway.ratelimit import RateLimiter
from imem_gateway.schema import ChatCompletionRequest
from imem_gateway.settings import Settings
from imem_gateway.translate import ChatTurn
from imem_gateway.upstream import Upstream
from imem_gateway.validation import validation_error

log = logging.getLogger("imem.gateway")
ERRORS: dict[int | str, dict[str, Any]] = {status: {"description": text} for status, text in (
    (400, "bad request"), (401, "missing or invalid API key"), (404, "unknown conversation"),
    (429, "rate limited (see Retry-After)"), (502, "Triton failed"), (503, "Triton unreachable"))}


class Gateway:
    """What the routes share: the Triton client (one per process), the keys and the rate limiter."""

    def __init__(self, settings: Settings, keys: KeyRing):
        self.settings = settings
        self.keys = keys
        self.limiter = RateLimiter()
        self.upstream: Upstream | None = None
        # Seeding a new conversation is check-then-write; striped locks keep two first requests of the
        # same conversation from both writing its history.
        self.seed_locks = [asyncio.Lock() for _ in range(64)]

    @property
    def triton(self) -> Upstream:
        """The Triton client, which the app's lifespan opens and closes."""
        if self.upstream is None:
            raise RuntimeError("the gateway's Triton client is not open (the app's lifespan has not started)")
        return self.upstream

    def seed_lock(self, tenant: str, conversation_id: str) -> asyncio.Lock:
        return self.seed_locks[zlib.crc32(f"{tenant}\0{conversation_id}".encode()) % len(self.seed_locks)]

    async def seed(self, tenant: str, turn: ChatTurn) -> bool:
        """Stores the client's earlier messages if the conversation is new; True if it did."""
        try:  # recall answers 404 for an unknown conversation; unlike export, its answer stays small
            await self.triton.memory("recall", tenant, turn.conversation_id, message=".")
            return False  # known conversation: memory already holds its history, resent or not
        except ApiError as error:
            if error.status != 404:
                raise
        payload = "\n".join(json.dumps({"role": h["role"], "text": h["text"]}) for h in turn.history)
        await self.triton.memory("ingest", tenant, turn.conversation_id, payload=payload)
        return True

    async def converse(self, key: ApiKey, turn: ChatTurn) -> AsyncIterator[Chunk]:
        """Starts the turn; errors before the first response (bad request, Triton down) raise here, so
        they get a real HTTP status even for a streamed reply."""
        fields = wire.chat_fields(turn.conversation_id, turn.message, key.tenant, turn.stream, turn.sampling,
                                  turn.system)
        async with self.seed_lock(key.tenant, turn.conversation_id) if turn.history else nullcontext():
            seeded = bool(turn.history) and await self.seed(key.tenant, turn)
            replies = self.triton.chat(fields)
            try:
                first = await anext(replies)
            except (ApiError, StopAsyncIteration) as error:
                if seeded:  # the turn was refused: take back the history we stored for it
                    await self.triton.memory("delete", key.tenant, turn.conversation_id)
                raise (error if isinstance(error, ApiError) else upstream(502, "no response from the model")) from None
        return self._rest(key, first, replies)

    async def _rest(self, key: ApiKey, first: Chunk, replies: AsyncGenerator[Chunk, None]) -> AsyncIterator[Chunk]:
        try:
            reply = first
            yield reply
            while not reply.finish_reason:
                reply = await anext(replies)
                yield reply
            self.limiter.charge(key.digest, key.tokens_per_minute, reply.prompt_tokens + reply.completion_tokens)
        finally:
            await replies.aclose()


def create_app(settings: Settings, keys: KeyRing) -> FastAPI:
    gateway = Gateway(settings, keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gateway.upstream = Upstream(settings.triton_address, settings.timeout)
        try:
            yield
        finally:
            await gateway.upstream.close()

    app = FastAPI(title="Infinite Memory Inference: OpenAI-compatible gateway", version="1",
                  lifespan=lifespan)
    app.state.gateway = gateway
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="an API key from IMEM_API_KEYS or IMEM_API_KEYS_FILE")

    async def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
        if credentials is None:
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        key = keys.find(credentials.credentials)
        if key is None:
            raise unauthorized("invalid API key")
        refused = gateway.limiter.admit(key.digest, key.requests_per_minute, key.tokens_per_minute)
        if refused:
            limit, wait = refused
            raise rate_limited(f"rate limit reached for key '{key.name}' ({limit})", wait)
        return key

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return validation_error(error.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return ApiError(error.status_code, str(error.detail), code=None).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return ApiError(500, "internal error in the gateway", type="server_error").response()

    @app.get("/health", summary="gateway and Triton readiness (no key needed)", responses=ERRORS)
    async def health():
        if not await gateway.triton.ready():
            raise upstream(503, "Triton is not ready")
        return {"status": "ok"}

    @app.get("/v1/models", responses=ERRORS)
    async def models(key: ApiKey = Depends(caller)):
        return {"object": "list", "data": [model_card(settings.model)]}

    @app.get("/v1/models/{model}", responses=ERRORS)
    async def model(model: str, key: ApiKey = Depends(caller)):
        if model != settings.model:
            raise ApiError(404, f"the model '{model}' does not exist; this gateway serves '{settings.model}'",
                           param="model", code="model_not_found")
        return model_card(settings.model)

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(body: ChatCompletionRequest, key: ApiKey = Depends(caller),
                               x_conversation_id: str | None = Header(None, description="the conversation id")):
        turn = translate.to_turn(body, translate.conversation_id(x_conversation_id, body.user))
        replies = await gateway.converse(key, turn)
        if turn.stream:
            return StreamingResponse(sse(replies, settings.model, turn), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        parts, final = [], None
        async for reply in replies:
            parts.append(reply.text)
            final = reply
        return translate.completion(translate.completion_id(), settings.model, "".join(parts), final,
                                    turn.conversation_id)

    conversation_path = Path(description="the conversation id (X-Conversation-Id or `user` of the chat requests)")

    @app.get("/v1/conversations/{conversation_id:path}", summary="export a conversation's stored turns",
             responses=ERRORS)
    async def export_conversation(conversation_id: str = conversation_path, key: ApiKey = Depends(caller)):
        conversation = translate.conversation_id(conversation_id, None, param="conversation_id")
        result = await gateway.triton.memory("export", key.tenant, conversation)
        return {"object": "conversation", "id": conversation, "turns": result["turns"]}

    @app.delete("/v1/conversations/{conversation_id:path}", summary="delete a conversation and all its turns",
                responses=ERRORS)
    async def delete_conversation(conversation_id: str = conversation_path, key: ApiKey = Depends(caller)):
        conversation = translate.conversation_id(conversation_id, None, param="conversation_id")
        result = await gateway.triton.memory("delete", key.tenant, conversation)
        return {"object": "conversation.deleted", "id": conversation, "deleted": True,
                "turns_deleted": result["deleted"]}

    return app


def model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "imem"}


def event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def sse(replies: AsyncIterator[Chunk], model: str, turn: ChatTurn) -> AsyncIterator[str]:
    """OpenAI's chunk stream: a role chunk, content deltas, a finish chunk (with our `memory` field),
    the usage chunk if asked for, then [DONE]. A failure mid-stream is sent as an error event."""
    cid, created = translate.completion_id(), int(time.time())
    usage = {"usage": None} if turn.include_usage else {}
    yield event(translate.chunk(cid, model, created, {"role": "assistant", "content": ""}, **usage))
    try:
        async for reply in replies:
            if reply.text:
                yield event(translate.chunk(cid, model, created, {"content": reply.text}, **usage))
            final = reply
    except ApiError as error:
        yield event(error.body())
        return
    yield event(translate.chunk(cid, model, created, {}, translate.finish_reason(final.finish_reason), **usage,
                                memory=translate.memory_field(turn.conversation_id, final.turn, final.reply_turn,
                                                              final.recalled)))
    if turn.include_usage:
        yield event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": None, "choices": [],
                     "usage": translate.usage(final.prompt_tokens, final.completion_tokens)})
    yield event("[DONE]")
