"""Python client for the service: chat (streamed) and the direct memory operations, over Triton gRPC
(default) or HTTP, built on tritonclient.

    client = Client("grpc://localhost:8001")
    reply = client.chat("conv-1", "My dog is called Rex.")
    for chunk in client.stream_chat("conv-1", "What is my dog called?"): print(chunk.text, end="")
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlparse

from imem_client import wire
from imem_client.wire import Chunk, Code, ServiceError

__all__ = ["ChatReply", "Chunk", "Client", "Code", "ServiceError", "default_url"]


@dataclass
class ChatReply:
    text: str
    conversation_id: str
    turn: int
    reply_turn: int
    prompt_tokens: int
    completion_tokens: int
    recalled: list
    finish_reason: str
    chunks: int

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "conversation_id": self.conversation_id,
            "turn": self.turn,
            "reply_turn": self.reply_turn,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "recalled": [{"turn": r["turn"], "score": r["score"], "text": r["text"]} for r in self.recalled],
            "finish_reason": self.finish_reason,
        }


def default_url() -> str:
    return os.environ.get("IMEM_URL") or f"grpc://localhost:{os.environ.get('GRPC_PORT', '8001')}"


class Client:
    def __init__(self, url: str | None = None, timeout: float = 300.0):
        url = url or default_url()
        parsed = urlparse(url if "://" in url else f"grpc://{url}")
        self.protocol = parsed.scheme
        self.address = parsed.netloc
        self.timeout = timeout
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._grpc = grpcclient
            self._client = grpcclient.InferenceServerClient(self.address, channel_args=wire.GRPC_CHANNEL_ARGS)
        elif self.protocol in ("http", "https"):
            import requests
            import tritonclient.http as httpclient

            self._http, self._requests = httpclient, requests
            self._client = httpclient.InferenceServerClient(self.address, ssl=self.protocol == "https",
                                                            network_timeout=timeout, connection_timeout=timeout)
            self._session = requests.Session()
        else:
            raise ValueError(f"unsupported URL scheme {parsed.scheme!r}: use grpc://host:port or http://host:port")
        self._stream_lock = threading.Lock()

    # ---- chat ---------------------------------------------------------------------------------------
    def chat(self, conversation_id: str, message: str, tenant: str = "default", sampling: dict | None = None,
             system: str = "", stream: bool = True, recall_policy: str = "") -> ChatReply:
        parts, final, count = [], None, 0
        for chunk in self.stream_chat(conversation_id, message, tenant, sampling, system, stream, recall_policy):
            parts.append(chunk.text)
            count += 1
            final = chunk if chunk.final else final
        if final is None:
            raise ServiceError("the stream ended without a final response")
        return ChatReply("".join(parts), conversation_id, final.turn, final.reply_turn, final.prompt_tokens,
                         final.completion_tokens, final.recalled, final.finish_reason, count)

    def stream_chat(self, conversation_id: str, message: str, tenant: str = "default",
                    sampling: dict | None = None, system: str = "", stream: bool = True,
                    recall_policy: str = "") -> Iterator[Chunk]:
        """`recall_policy`: one of the benchmarks' reference policies instead of memory's own (imem/recall.py)."""
        yield from self.stream(wire.chat_fields(conversation_id, message, tenant, stream, sampling, system,
                                                recall_policy))

    def generate(self, prompt: str, sampling: dict | None = None, stream: bool = True) -> Iterator[Chunk]:
        """A plain generation on the chat model (`text_input`): no memory; the prompt as given."""
        yield from self.stream(wire.prompt_fields(prompt, stream, sampling))

    def stream(self, fields: dict) -> Iterator[Chunk]:
        """The chat model's responses to one request of `fields` (wire.chat_fields, wire.prompt_fields)."""
        if self.protocol == "grpc":
            yield from self._grpc_stream(fields)
        else:
            yield from self._http_stream(fields)

    def _grpc_stream(self, fields: dict) -> Iterator[Chunk]:
        responses: queue.Queue = queue.Queue()
        ended = False  # the server ended the request (its final response, or an error)
        # One tritonclient stream at a time per client object; use one Client per thread for concurrency.
        with self._stream_lock:
            self._client.start_stream(callback=lambda result, error: responses.put((result, error)),
                                      stream_timeout=self.timeout)
            try:
                try:
                    self._client.async_stream_infer(wire.CHAT, wire.inputs(self._grpc, fields),
                                                    request_id=uuid.uuid4().hex, enable_empty_final_response=True)
                except Exception as error:  # the stream has already failed: gRPC's reason went to the callback
                    ended = True  # nothing in flight to cancel
                    with contextlib.suppress(queue.Empty):
                        error = responses.get(timeout=5)[1] or error
                    raise self._grpc_failure(error) from None
                while True:
                    result, failed = responses.get(timeout=self.timeout)
                    if failed is not None:
                        ended = True
                        raise self._grpc_failure(failed)
                    response = result.get_response()
                    final = response.parameters.get("triton_final_response")
                    ended = final is not None and final.bool_param
                    if response.outputs:
                        yield Chunk.from_values(wire.result_values(result))
                    if ended:
                        return
            finally:
                # A request still running (the caller stopped reading) is cancelled; a finished one's stream
                # is closed, not cancelled: Triton 2.51 can keep a stream cancelled just after its final
                # response in flight for good, and its model then holds up a graceful stop.
                stream = self._client._stream
                self._client.stop_stream(cancel_requests=not ended)
                if not ended:
                    # tritonclient (2.73) never ends the request iterator of a cancelled stream, so gRPC's
                    # thread that reads it would wait for good (a thread per cancelled chat): its end marker.
                    stream._request_queue.put(None)

    def _grpc_failure(self, error: Exception) -> ServiceError:
        """The error as a ServiceError; UNAVAILABLE from a server that does not answer at all says so."""
        failure = wire.grpc_error(error)
        if failure.code == Code.UNAVAILABLE and not self._answers():
            return ServiceError(f"the server at {self.address} is unavailable (connection refused or lost): "
                                f"{failure}", Code.UNAVAILABLE)
        return failure

    def _answers(self) -> bool:
        try:
            return bool(self._client.is_server_live(client_timeout=5))
        except Exception:  # any failure to answer: not reachable
            return False

    def _http_stream(self, fields: dict) -> Iterator[Chunk]:
        base = f"{self.protocol}://{self.address}/v2/models/{wire.CHAT}"
        try:
            if not fields.get("stream", True):
                response = self._session.post(f"{base}/generate", json=fields, timeout=self.timeout)
                body = response.json()
                if response.status_code != 200 or "error" in body:
                    raise wire.http_error(response.status_code, response.text)
                yield Chunk.from_values(body)
                return
            with self._session.post(f"{base}/generate_stream", json=fields, stream=True,
                                    timeout=self.timeout) as response:
                if response.status_code != 200:
                    raise wire.http_error(response.status_code, response.text)
                for body in wire.sse_events(response.iter_lines()):
                    if "error" in body:
                        raise wire.parse_error(body["error"])
                    yield Chunk.from_values(body)
        except self._requests.ConnectionError as error:
            raise ServiceError(f"the server at {self.address} is unavailable (connection refused or lost): "
                               f"{error}", Code.UNAVAILABLE) from None

    # ---- direct memory operations ------------------------------------------------------------------
    def recall(self, conversation_id: str, query: str, tenant: str = "default", policy: str | None = None) -> dict:
        """What memory would put in the prompt for `query`. `policy` picks a benchmark reference policy
        ("recency", "dense", "full"); chat always uses "default"."""
        if policy:
            return self._memory("recall", conversation_id, tenant, message=query,
                                payload=json.dumps({"policy": policy}))
        return self._memory("recall", conversation_id, tenant, message=query)

    def ingest(self, conversation_id: str, history: list[dict] | str, tenant: str = "default") -> dict:
        lines = history if isinstance(history, str) else "\n".join(json.dumps(h) for h in history)
        return self._memory("ingest", conversation_id, tenant, payload=lines)

    def export(self, conversation_id: str, tenant: str = "default") -> dict:
        return self._memory("export", conversation_id, tenant)

    def delete(self, conversation_id: str, tenant: str = "default") -> dict:
        return self._memory("delete", conversation_id, tenant)

    def _memory(self, operation: str, conversation_id: str, tenant: str, **extra: str) -> dict:
        module = self._grpc if self.protocol == "grpc" else self._http
        inputs = wire.inputs(module, wire.memory_fields(operation, conversation_id, tenant, **extra))
        outputs = [module.InferRequestedOutput("result")]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(wire.MEMORY, inputs, outputs=outputs, client_timeout=self.timeout)
            else:
                result = self._client.infer(wire.MEMORY, inputs, outputs=outputs)
        except Exception as error:  # tritonclient raises InferenceServerException with the server's text
            raise self._unary_failure(error) from None
        return json.loads(wire.scalar(result.as_numpy("result")))

    def _unary_failure(self, error: Exception) -> ServiceError:
        if self.protocol == "grpc":
            return self._grpc_failure(error)
        # tritonclient.http: status() is the HTTP status as text, or None when nothing answered
        status = error.status() if hasattr(error, "status") else None
        if status is None or not str(status).isdigit():
            return ServiceError(f"the server at {self.address} is unavailable (connection refused or lost): "
                                f"{error}", Code.UNAVAILABLE)
        return wire.http_error(int(status), error.message() if hasattr(error, "message") else str(error))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # An HTTP connection left open holds up Triton's graceful stop for its whole exit timeout.
        self._client.close()
        if self.protocol in ("http", "https"):
            self._session.close()
