"""Locust load test of the `chat` model: every simulated user holds its own multi-turn conversation.

A conversation states a few personal facts early, chats a little, then asks about the facts; after its
last turn the user starts a new conversation. Now and then a user also asks memory directly what it
would recall, or imports a few lines of history (weighted tasks). Three kinds of user, all streaming:

  GrpcChatUser    Triton gRPC ModelStreamInfer through tritonclient.grpc      (--imem-url, grpc://host:port)
  HttpChatUser    Triton HTTP /v2/models/chat/generate_stream, SSE           (--host / --imem-http-url)
  OpenAIChatUser  the OpenAI-compatible gateway, /v1/chat/completions, SSE   (--imem-gateway-url, --imem-api-key)

Each chat turn is reported as "<protocol> chat: first token" (time to the first non-empty text chunk) and
"<protocol> chat: full response" (time to the final response; its content size is the number of completion
tokens, so tokens/s = requests/s x average content size), or as one "<protocol> chat: refused (busy)" when
the server refused it for capacity (an UNAVAILABLE error: nothing was stored). "<protocol> memory: fact
recalled" is a check, never a failure: content size 1 when the turn that stated the fact asked about came
back in `recalled`, else 0 (its average is the hit rate). "grpc memory: recall" and "grpc memory: ingest"
time the direct memory operations.

    locust -f loadtest/locustfile.py                          # web UI on http://localhost:8089
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 60s GrpcChatUser
    make loadtest USERS=8 DURATION=60s                        # headless, CSV + HTML + summary in results/

Options (each also an environment variable): --imem-url (IMEM_URL), --imem-http-url (IMEM_HTTP_URL),
--imem-gateway-url (IMEM_GATEWAY_URL), --imem-api-key (IMEM_API_KEY), --imem-max-tokens
(IMEM_LOADTEST_MAX_TOKENS, 32), --imem-think (IMEM_LOADTEST_THINK: "0", or "0.5-2" seconds between
tasks), --imem-turns (IMEM_LOADTEST_TURNS, 10 per conversation), --imem-tenant (IMEM_LOADTEST_TENANT,
loadtest), --imem-seed (IMEM_LOADTEST_SEED, 0).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from itertools import count

import grpc.experimental.gevent as grpc_gevent
import tritonclient.grpc as grpcclient
from locust import User, between, constant, events, task

from imem_bench.synthetic import Conversation, history
from imem_client import wire
from imem_client.wire import Chunk, Code, ServiceError

_user_numbers = count()
# Locust runs users as gevent greenlets: gRPC must cooperate with gevent, or a call blocked in its C core
# holds up every user.
grpc_gevent.init_gevent()


@events.init_command_line_parser.add_listener
def _options(parser):
    grpc_port, http_port = os.environ.get("GRPC_PORT", "8001"), os.environ.get("HTTP_PORT", "8000")
    group = parser.add_argument_group("Infinite Memory Inference")
    group.add_argument("--imem-url", env_var="IMEM_URL", default=f"grpc://localhost:{grpc_port}",
                       help="Triton's gRPC address (GrpcChatUser)")
    group.add_argument("--imem-http-url", env_var="IMEM_HTTP_URL", default=f"http://localhost:{http_port}",
                       help="Triton's HTTP address (HttpChatUser; --host wins)")
    group.add_argument("--imem-gateway-url", env_var="IMEM_GATEWAY_URL", default="http://localhost:8080",
                       help="the OpenAI-compatible gateway (OpenAIChatUser)")
    group.add_argument("--imem-api-key", env_var="IMEM_API_KEY", default="", help="a gateway API key")
    group.add_argument("--imem-max-tokens", env_var="IMEM_LOADTEST_MAX_TOKENS", type=int, default=32,
                       help="completion tokens per turn")
    group.add_argument("--imem-think", env_var="IMEM_LOADTEST_THINK", default="0",
                       help='seconds between tasks: "0", or a range "0.5-2"')
    group.add_argument("--imem-turns", env_var="IMEM_LOADTEST_TURNS", type=int, default=10,
                       help="turns per conversation")
    group.add_argument("--imem-tenant", env_var="IMEM_LOADTEST_TENANT", default="loadtest")
    group.add_argument("--imem-seed", env_var="IMEM_LOADTEST_SEED", type=int, default=0)
    group.add_argument("--imem-retry-after", env_var="IMEM_LOADTEST_RETRY_AFTER", type=float, default=1.0,
                       help="seconds a user waits after a refusal for capacity, as clients honour Retry-After")


class _TritonClient(grpcclient.InferenceServerClient):
    """A tritonclient gRPC client that closes its channel once, when told to, and never from __del__.

    In gevent mode every channel close takes a lock that gRPC's gevent thread holds while it waits for the
    GIL; at interpreter exit that thread can be ended holding it, and tritonclient's __del__ closing again
    then waits for ever (Locust printed its statistics and never exited). A second close would also count
    the channel down twice, which stops gRPC's greenlet runner while other users' channels are open."""

    _closed = False

    def close(self):
        if not self._closed:
            self._closed = True
            super().close()

    def __del__(self):
        pass


class ChatTurns(User):
    """What every user shares: its options, the conversation script, and the reporting."""

    abstract = True
    protocol = ""

    def wait_time(self):
        spec = self.options.imem_think
        low, _, high = spec.partition("-")
        return (between(float(low), float(high)) if high else constant(float(low)))(self)

    def on_start(self):
        self.options = self.environment.parsed_options
        self.rng = random.Random(self.options.imem_seed * 100_003 + next(_user_numbers))
        self.conversation = self._new_conversation()

    def _new_conversation(self) -> Conversation:
        # The texts this user had stored in the conversation (acknowledged messages, ingested lines): memory
        # knows the conversation once there is one, and a refused message must not add to its count.
        self.stored: Counter[str] = Counter()
        return Conversation(f"lt-{uuid.uuid4().hex[:12]}", self.rng, turns=self.options.imem_turns)

    @property
    def sampling(self) -> dict:
        # No per-request seed: vLLM 0.32's CPU worker crashes (EngineDeadError, "CPU Generator does not use
        # offset") when a seeded request's prefill is chunked, which concurrent load makes likely.
        return {"max_tokens": self.options.imem_max_tokens, "temperature": 0.8}

    @task(8)
    def turn(self):
        if self.conversation.done:
            self.conversation = self._new_conversation()
        message, asks_about = self.conversation.next_message()
        start, first, final, error, stored = time.perf_counter(), None, None, None, 0
        try:
            for chunk in self.chat(message):
                if chunk.turn and not stored:
                    stored = self.stored[message] = self.stored[message] + 1
                if first is None and chunk.text:
                    first = time.perf_counter()
                if chunk.final:
                    final = chunk
        except Exception as failure:  # noqa: BLE001 - every failure is reported, none stops the user
            error = failure
        self.report_turn(start, first, final, error, asks_about)
        if isinstance(error, ServiceError) and error.code == Code.UNAVAILABLE:
            # Refused for capacity: the message must not be in memory. Then wait before the next turn.
            try:
                leaked = self.stored_texts().count(message) > self.stored[message]
            except Exception as failure:  # noqa: BLE001 - reported
                self.report(f"{self.protocol} memory: refused turn stored", 0, error=failure)
            else:
                self.report(f"{self.protocol} memory: refused turn stored", 0, int(leaked),
                            error=RuntimeError(f"a refused message was stored: {message!r}") if leaked else None)
            time.sleep(self.options.imem_retry_after)

    def chat(self, message: str):
        """The chat's chunks, as they stream."""
        raise NotImplementedError

    def stored_texts(self) -> list[str]:
        """The texts memory holds for the current conversation (none for an unknown one)."""
        raise NotImplementedError

    def report(self, name: str, response_time_ms: float, length: int = 0, error: Exception | None = None,
               start: float = 0.0):
        self.environment.events.request.fire(
            request_type=self.protocol, name=name, response_time=response_time_ms, response_length=length,
            exception=error, context={}, start_time=start)

    def report_turn(self, start: float, first: float | None, final: Chunk | None, error: Exception | None,
                    asks_about: str | None):
        done = time.perf_counter()
        name = f"{self.protocol} chat"
        if isinstance(error, ServiceError) and error.code == Code.UNAVAILABLE:  # refused before generating
            self.report(f"{name}: refused (busy)", (done - start) * 1000, error=error)
            return
        if error is None and final is None:
            error = RuntimeError("the stream ended without a final response")
        if error is None and first is None:
            first = done  # no text at all (an empty completion): the final response is the first token
        self.report(f"{name}: first token", ((first or done) - start) * 1000, error=error)
        self.report(f"{name}: full response", (done - start) * 1000, final.completion_tokens if final else 0,
                    error=error)
        if error is None and final is not None and asks_about is not None:
            hit = any(asks_about in (r.get("text") or "") for r in final.recalled)
            self.report(f"{self.protocol} memory: fact recalled", 0, int(hit))


class GrpcChatUser(ChatTurns):
    """Triton gRPC streaming (ModelStreamInfer), one tritonclient stream per turn; the direct memory
    operations over the same channel."""

    protocol = "grpc"

    def on_start(self):
        super().on_start()
        url = self.options.imem_url
        if url.startswith("http"):
            raise ValueError(f"--imem-url must be a grpc:// URL for GrpcChatUser, got {url!r}")
        self.client = _TritonClient(url.split("://", 1)[-1], channel_args=wire.GRPC_CHANNEL_ARGS)

    def on_stop(self):
        self.client.close()

    def chat(self, message: str):
        from gevent.queue import Queue

        responses: Queue = Queue()
        fields = wire.chat_fields(self.conversation.id, message, self.options.imem_tenant, sampling=self.sampling)
        self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
        ended = False
        try:
            self.client.async_stream_infer(wire.CHAT, wire.inputs(grpcclient, fields), request_id=uuid.uuid4().hex,
                                           enable_empty_final_response=True)
            while True:
                result, failure = responses.get(timeout=300)
                if failure is not None:
                    ended = True
                    raise wire.grpc_error(failure)
                response = result.get_response()
                flag = response.parameters.get("triton_final_response")
                ended = flag is not None and flag.bool_param
                if response.outputs:
                    yield Chunk.from_values(wire.result_values(result))
                if ended:
                    return
        finally:
            # Only a request still running is cancelled (see imem_client.client: a stream cancelled just
            # after its final response can stay in flight in Triton 2.51).
            self.client.stop_stream(cancel_requests=not ended)

    def stored_texts(self) -> list[str]:
        fields = wire.memory_fields("export", self.conversation.id, self.options.imem_tenant)
        try:
            result = self.client.infer(wire.MEMORY, wire.inputs(grpcclient, fields), client_timeout=300,
                                       outputs=[grpcclient.InferRequestedOutput("result")])
        except Exception as failure:  # noqa: BLE001 - an unknown conversation holds nothing
            if wire.grpc_error(failure).code == Code.NOT_FOUND:
                return []
            raise
        return [t["text"] for t in json.loads(wire.scalar(result.as_numpy("result")))["turns"]]

    def _memory(self, name: str, operation: str, **extra: str) -> bool:
        start = time.perf_counter()
        fields = wire.memory_fields(operation, self.conversation.id, self.options.imem_tenant, **extra)
        error, size = None, 0
        try:
            result = self.client.infer(wire.MEMORY, wire.inputs(grpcclient, fields), client_timeout=300,
                                       outputs=[grpcclient.InferRequestedOutput("result")])
            size = len(wire.scalar(result.as_numpy("result")))
        except Exception as failure:  # noqa: BLE001 - reported
            error = wire.grpc_error(failure)
        self.report(f"grpc memory: {name}", (time.perf_counter() - start) * 1000, size, error)
        return error is None

    @task(1)
    def recall(self):
        """What memory would put in the prompt for the last message (a conversation with turns only)."""
        if self.conversation.position and self.stored:
            self._memory("recall", "recall", message=self.conversation.script[self.conversation.position - 1][0])

    @task(1)
    def ingest(self):
        """A few lines of imported history into the conversation."""
        lines = history(self.rng, 2, start=self.rng.randrange(10_000))
        if self._memory("ingest", "ingest", payload="\n".join(json.dumps(line) for line in lines)):
            self.stored.update(line["text"] for line in lines)


class HttpChatUser(ChatTurns):
    """Triton HTTP generate_stream (server-sent events)."""

    protocol = "http"

    def on_start(self):
        import requests

        super().on_start()
        self.url = (self.host or self.options.imem_http_url).rstrip("/")
        # A plain session (gevent-patched by Locust): an HttpUser's own client would file a third entry per
        # turn, timed to the response headers only.
        self.session = requests.Session()

    def on_stop(self):
        self.session.close()

    def chat(self, message: str):
        body = wire.chat_fields(self.conversation.id, message, self.options.imem_tenant, sampling=self.sampling)
        with self.session.post(f"{self.url}/v2/models/{wire.CHAT}/generate_stream", json=body, stream=True,
                               timeout=300) as response:
            if response.status_code != 200:
                raise wire.http_error(response.status_code, response.text)
            for event in wire.sse_events(response.iter_lines()):
                if "error" in event:
                    raise wire.parse_error(event["error"])
                yield Chunk.from_values(event)

    def stored_texts(self) -> list[str]:
        fields = wire.memory_fields("export", self.conversation.id, self.options.imem_tenant)
        response = self.session.post(f"{self.url}/v2/models/{wire.MEMORY}/infer", timeout=300,
                                     json={"inputs": wire.json_inputs(fields), "outputs": [{"name": "result"}]})
        if response.status_code == 404:  # an unknown conversation holds nothing
            return []
        if response.status_code != 200:
            raise wire.http_error(response.status_code, response.text)
        result = json.loads(response.json()["outputs"][0]["data"][0])
        return [t["text"] for t in result["turns"]]


class OpenAIChatUser(ChatTurns):
    """The OpenAI-compatible gateway: /v1/chat/completions, streamed, the conversation in X-Conversation-Id.
    Its final chunk's `memory` field says what was recalled."""

    protocol = "openai"

    def on_start(self):
        import requests

        super().on_start()
        self.url = self.options.imem_gateway_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.options.imem_api_key}"

    def on_stop(self):
        self.session.close()

    def stored_texts(self) -> list[str]:
        response = self.session.get(f"{self.url}/v1/conversations/{self.conversation.id}", timeout=300)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [t["text"] for t in response.json()["turns"]]

    def chat(self, message: str):
        body = {"model": "imem-chat", "stream": True, "stream_options": {"include_usage": True},
                "max_completion_tokens": self.options.imem_max_tokens, "temperature": 0.8,
                "messages": [{"role": "user", "content": message}]}
        with self.session.post(f"{self.url}/v1/chat/completions", json=body, stream=True, timeout=300,
                               headers={"X-Conversation-Id": self.conversation.id}) as response:
            if response.status_code != 200:
                raise wire.http_error(response.status_code, response.text)
            finish = ""
            recalled: list[dict] = []
            for line in response.iter_lines():
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise ServiceError(event["error"]["message"])
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    yield Chunk((choice.get("delta") or {}).get("content") or "")
                recalled = (event.get("memory") or {}).get("recalled", recalled)
                if event.get("usage"):
                    yield Chunk("", finish or "stop", completion_tokens=event["usage"]["completion_tokens"],
                                prompt_tokens=event["usage"]["prompt_tokens"], recalled=recalled)
