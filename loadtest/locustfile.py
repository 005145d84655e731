"""Locust load test of the `chat` ensemble: every simulated user holds its own multi-turn conversation.

A conversation states a few personal facts early, chats a little, then asks about the facts; after its
last turn the user starts a new conversation. Two kinds of user, both streaming tokens:

  GrpcChatUser  Triton gRPC ModelStreamInfer through tritonclient.grpc   (URL: IMEM_URL, grpc://host:port)
  HttpChatUser  Triton HTTP /v2/models/chat/generate_stream, SSE        (URL: --host or IMEM_HTTP_URL)

Each chat turn is reported as two Locust entries, "<protocol> chat: first token" (time to the first
non-empty text chunk) and "<protocol> chat: full response" (time to the final response; its content
size is the number of completion tokens, so tokens/s = requests/s x average content size), or as one,
"<protocol> chat: refused (busy)", when the server refused it for capacity (a failure). A third,
"<protocol> memory: fact recalled", is a check and never a failure: content size 1 when the turn that
stated the fact asked about came back in `recalled`, else 0 (so its average is the hit rate).

    locust -f loadtest/locustfile.py                          # web UI on http://localhost:8089
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 60s GrpcChatUser
    make loadtest USERS=8 DURATION=60s                        # headless, CSV + HTML + summary in results/

Settings (environment): IMEM_URL / GRPC_PORT, IMEM_HTTP_URL / HTTP_PORT, IMEM_LOADTEST_MAX_TOKENS (32),
IMEM_LOADTEST_THINK ("0", or "0.5-2" seconds between turns), IMEM_LOADTEST_TURNS (10 per conversation),
IMEM_LOADTEST_TENANT (loadtest), IMEM_LOADTEST_SEED (0).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from itertools import count

import grpc.experimental.gevent as grpc_gevent
import numpy as np
import tritonclient.grpc as grpcclient
from locust import HttpUser, User, between, constant, task

from imem_bench.synthetic import Conversation
from imem_client.client import sse_events

MAX_TOKENS = int(os.environ.get("IMEM_LOADTEST_MAX_TOKENS", "32"))
TURNS = int(os.environ.get("IMEM_LOADTEST_TURNS", "10"))
TENANT = os.environ.get("IMEM_LOADTEST_TENANT", "loadtest")
SEED = int(os.environ.get("IMEM_LOADTEST_SEED", "0"))
_user_numbers = count()
# Locust runs users as gevent greenlets: gRPC must cooperate with gevent, or a call blocked in its C core
# holds up every user.
grpc_gevent.init_gevent()


class _TritonClient(grpcclient.InferenceServerClient):
    """A tritonclient gRPC client that closes its channel once, when told to, and never from __del__.

    In gevent mode every channel close takes a lock that gRPC's gevent thread holds while it waits for the
    GIL; at interpreter exit that thread can be ended holding it. tritonclient's __del__ closes again, so a
    client finalised at exit then waited for ever: Locust printed its statistics and never exited (3 runs
    in 11; py-spy: __del__ -> close -> Channel._close -> pthread_mutex_lock, the only thread left). With
    this class: no hang in 50 runs. A second close would also count the channel down twice, which stops
    gRPC's greenlet runner while other users' channels are still open."""

    _closed = False

    def close(self):
        if not self._closed:
            self._closed = True
            super().close()

    def __del__(self):
        pass


def _think():
    spec = os.environ.get("IMEM_LOADTEST_THINK", "0")
    if "-" in spec:
        low, high = (float(x) for x in spec.split("-", 1))
        return between(low, high)
    return constant(float(spec))


def _grpc_address() -> str:
    url = os.environ.get("IMEM_URL") or f"grpc://localhost:{os.environ.get('GRPC_PORT', '8001')}"
    if url.startswith("http"):
        raise ValueError(f"IMEM_URL must be a grpc:// URL for GrpcChatUser, got {url!r}")
    return url.split("://", 1)[-1]


def _http_host() -> str:
    return os.environ.get("IMEM_HTTP_URL") or f"http://localhost:{os.environ.get('HTTP_PORT', '8000')}"


class ChatTurns:
    """What both users share: the conversation script, the sampling settings, and the reporting."""

    protocol = ""

    def on_start(self):
        number = next(_user_numbers)
        self.rng = random.Random(SEED * 100_003 + number)
        self.conversation = self._new_conversation()

    def _new_conversation(self) -> Conversation:
        return Conversation(f"lt-{uuid.uuid4().hex[:12]}", self.rng, turns=TURNS)

    @property
    def sampling(self) -> str:
        # No per-request seed: vLLM 0.32's CPU worker crashes (EngineDeadError, "CPU Generator does not use
        # offset") when a seeded request's prefill is chunked, which concurrent load makes likely.
        return json.dumps({"max_tokens": MAX_TOKENS, "temperature": 0.8})

    def next_turn(self):
        if self.conversation.done:
            self.conversation = self._new_conversation()
        message, asks_about = self.conversation.next_message()
        self.chat(message, asks_about)

    def report(self, name: str, response_time_ms: float, length: int = 0, error: Exception | None = None,
               start: float = 0.0):
        self.environment.events.request.fire(
            request_type=self.protocol, name=name, response_time=response_time_ms, response_length=length,
            exception=error, context={}, start_time=start)

    def report_turn(self, start: float, first: float | None, final: dict | None, error: Exception | None,
                    asks_about: str | None):
        done = time.perf_counter()
        name = f"{self.protocol} chat"
        if error is not None and "busy:" in str(error):  # back-pressure: refused before generating
            self.report(f"{name}: refused (busy)", (done - start) * 1000, error=error)
            return
        if error is None and final is None:
            error = RuntimeError("the stream ended without a final response")
        if error is None and first is None:
            first = done  # no text at all (an empty completion): the final response is the first token
        self.report(f"{name}: first token", ((first or done) - start) * 1000, error=error)
        tokens = int(final.get("completion_tokens", 0)) if final else 0
        self.report(f"{name}: full response", (done - start) * 1000, tokens, error=error)
        if error is None and asks_about is not None:
            recalled = final.get("recalled") or []
            if isinstance(recalled, str):
                recalled = json.loads(recalled or "[]")
            hit = any(asks_about in (r.get("text") or "") for r in recalled)
            self.report(f"{self.protocol} memory: fact recalled", 0, int(hit))


class GrpcChatUser(ChatTurns, User):
    """Triton gRPC streaming (ModelStreamInfer), one tritonclient stream per user."""

    protocol = "grpc"
    wait_time = _think()

    @task
    def turn(self):
        self.next_turn()

    def on_start(self):
        super().on_start()
        self.client = _TritonClient(_grpc_address())

    def on_stop(self):
        self.client.close()

    def _inputs(self, message: str):
        inputs = []
        for name, value in (("conversation_id", self.conversation.id), ("message", message), ("tenant", TENANT),
                            ("sampling_parameters", self.sampling)):
            tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
            inputs.append(tensor)
        tensor = grpcclient.InferInput("stream", [1, 1], "BOOL")
        tensor.set_data_from_numpy(np.array([[True]], dtype=bool))
        inputs.append(tensor)
        return inputs

    def chat(self, message: str, asks_about: str | None):
        from gevent.queue import Queue

        responses: Queue = Queue()
        start, first, final, error = time.perf_counter(), None, None, None
        self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
        try:
            self.client.async_stream_infer("chat", self._inputs(message), request_id=uuid.uuid4().hex,
                                           enable_empty_final_response=True)
            while True:
                result, failure = responses.get(timeout=300)
                if failure is not None:
                    error = RuntimeError(failure.message() if hasattr(failure, "message") else str(failure))
                    break
                response = result.get_response()
                values = {o.name: _scalar(result.as_numpy(o.name)) for o in response.outputs}
                if first is None and values.get("text_output"):
                    first = time.perf_counter()
                if values.get("finish_reason"):
                    final = values
                flag = response.parameters.get("triton_final_response")
                if flag is not None and flag.bool_param:
                    break
        except Exception as failure:  # noqa: BLE001 - every failure is reported, none stops the user
            error = failure
        finally:
            self.client.stop_stream(cancel_requests=error is not None)
        self.report_turn(start, first, final, error, asks_about)


class HttpChatUser(ChatTurns, HttpUser):
    """Triton HTTP generate_stream (server-sent events)."""

    protocol = "http"
    host = _http_host()
    wait_time = _think()

    @task
    def turn(self):
        self.next_turn()

    def on_start(self):
        import requests

        super().on_start()
        # A plain session (gevent-patched by Locust): Locust's own client would file a third entry per
        # turn, timed to the response headers only.
        self.session = requests.Session()

    def on_stop(self):
        self.session.close()

    def chat(self, message: str, asks_about: str | None):
        body = {"conversation_id": self.conversation.id, "message": message, "tenant": TENANT, "stream": True,
                "sampling_parameters": self.sampling}
        start, first, final, error = time.perf_counter(), None, None, None
        try:
            with self.session.post(f"{self.host.rstrip('/')}/v2/models/chat/generate_stream", json=body,
                                   stream=True, timeout=300) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                for event in sse_events(response.iter_lines()):
                    if "error" in event:
                        raise RuntimeError(event["error"])
                    if first is None and event.get("text_output"):
                        first = time.perf_counter()
                    if event.get("finish_reason"):
                        final = event
        except Exception as failure:  # noqa: BLE001 - every failure is reported, none stops the user
            error = failure
        self.report_turn(start, first, final, error, asks_about)


def _scalar(array):
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value

