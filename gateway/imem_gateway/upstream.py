"""The gateway's one connection to Triton: a single shared tritonclient.grpc.aio client (one HTTP/2
channel) on which every chat opens its own bidirectional stream to the `chat` model, and unary calls to
the `memory` model for ingest, export and delete. Triton's error codes become HTTP errors here."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import AsyncGenerator

import tritonclient.grpc.aio as triton

from imem_client import wire
from imem_client.wire import Chunk, Code, ServiceError
from imem_gateway.errors import ApiError, bad_request, not_found, overloaded, upstream

log = logging.getLogger("imem.gateway")


def api_error(error: ServiceError) -> ApiError:
    """What the caller should see for an error Triton answered with (or for Triton not answering)."""
    if error.code == Code.INVALID:
        return bad_request(str(error), "messages" if "'message'" in str(error) else None)
    if error.code == Code.NOT_FOUND:
        return not_found(str(error), code="conversation_not_found")
    if error.code == Code.UNAVAILABLE:  # busy, restarting, a full store, or Triton not reachable: retry
        return overloaded(f"the model server cannot serve this now: {error}")
    return upstream(502, f"the model server failed: {error}")


class Upstream:
    def __init__(self, address: str, timeout: float):
        self.client = triton.InferenceServerClient(address, channel_args=wire.GRPC_CHANNEL_ARGS)
        self.timeout = timeout

    async def close(self) -> None:
        await self.client.close()

    async def ready(self) -> bool:
        try:
            return await self.client.is_server_ready(client_timeout=5)
        except Exception:  # any failure to answer means not ready
            return False

    async def chat(self, fields: dict) -> AsyncGenerator[Chunk, None]:
        """Streams the chat model's responses; stops after the one that carries the finish reason."""
        finished = asyncio.Event()
        request_id = uuid.uuid4().hex

        async def requests():
            yield {"model_name": wire.CHAT, "inputs": wire.inputs(triton, fields), "request_id": request_id}
            # Keep our side of the stream open until the final response: Triton cancels the requests of a
            # stream whose client has finished sending.
            await finished.wait()

        call = self.client.stream_infer(requests(), stream_timeout=self.timeout)
        try:
            async for result, error in call:
                if error is not None:
                    finished.set()  # Triton ended the request itself
                    raise api_error(wire.grpc_error(error))
                chunk = Chunk.from_values(wire.result_values(result))
                if chunk.final:
                    finished.set()
                yield chunk
                if finished.is_set():
                    return
            raise upstream(502, "the model server ended the stream without a final response")
        except ApiError:
            raise
        except Exception as error:  # the channel failed: Triton not reachable, or gone mid-stream
            raise api_error(wire.grpc_error(error)) from None
        finally:
            if not finished.is_set():
                # The caller went away before the final response: cancelling stops the generation. A
                # finished stream is closed, not cancelled: Triton 2.51 can keep a stream cancelled just after
                # its final response in flight for good (and its model then holds up a graceful stop).
                log.info("request %s ended before its final response: cancelling it in Triton", request_id)
                call.cancel()
            finished.set()

    async def memory(self, operation: str, tenant: str, conversation_id: str, **extra: str) -> dict:
        try:
            result = await self.client.infer(wire.MEMORY,
                                             wire.inputs(triton, wire.memory_fields(operation, conversation_id,
                                                                                    tenant, **extra)),
                                             outputs=[triton.InferRequestedOutput("result")],
                                             client_timeout=self.timeout)
        except Exception as error:
            raise api_error(wire.grpc_error(error)) from None
        return json.loads(wire.scalar(result.as_numpy("result")))
