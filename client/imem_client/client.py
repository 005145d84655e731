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
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import urlparse

import numpy as np


class ServiceError(RuntimeError):
    """The server rejected or failed the request (the message is the server's), or could not be reached."""


def _service_error(error: Exception, address: str) -> ServiceError:
    """tritonclient's error as a ServiceError. gRPC words a refused or cut connection a dozen ways ("Socket
    closed", "Stream removed", "failed to connect to all addresses", ...); all of them are UNAVAILABLE."""
    message = error.message() if hasattr(error, "message") else str(error)
    if hasattr(error, "status") and error.status() == "StatusCode.UNAVAILABLE":
        return ServiceError(f"the server at {address} is unavailable (connection refused or lost): {message}")
    return ServiceError(message)


@dataclass
class Chunk:
    text: str
    finish_reason: str = ""
    turn: int = 0  # the stored user turn (from the first response on)
    reply_turn: int = 0  # the stored reply (final response)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    recalled: list = field(default_factory=list)

    @property
    def final(self) -> bool:
        return bool(self.finish_reason)


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


def _chunk_from(values: dict) -> Chunk:
    recalled = values.get("recalled") or "[]"
    return Chunk(
        text=values.get("text_output", ""),
        finish_reason=values.get("finish_reason", ""),
        turn=int(values.get("turn", 0)),
        reply_turn=int(values.get("reply_turn", 0)),
        prompt_tokens=int(values.get("prompt_tokens", 0)),
        completion_tokens=int(values.get("completion_tokens", 0)),
        recalled=json.loads(recalled) if isinstance(recalled, str) else recalled,
    )


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
            self._client = grpcclient.InferenceServerClient(self.address)
        elif self.protocol in ("http", "https"):
            import requests
            import tritonclient.http as httpclient

            self._http = httpclient
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
        fields = {"conversation_id": conversation_id, "message": message, "tenant": tenant, "stream": stream,
                  "sampling_parameters": json.dumps(sampling or {})}
        if system:
            fields["system"] = system
        if recall_policy:
            fields["recall_policy"] = recall_policy
        if self.protocol == "grpc":
            yield from self._grpc_stream("chat", fields)
        else:
            yield from self._http_stream("chat", fields)

    def _grpc_stream(self, model: str, fields: dict) -> Iterator[Chunk]:
        grpc = self._grpc
        inputs = []
        for name, value in fields.items():
            if isinstance(value, bool):
                tensor = grpc.InferInput(name, [1, 1], "BOOL")
                tensor.set_data_from_numpy(np.array([[value]], dtype=bool))
            else:
                tensor = grpc.InferInput(name, [1, 1], "BYTES")
                data = value if isinstance(value, bytes) else value.encode("utf-8")
                tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            inputs.append(tensor)
        responses: queue.Queue = queue.Queue()
        # One tritonclient stream at a time per client object; use one Client per thread for concurrency.
        with self._stream_lock:
            self._client.start_stream(callback=lambda result, error: responses.put((result, error)),
                                      stream_timeout=self.timeout)
            try:
                try:
                    self._client.async_stream_infer(model, inputs, request_id=uuid.uuid4().hex,
                                                    enable_empty_final_response=True)
                except Exception as error:  # the stream has already failed: gRPC's reason went to the callback
                    with contextlib.suppress(queue.Empty):
                        error = responses.get(timeout=5)[1] or error
                    raise _service_error(error, self.address) from None
                while True:
                    result, error = responses.get(timeout=self.timeout)
                    if error is not None:
                        raise _service_error(error, self.address)
                    response = result.get_response()
                    final = response.parameters.get("triton_final_response")
                    if response.outputs:
                        yield _chunk_from({o.name: _scalar(result.as_numpy(o.name)) for o in response.outputs})
                    if final is not None and final.bool_param:
                        return
            finally:
                self._client.stop_stream(cancel_requests=True)

    def _http_stream(self, model: str, fields: dict) -> Iterator[Chunk]:
        base = f"{self.protocol}://{self.address}/v2/models/{model}"
        if not fields.get("stream", True):
            response = self._session.post(f"{base}/generate", json=fields, timeout=self.timeout)
            body = response.json()
            if response.status_code != 200 or "error" in body:
                raise ServiceError(body.get("error", response.text))
            yield _chunk_from(body)
            return
        with self._session.post(f"{base}/generate_stream", json=fields, stream=True, timeout=self.timeout) as response:
            if response.status_code != 200:
                raise ServiceError(response.json().get("error", response.text))
            for body in sse_events(response.iter_lines()):
                if "error" in body:
                    raise ServiceError(body["error"])
                yield _chunk_from(body)

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
        fields = {"operation": operation, "conversation_id": conversation_id, "tenant": tenant, **extra}
        inputs = []
        for name, value in fields.items():
            tensor = module.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput("result")]
        try:
            if self.protocol == "grpc":
                result = self._client.infer("memory", inputs, outputs=outputs, client_timeout=self.timeout)
            else:
                result = self._client.infer("memory", inputs, outputs=outputs)
        except Exception as error:  # tritonclient raises InferenceServerException with the server's text
            raise _service_error(error, self.address) from None
        return json.loads(_scalar(result.as_numpy("result")))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # An HTTP connection left open holds up Triton's graceful stop for its whole exit timeout.
        self._client.close()
        if self.protocol in ("http", "https"):
            self._session.close()


def sse_events(lines: Iterable[bytes]) -> Iterator[dict]:
    """The JSON events of a server-sent-event stream, given its lines as bytes. Bytes, because decoded text
    would also be split at U+2028, U+0085, ..., which JSON allows unescaped inside a string."""
    for line in lines:
        if line.startswith(b"data:"):
            yield json.loads(line[5:])


def _scalar(array):
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value
