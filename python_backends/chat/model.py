"""Triton entry point of the `chat` model: generation with memory, streamed (decoupled).

A chat request (conversation_id, message, ...) goes:
  1. admission: at most IMEM_MAX_GENERATIONS requests at once; beyond that one is refused at once
     (UNAVAILABLE, "busy"), before memory does any work for it;
  2. recall: a call to the `memory` model, which embeds the message and builds the prompt;
  3. generation on the engine (imem/engine.py: vLLM, or the synthetic stand-in for a GPU's token stream),
     each delta streamed to the client as it comes;
  4. commit: before the first response goes out, memory stores the message; before the final one, the
     reply. The responses between cost memory nothing.
A request with `text_input` instead is a plain generation (NVIDIA's vLLM backend tensors), no memory.

Why not an ensemble of memory -> llm -> memory: in Triton 2.51 every response of a decoupled step runs the
steps after it, so every streamed chunk of every chat would pass through memory (~0.9 ms of CPU each, on
memory's one thread); and an ensemble never tells a running step that its client cancelled. Here the
chunks go straight out, and a cancelled stream is seen on this model's own request.

One asyncio loop in a background thread runs every admitted request; `execute` admits or refuses each
request and hands the admitted ones to it. A dead engine (its process killed) fails the generations in
flight and is started again.
"""

import asyncio
import itertools
import json
import locale
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

# The stub starts with an ASCII locale; torch and vLLM fail to import under it.
locale.setlocale(locale.LC_ALL, "C.UTF-8")

from imem import engine as engines  # noqa: E402
from imem.cancellation import CancellationChecks  # noqa: E402
from imem.config import load  # noqa: E402
from imem.errors import ServiceError, Unavailable, from_code, triton_error  # noqa: E402
from imem.generation import CHAT_INPUTS, GenerationRequest  # noqa: E402
from imem.metrics import Metrics  # noqa: E402
from imem.orphans import die_with_server  # noqa: E402
from imem.tensors import bytes_tensor, int_tensor  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Calls to memory block a thread until memory answers; memory serves them one at a time.
MEMORY_CALL_THREADS = 16
RESTARTING = "busy: the engine is restarting after a failure; retry in a minute"


class Exchange:
    """A chat's memory: what recall gave, and the commits of its first and final responses."""

    def __init__(self, recall: dict):
        self.handle = recall["handle"]
        self.prompt_tokens = int(recall["prompt_tokens"])
        self.recalled = recall["recalled"]
        self.turn = 0


class TritonPythonModel:
    def initialize(self, args):
        die_with_server()  # a stub orphaned by a crash can hang in exit(): see imem/orphans.py
        config = load()
        self.config = config.engine
        self.logger = pb_utils.Logger
        # None while a dead engine is replaced (_restart_if_dead).
        self.engine: engines.Engine | None = engines.start(self.config)
        self.in_flight = 0
        self.admission = threading.Lock()  # in_flight: counted up by execute, down by the loop
        self.metrics = Metrics(pb_utils, "chat", gauges=lambda: {"requests_running": self.in_flight},
                               interval=config.memory.metrics_interval_s)
        self.cancellation_checks = CancellationChecks()
        self.calls = ThreadPoolExecutor(max_workers=MEMORY_CALL_THREADS, thread_name_prefix="memory-call")
        self.request_ids = itertools.count()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chat-loop", daemon=True)
        self.thread.start()

    def execute(self, requests):
        # Admission here, on the stub's thread: a refusal goes out at once instead of queueing on the loop
        # behind the responses of every stream it is serving (under a flood, that queue is the whole wait).
        for request in requests:
            sender = request.get_response_sender()
            try:
                generation = GenerationRequest.from_triton(request, self.config.default_max_tokens)
                with self.admission:
                    self._admit()
                    self.in_flight += 1
            except ServiceError as error:
                sender.send(pb_utils.InferenceResponse(error=triton_error(error)), flags=FINAL)
                continue
            asyncio.run_coroutine_threadsafe(self._serve(request, generation, sender), self.loop)
        return None

    async def _serve(self, request, generation: GenerationRequest, sender):
        try:
            exchange = None
            if generation.chat:
                recall = await self._memory([pb_utils.get_input_tensor_by_name(request, name) for name in CHAT_INPUTS],
                                            ["prompt", "handle", "prompt_tokens", "recalled"])
                generation.prompt, exchange = recall["prompt"], Exchange(recall)
            await self._generate(request, generation, sender, exchange)
        except ServiceError as error:  # memory refused (bad input, a deleted conversation, a full disk)
            sender.send(pb_utils.InferenceResponse(error=triton_error(error)), flags=FINAL)
        except Exception as error:  # a failed generation must still close the client's stream
            self.logger.log_error(f"generation failed: {error!r}")
            self.metrics.record("imem_llm_requests_failed_total")
            sender.send(pb_utils.InferenceResponse(error=triton_error(RuntimeError(f"generation failed: {error}"))),
                        flags=FINAL)
            self._restart_if_dead()
        finally:
            with self.admission:
                self.in_flight -= 1

    def _admit(self):
        if self.engine is None:
            self.metrics.record("imem_llm_requests_rejected_total")
            raise Unavailable(RESTARTING)
        if self.in_flight >= self.config.max_generations:
            self.metrics.record("imem_llm_requests_rejected_total")
            raise Unavailable(f"busy: {self.in_flight} generations in flight, the limit is "
                              f"{self.config.max_generations} (IMEM_MAX_GENERATIONS); retry later")

    async def _memory(self, inputs: list, outputs: list[str]) -> dict:
        """One call to the memory model; its refusal as the ServiceError of its code."""
        call = pb_utils.InferenceRequest(model_name="memory", inputs=[i for i in inputs if i is not None],
                                         requested_output_names=[*outputs, "refused"])
        response = await self.loop.run_in_executor(self.calls, call.exec)
        if response.has_error():  # memory did not answer (not loaded, its process gone)
            raise ServiceError(f"memory failed: {response.error().message()}")
        refused = pb_utils.get_output_tensor_by_name(response, "refused")
        if refused is not None:
            refusal = json.loads(refused.as_numpy().reshape(-1)[0])
            raise from_code(refusal["code"], refusal["message"])
        values = {}
        for name in outputs:
            value = pb_utils.get_output_tensor_by_name(response, name).as_numpy().reshape(-1)[0]
            values[name] = value.decode("utf-8") if isinstance(value, bytes) else value
        return values

    async def _commit(self, exchange: Exchange, reply: str = "", finish_reason: str = "", tokens: int = 0) -> dict:
        """Stores the message (no finish_reason) or the reply; returns {"turn", "reply_turn"}."""
        inputs = [bytes_tensor("memory_handle", exchange.handle)]
        if finish_reason:
            inputs += [bytes_tensor("reply", reply), bytes_tensor("finish_reason", finish_reason),
                       int_tensor("completion_tokens", tokens)]
        return await self._memory(inputs, ["turn", "reply_turn"])

    async def _generate(self, request, generation: GenerationRequest, sender, exchange: Exchange | None):
        request_id = f"{request.request_id() or ''}-{next(self.request_ids)}"
        engine = self.engine
        if engine is None:  # died since _admit, while the request waited for memory
            raise Unavailable(RESTARTING)
        completion, tokens, first = [], 0, True
        try:
            async for delta in engine.generate(generation.prompt, generation.sampling, request_id):
                # Asking Triton is a round trip: not at every delta (imem/cancellation.py).
                if self.cancellation_checks.due(request_id) and (request.is_cancelled() or sender.is_cancelled()):
                    await engine.abort(request_id)
                    self.metrics.record("imem_llm_requests_cancelled_total")
                    sender.send(flags=FINAL)
                    return
                completion.append(delta.text)
                tokens += delta.tokens
                self.metrics.record("imem_llm_generated_tokens_total", delta.tokens)
                if not generation.stream and not delta.finished:
                    continue
                if not delta.text and not delta.finished:
                    continue
                text_out = delta.text if generation.stream else "".join(completion)
                if exchange is None and delta.finished and not generation.exclude_input:
                    text_out = generation.prompt + text_out
                outputs = [bytes_tensor("text_output", text_out),
                           bytes_tensor("finish_reason", delta.finish_reason or "")]
                if exchange is None:
                    outputs += [int_tensor("num_input_tokens", delta.prompt_tokens),
                                int_tensor("num_output_tokens", tokens)]
                else:
                    try:
                        outputs += await self._exchange_outputs(exchange, delta, completion, tokens, first)
                    except ServiceError:  # the conversation was deleted, or the store is full: stop here
                        await engine.abort(request_id)
                        raise
                sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=FINAL if delta.finished else 0)
                first = False
        finally:
            self.cancellation_checks.forget(request_id)

    async def _exchange_outputs(self, exchange: Exchange, delta, completion: list, tokens: int, first: bool) -> list:
        """A chat response's memory outputs, committing what it acknowledges first: the first response
        carries the stored message's turn, the final one the reply's and what was recalled."""
        if not delta.finished:
            if not first:
                return []
            exchange.turn = int((await self._commit(exchange))["turn"])
            return [int_tensor("turn", exchange.turn), int_tensor("prompt_tokens", exchange.prompt_tokens)]
        stored = await self._commit(exchange, "".join(completion), delta.finish_reason, tokens)
        return [int_tensor("turn", int(stored["turn"])), int_tensor("reply_turn", int(stored["reply_turn"])),
                int_tensor("prompt_tokens", exchange.prompt_tokens), int_tensor("completion_tokens", tokens),
                bytes_tensor("recalled", exchange.recalled)]

    def _restart_if_dead(self):
        """A dead engine (its process killed, out of memory) fails every generation: start a new one."""
        engine = self.engine
        if engine is None or not engine.errored:
            return
        self.engine = None
        self.logger.log_error("the engine died: starting a new one")

        def restart():
            try:
                engine.shutdown()
            except Exception as error:
                self.logger.log_warn(f"shutting down the dead engine: {error!r}")
            # A start can fail for a passing cause (memory still held by the dead engine, a worker process
            # that could not start): try again, less and less often, never leaving chat dead for good.
            for attempt in itertools.count(1):
                try:
                    self.engine = engines.start(self.config)
                    break
                except Exception as error:
                    pause = min(2 ** attempt, 30)
                    self.logger.log_error(f"starting the engine again failed (attempt {attempt}), "
                                          f"next try in {pause} s: {error!r}")
                    time.sleep(pause)
            self.metrics.record("imem_llm_engine_restarts_total")
            self.logger.log_info("the engine is running again")

        threading.Thread(target=restart, name="engine-restart", daemon=True).start()

    def finalize(self):
        if self.engine is not None:
            self.engine.shutdown()
        # Dropped now, not at interpreter exit, where AsyncLLM.__del__ fails on half-torn-down modules.
        self.engine = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.calls.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
