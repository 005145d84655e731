"""Triton entry point of the `llm` model: vLLM's AsyncLLM behind a decoupled (streaming) Python model.

One asyncio loop in a background thread runs every generation; `execute` only hands requests to it.
Each response carries the caller's `memory_handle` through, and the last one (finish_reason set) also
carries the whole completion, because Triton lets the ensemble step after us read only our outputs.
"""

import asyncio
import locale
import threading

import triton_python_backend_utils as pb_utils

# The stub starts with an ASCII locale; torch and vLLM fail to import under it.
locale.setlocale(locale.LC_ALL, "C.UTF-8")

from imem.config import load  # noqa: E402
from imem.generation import GenerationRequest  # noqa: E402
from imem.tensors import BadRequest, bytes_tensor, int_tensor  # noqa: E402


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
        self.tokens = family("imem_llm_generated_tokens_total", "Tokens generated", pb_utils.MetricFamily.COUNTER)

    def close(self):
        # Metrics first, then their families: the other order crashes the stub at shutdown.
        self.running = self.cancelled = self.tokens = None
        self.families.clear()


class TritonPythonModel:
    def initialize(self, args):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.config = load().engine
        self.logger = pb_utils.Logger
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.config.engine_args()))
        self.bos = self.engine.tokenizer.bos_token if self.engine.tokenizer is not None else None
        self.metrics = LlmMetrics()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llm-loop", daemon=True)
        self.thread.start()

    def execute(self, requests):
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request), self.loop)
        return None

    async def _serve(self, request):
        sender = request.get_response_sender()
        final_flag = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            generation = GenerationRequest.from_triton(request, self.config.default_max_tokens)
        except BadRequest as error:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=final_flag)
            return
        try:
            await self._generate(request, generation, sender)
        except Exception as error:  # a failed generation must still close the client's stream
            self.logger.log_error(f"generation failed: {error!r}")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {error}")),
                        flags=final_flag)

    async def _generate(self, request, generation: GenerationRequest, sender):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request_id = f"{request.request_id() or ''}-{id(generation)}"
        # Deltas even when the client wants one response: every token is a chance to notice cancellation.
        params = SamplingParams(**generation.sampling, output_kind=RequestOutputKind.DELTA)
        # A prompt rendered with the chat template already starts with BOS: don't add a second one.
        add_special = not (self.bos and generation.prompt.startswith(self.bos))
        completion, completion_tokens = [], 0
        self.metrics.running.increment(1)
        try:
            async for output in self.engine.generate(
                generation.prompt, params, request_id, tokenization_kwargs={"add_special_tokens": add_special},
            ):
                # Triton 2.51 reports a cancelled gRPC stream on the request, not always on the sender.
                if request.is_cancelled() or sender.is_cancelled():
                    await self.engine.abort(request_id)
                    self.metrics.cancelled.increment(1)
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                piece = output.outputs[0]
                completion.append(piece.text)
                completion_tokens += len(piece.token_ids)
                self.metrics.tokens.increment(len(piece.token_ids))
                if generation.stream:
                    text = piece.text
                elif output.finished:
                    text = ("" if generation.exclude_input else generation.prompt) + "".join(completion)
                else:
                    continue
                if not text and not output.finished:
                    continue
                finish_reason = (piece.finish_reason or "stop") if output.finished else ""
                sender.send(
                    self._response(generation, text, finish_reason, len(output.prompt_token_ids or []),
                                   completion_tokens, "".join(completion) if output.finished else ""),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if output.finished else 0,
                )
        finally:
            self.metrics.running.increment(-1)

    def _response(self, generation, text, finish_reason, prompt_tokens, completion_tokens, completion):
        outputs = [
            bytes_tensor("text_output", text),
            bytes_tensor("finish_reason", finish_reason),
            int_tensor("num_input_tokens", prompt_tokens),
            int_tensor("num_output_tokens", completion_tokens),
            bytes_tensor("completion_text", completion),
        ]
        if generation.memory_handle is not None:
            outputs.append(bytes_tensor("memory_handle_out", generation.memory_handle))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def finalize(self):
        self.engine.shutdown()
        # Dropped now, not at interpreter exit, where AsyncLLM.__del__ fails on half-torn-down modules.
        self.engine = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.metrics.close()
