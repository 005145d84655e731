"""The gateway's one connection to Triton: a single shared tritonclient.grpc.aio client (one HTTP/2
channel) on which every request opens its own bidirectional stream to the `chat` ensemble, and unary
calls to the `memory` model for ingest, export and delete."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from imem_gateway.errors import ApiError, bad_request, not_found, overloaded, upstream

# Our backends prefix their own failures this way; any other error a model returns is a rejected request.
SERVER_FAILURES = ("generation failed", "memory failed", "embedder failed", "embedder:")
log = logging.getLogger("imem.gateway")
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


@dataclass
class Reply:
    """One ensemble response: a text delta, and on the last one the finish reason and the usage."""
    text: str
    finish_reason: str = ""
    turn: int = 0
    reply_turn: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    recalled: list = field(default_factory=list)


def _value(result, name: str):
    array = result.as_numpy(name)
    if array is None:
        return None
    item = array.reshape(-1)[0]
    return item.decode("utf-8") if isinstance(item, bytes) else item.item()


def _reply(result) -> Reply:
    values = {o.name: _value(result, o.name) for o in result.get_response().outputs}
    return Reply(values.get("text_output") or "", values.get("finish_reason") or "", int(values.get("turn") or 0),
                 int(values.get("reply_turn") or 0), int(values.get("prompt_tokens") or 0),
                 int(values.get("completion_tokens") or 0), json.loads(values.get("recalled") or "[]"))


def _inputs(fields: dict) -> list:
    tensors = []
    for name, value in fields.items():
        if isinstance(value, bool):
            tensor = triton.InferInput(name, [1, 1], "BOOL")
            tensor.set_data_from_numpy(np.array([[value]], dtype=bool))
        else:
            tensor = triton.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
        tensors.append(tensor)
    return tensors


def model_error(message: str) -> ApiError:
    """An error a model answered with, as the HTTP error the caller should see."""
    # Triton prefixes ensemble errors with "in ensemble 'chat', "; the rest is our model's message.
    text = message.split("in ensemble 'chat', ", 1)[-1].strip()
    if any(marker in text for marker in SERVER_FAILURES):
        return upstream(502, f"the model server failed: {text}")
    if text.startswith("busy:"):  # llm's back-pressure: nothing was stored for the request
        return overloaded(f"the model server is at capacity ({text.removeprefix('busy:').strip()})")
    if "unknown conversation" in text:
        return not_found(text, code="conversation_not_found")
    if "not ready" in text or "unavailable" in text.lower() or "unknown model" in text:  # models not loaded
        return upstream(503, f"the model server is not ready: {text}")
    param = "messages" if "'message'" in text else None
    return bad_request(text, param)


def rpc_error(error: Exception) -> ApiError:
    if isinstance(error, grpc.aio.AioRpcError):
        status = 503 if error.code() in UNREACHABLE else 502
        return upstream(status, f"the model server did not answer: {error.code().name} {error.details()}")
    if isinstance(error, InferenceServerException):
        status = 503 if "unavailable" in str(error).lower() else 502
        return upstream(status, f"the model server did not answer: {error.message()}")
    return upstream(502, f"the model server failed: {error!r}")


class Triton:
    def __init__(self, address: str, timeout: float):
        self.client = triton.InferenceServerClient(address)
        self.timeout = timeout

    async def close(self) -> None:
        await self.client.close()

    async def ready(self) -> bool:
        try:
            return await self.client.is_server_ready(client_timeout=5)
        except Exception:  # any failure to answer means not ready
            return False

    async def chat(self, fields: dict) -> AsyncIterator[Reply]:
        """Streams the ensemble's responses; stops after the one that carries the finish reason."""
        finished = asyncio.Event()
        request_id = uuid.uuid4().hex

        async def requests():
            yield {"model_name": "chat", "inputs": _inputs(fields), "request_id": request_id}
            # Keep our side of the stream open until the final response: the request is over then.
            await finished.wait()

        call = self.client.stream_infer(requests(), stream_timeout=self.timeout)
        try:
            async for result, error in call:
                if error is not None:
                    finished.set()  # Triton ended the request itself
                    raise model_error(error.message())
                reply = _reply(result)
                if reply.finish_reason:
                    finished.set()
                yield reply
                if finished.is_set():
                    return
            raise upstream(502, "the model server ended the stream without a final response")
        except ApiError:
            raise
        except Exception as error:
            raise rpc_error(error) from None
        finally:
            if not finished.is_set():
                log.info("request %s ended before its final response: cancelling it in Triton", request_id)
            finished.set()
            # Cancelling after the final response is a no-op; before it (client gone), Triton aborts generation.
            call.cancel()

    async def memory(self, operation: str, tenant: str, conversation_id: str, **extra: str) -> dict:
        fields = {"operation": operation, "conversation_id": conversation_id, "tenant": tenant, **extra}
        try:
            result = await self.client.infer("memory", _inputs(fields),
                                             outputs=[triton.InferRequestedOutput("result")],
                                             client_timeout=self.timeout)
        except InferenceServerException as error:
            status = error.status() or ""
            if "UNAVAILABLE" in status or "DEADLINE" in status:
                raise rpc_error(error) from None
            raise model_error(error.message()) from None
        return json.loads(_value(result, "result"))
