"""Triton entry point of the `llm` model: an engine (vLLM's AsyncLLM, or the synthetic stand-in for a
GPU's token stream: imem/engine.py) behind a decoupled (streaming) Python model.

One asyncio loop in a background thread runs every generation; `execute` only hands requests to it.
Each response carries the caller's `memory_handle` through (whole on the first and the last response,
its exchange id on the others), says whether it is the generation's first (`first_response`), and the
last one (finish_reason set) also carries the whole completion, because Triton lets the ensemble step
after us read only our outputs.

Back-pressure: at most `IMEM_MAX_GENERATIONS` generations at once (running or waiting in vLLM); beyond
that a request is refused at once ("busy"), before memory has stored anything for it. If vLLM's engine
dies, the generations in flight end with an error and the engine is started again; requests that arrive
meanwhile are refused with a message saying so.
"""

import asyncio
import itertools
import locale
import threading
import time

import triton_python_backend_utils as pb_utils

# The stub starts with an ASCII locale; torch and vLLM fail to import under it.
locale.setlocale(locale.LC_ALL, "C.UTF-8")

from imem import engine as engines  # noqa: E402
from imem.cancellation import CancellationChecks  # noqa: E402
from imem.config import load  # noqa: E402
from imem.generation import GenerationRequest  # noqa: E402
from imem.handle import exchange_of  # noqa: E402
from imem.orphans import die_with_server  # noqa: E402
from imem.tensors import BadRequest, bool_tensor, bytes_tensor, int_tensor, optional_input, text  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class LlmMetrics:
    """Prometheus metrics through Triton's metric API (served on Triton's metrics port)."""

    def __init__(self):
        self.families = []  # a family must outlive its metrics

        def family(name, description, kind):
            self.families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
            return self.families[-1].Metric(labels={})

        self.running = family("imem_llm_requests_running", "Generations in progress", pb_utils.MetricFamily.GAUGE)
        self.cancelled = family("imem_llm_requests_cancelled_total", "Generations aborted because the client "
                                "cancelled", pb_utils.MetricFamily.COUNTER)
        self.rejected = family("imem_llm_requests_rejected_total", "Requests refused because IMEM_MAX_GENERATIONS "
                               "generations were in flight, or the engine was restarting", pb_utils.MetricFamily.COUNTER)
        self.failed = family("imem_llm_requests_failed_total", "Generations that ended with an error",
                             pb_utils.MetricFamily.COUNTER)
        self.restarts = family("imem_llm_engine_restarts_total", "vLLM engines started again after dying",
                               pb_utils.MetricFamily.COUNTER)
        self.tokens = family("imem_llm_generated_tokens_total", "Tokens generated", pb_utils.MetricFamily.COUNTER)

    def close(self):
        # Metrics first, then their families: the other order crashes the stub at shutdown.
        self.running = self.cancelled = self.rejected = self.failed = self.restarts = self.tokens = None
        self.families.clear()


class TritonPythonModel:
    def initialize(self, args):
        die_with_server()  # a stub orphaned by a crash can hang in exit(): see imem/orphans.py
        self.config = load().engine
        self.logger = pb_utils.Logger
        self.engine = self._start_engine()
        self.metrics = LlmMetrics()
        # exchange id -> event set when memory asks to stop that generation (the client cancelled the chat)
        self.generations: dict[str, asyncio.Event] = {}
        self.cancellation_checks = CancellationChecks()
        self.in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llm-loop", daemon=True)
        self.thread.start()

    def _start_engine(self):
        return engines.start(self.config)

    def execute(self, requests):
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request), self.loop)
        return None

    async def _serve(self, request):
        sender = request.get_response_sender()
        try:
            if optional_input(request, "abort") is not None:
                self._abort(text(request, "abort"))
                sender.send(flags=FINAL)
                return
            generation = GenerationRequest.from_triton(request, self.config.default_max_tokens)
            self._admit()
        except BadRequest as error:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
            return
        exchange = exchange_of(generation.memory_handle) if generation.memory_handle else None
        stop = asyncio.Event()
        if exchange:
            self.generations[exchange] = stop
        self.in_flight += 1
        try:
            await self._generate(request, generation, sender, stop)
        except Exception as error:  # a failed generation must still close the client's stream
            self.logger.log_error(f"generation failed: {error!r}")
            self.metrics.failed.increment(1)
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {error}")),
                        flags=FINAL)
            self._restart_if_dead()
        finally:
            self.in_flight -= 1
            if exchange:
                self.generations.pop(exchange, None)

    def _admit(self):
        if self.engine is None:
            self.metrics.rejected.increment(1)
            raise BadRequest("busy: the llm engine is restarting after a failure; retry in a minute")
        if self.in_flight >= self.config.max_generations:
            self.metrics.rejected.increment(1)
            raise BadRequest(f"busy: {self.in_flight} generations in flight, the limit is "
                             f"{self.config.max_generations} (IMEM_MAX_GENERATIONS); retry later")

    def _abort(self, exchange: str):
        stop = self.generations.get(exchange)
        if stop is not None:
            stop.set()

    async def _generate(self, request, generation: GenerationRequest, sender, stop: asyncio.Event):
        request_id = f"{request.request_id() or ''}-{id(generation)}"
        completion, completion_tokens, first = [], 0, True
        engine = self.engine
        self.metrics.running.increment(1)
        try:
            async for delta in engine.generate(generation.prompt, generation.sampling, request_id):
                # Triton 2.51 reports a cancelled gRPC stream on the request, not always on the sender; in
                # the chat ensemble, memory tells us (stop). Asking Triton is a round trip: not every token.
                if stop.is_set() or (self.cancellation_checks.due(request_id)
                                     and (request.is_cancelled() or sender.is_cancelled())):
                    await engine.abort(request_id)
                    self.metrics.cancelled.increment(1)
                    sender.send(flags=FINAL)
                    return
                completion.append(delta.text)
                completion_tokens += delta.tokens
                self.metrics.tokens.increment(delta.tokens)
                if generation.stream:
                    text_out = delta.text
                elif delta.finished:
                    text_out = ("" if generation.exclude_input else generation.prompt) + "".join(completion)
                else:
                    continue
                if not text_out and not delta.finished:
                    continue
                sender.send(
                    self._response(generation, text_out, delta.finish_reason or "", delta.prompt_tokens,
                                   completion_tokens, "".join(completion) if delta.finished else "", first),
                    flags=FINAL if delta.finished else 0,
                )
                first = False
        finally:
            self.cancellation_checks.forget(request_id)
            self.metrics.running.increment(-1)

    def _response(self, generation, text_out, finish_reason, prompt_tokens, completion_tokens, completion, first):
        outputs = [
            bytes_tensor("text_output", text_out),
            bytes_tensor("finish_reason", finish_reason),
            int_tensor("num_input_tokens", prompt_tokens),
            int_tensor("num_output_tokens", completion_tokens),
            bytes_tensor("completion_text", completion),
            bool_tensor("first_response", first),
        ]
        if generation.memory_handle is not None:
            # Memory's commit step reads the whole handle only on the first and the final response; the
            # chunks between need only the exchange id (to stop this generation if the client went away).
            handle = generation.memory_handle if first or finish_reason else exchange_of(generation.memory_handle)
            outputs.append(bytes_tensor("memory_handle_out", handle))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _restart_if_dead(self):
        """A dead engine (its process killed, out of memory) fails every generation: start a new one."""
        engine = self.engine
        if engine is None or not engine.errored:
            return
        self.engine = None
        self.logger.log_error("the vLLM engine died: starting a new one")

        def restart():
            try:
                engine.shutdown()
            except Exception as error:
                self.logger.log_warn(f"shutting down the dead engine: {error!r}")
            # A start can fail for a passing cause (memory still held by the dead engine, a worker process
            # that could not start): try again, less and less often, never leaving llm dead for good.
            for attempt in itertools.count(1):
                try:
                    self.engine = self._start_engine()
                    break
                except Exception as error:
                    pause = min(2 ** attempt, 30)
                    self.logger.log_error(f"starting the vLLM engine again failed (attempt {attempt}), "
                                          f"next try in {pause} s: {error!r}")
                    time.sleep(pause)
            self.metrics.restarts.increment(1)
            self.logger.log_info("the vLLM engine is running again")

        threading.Thread(target=restart, name="llm-engine-restart", daemon=True).start()

    def finalize(self):
        if self.engine is not None:
            self.engine.shutdown()
        # Dropped now, not at interpreter exit, where AsyncLLM.__del__ fails on half-torn-down modules.
        self.engine = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.metrics.close()
