"""Triton entry point of the `memory` model, the only owner of the turn store.

It serves three kinds of request, told apart by which inputs are present:
  * recall (chat step 1): conversation_id, tenant, message (, system, recall_policy) -> prompt, handle.
    The message is embedded here, in this process: no Triton hop. Reads only: a request refused here
    (bad input, cancelled) or by llm (busy) leaves memory as it was.
  * commit (chat step 3, once per llm response): memory_handle + llm_* tensors -> the chat outputs. The
    first response stores the user turn, the final one the reply, each before it is sent on: a message is
    stored once its answer begins, and a reply is durable before it is acknowledged.
  * a direct operation: operation (recall | ingest | export | delete) + ids + payload -> result (JSON);
    a recall's optional payload {"policy": ...} picks a reference policy for benchmarks (imem/recall.py)
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from imem.backfill import VectorBackfill
from imem.cancellation import CancellationChecks
from imem.config import load
from imem.embedding import model_process_embedder
from imem.handle import decode as decode_handle
from imem.handle import exchange_of
from imem.memory import Memory, encode_handle
from imem.metrics import MemoryMetrics
from imem.orphans import die_with_server
from imem.store import StoreUnavailable, open_store
from imem.tensors import BadRequest, bytes_tensor, error_response, int_tensor, optional_input, scalar, text

OPERATIONS = ("recall", "ingest", "export", "delete")


def recall_options(payload: str) -> dict:
    """The direct recall's optional JSON payload: {"policy": "default" | "recency" | "dense" | "full"}."""
    if not payload.strip():
        return {}
    try:
        options = json.loads(payload)
    except json.JSONDecodeError as error:
        raise BadRequest(f"'payload' of a recall must be a JSON object: {error.msg}") from None
    if not isinstance(options, dict) or set(options) - {"policy"}:
        raise BadRequest("'payload' of a recall must be a JSON object with at most the key 'policy'")
    if "policy" in options and not isinstance(options["policy"], str):
        raise BadRequest("'payload': 'policy' must be a string")
    return options


def stored_nothing(prompt_tokens: int = 0) -> list:
    """The commit outputs of a response that stored no turn."""
    return [int_tensor("turn", 0), int_tensor("reply_turn", 0), int_tensor("prompt_tokens", prompt_tokens),
            bytes_tensor("recalled", "[]")]


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        die_with_server()  # a stub orphaned by a crash can hang in exit(): see imem/orphans.py
        config = load()
        tokenizer = AutoTokenizer.from_pretrained(config.engine.tokenizer_path)
        self.store = open_store(config.memory, dim=config.embedder.dim)
        # Messages, replies, ingested history and direct recall queries are all embedded here: a chat
        # message costs one embedding and no Triton hop (the `embedder` model is for direct use).
        self.embedder = model_process_embedder(config.embedder)
        # Replies are embedded off the client's path; on start it also embeds any reply that a crash left
        # stored without its vector.
        self.backfill = VectorBackfill(self.store, self.embedder.embed, log=pb_utils.Logger.log_warn,
                                       linger=config.memory.backfill_linger_ms / 1000)
        self.memory = Memory(config.memory, self.store, tokenizer, self.embedder.embed, self.backfill)
        self.limits = config.memory
        self.aborted: dict[str, None] = {}  # exchanges whose generation was asked to stop (oldest first)
        self.cancellation_checks = CancellationChecks()
        self.metrics = MemoryMetrics(pb_utils, self.store.stats, interval=config.memory.metrics_interval_s)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                if optional_input(request, "memory_handle") is not None:
                    outputs = self._commit(request)
                elif optional_input(request, "operation") is not None:
                    outputs = self._operation(request)
                else:
                    outputs = self._recall(request)
                # Each ensemble step asks for its own subset of our outputs; answer only those.
                wanted = set(request.requested_output_names())
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[t for t in outputs if not wanted or t.name() in wanted]))
            except BadRequest as error:
                responses.append(error_response(str(error)))
            except StoreUnavailable as error:  # disk full, store gone: not the caller's fault, nothing written
                pb_utils.Logger.log_error(f"memory unavailable: {error}")
                self.metrics.record("imem_memory_write_failures_total")
                responses.append(error_response(f"memory unavailable: {error}"))
            except Exception as error:  # never lose the batch: answer this request with the cause
                pb_utils.Logger.log_error(f"memory failed: {error!r}")
                self.metrics.record("imem_memory_write_failures_total")
                responses.append(error_response(f"memory failed: {error}"))
        return responses

    def _ids(self, request):
        return (text(request, "tenant", required=False, default="default", max_bytes=self.limits.max_id_bytes),
                text(request, "conversation_id", max_bytes=self.limits.max_id_bytes))

    def _recall(self, request):
        if request.is_cancelled():
            raise BadRequest("the request was cancelled")
        tenant, conversation_id = self._ids(request)
        self.store.check_writable()  # refuse now, not after generating a reply that could not be stored
        message = text(request, "message", max_bytes=self.limits.max_message_bytes)
        system = text(request, "system", required=False, max_bytes=self.limits.max_message_bytes)
        policy = text(request, "recall_policy", required=False, default="default", max_bytes=64)
        if policy == "full":
            raise BadRequest("'recall_policy' full has no token budget: it is for the direct recall only")
        recall = self.memory.recall(tenant, conversation_id, message, None, system, policy)
        vector = self.memory.message_vector(recall)
        self.metrics.record("imem_memory_embed_duration_ms", recall.embed_ms)
        self.metrics.record("imem_memory_recall_duration_ms", recall.recall_ms)
        self.metrics.record("imem_memory_turns_recalled", len(recall.prompt.recalled) + len(recall.prompt.recent))
        self.metrics.record("imem_memory_context_tokens", recall.prompt.context_tokens)
        self.metrics.record("imem_memory_prompt_tokens", recall.prompt.tokens)
        return [
            bytes_tensor("prompt", recall.prompt.text),
            bytes_tensor("handle", encode_handle(recall, vector)),
        ]

    def _commit(self, request):
        """One llm response of a chat generation. Most are passed through untouched; the first stores the
        user turn, the final one the reply. It never fails a response that is not the final one: in Triton
        2.51 an ensemble whose step fails while llm still streams never completes (the request stays in
        flight until the server exits), so an error can only be told on the final response."""
        raw = text(request, "memory_handle")
        exchange = exchange_of(raw)
        finish_reason = text(request, "llm_finish_reason", required=False)
        first = bool(scalar(request, "llm_first_response", False))
        outputs = [bytes_tensor("text_output", text(request, "llm_text", required=False)),
                   bytes_tensor("finish_reason", finish_reason),
                   int_tensor("completion_tokens", int(optional_input(request, "llm_output_tokens").reshape(-1)[0]))]
        # The client went away (the ensemble marks the steps after its cancellation): store nothing more,
        # and stop the generation, which Triton 2.51 does not tell llm about. Always asked before a store;
        # between, at most every 50 ms (each question is a round trip to the server: imem/cancellation.py).
        due = self.cancellation_checks.due(exchange)
        if finish_reason:
            self.cancellation_checks.forget(exchange)
        if (due or first or finish_reason) and request.is_cancelled():
            if not finish_reason:
                self._abort_generation(exchange)
            return outputs + stored_nothing()
        if not first and not finish_reason:
            return outputs + stored_nothing()
        handle = decode_handle(raw)
        if not finish_reason:
            try:
                user = self.memory.store_message(handle)
                self.metrics.record("imem_memory_turns_written_total")
            except Exception as error:  # not an error here (see above): the final response stores it or fails
                pb_utils.Logger.log_error(f"storing the message of {handle['exchange']} failed: {error!r}")
                self.metrics.record("imem_memory_write_failures_total")
                return outputs + stored_nothing(int(handle["prompt_tokens"]))
            return outputs + [int_tensor("turn", user.turn), int_tensor("reply_turn", 0),
                              int_tensor("prompt_tokens", int(handle["prompt_tokens"])), bytes_tensor("recalled", "[]")]
        user, reply = self.memory.store_reply(handle, text(request, "llm_completion", required=False), finish_reason,
                                              int(optional_input(request, "llm_output_tokens").reshape(-1)[0]))
        self.metrics.record("imem_memory_turns_written_total", 2 if first else 1)
        return outputs + [int_tensor("turn", user.turn), int_tensor("reply_turn", reply.turn),
                          int_tensor("prompt_tokens", int(handle["prompt_tokens"])),
                          bytes_tensor("recalled", json.dumps(handle["recalled"]))]

    def _abort_generation(self, exchange: str) -> None:
        """Asks llm to stop generating for `exchange` (its `abort` input), once per exchange."""
        if exchange in self.aborted:
            return
        self.aborted[exchange] = None
        self.metrics.record("imem_memory_chats_cancelled_total")
        while len(self.aborted) > 1024:
            self.aborted.pop(next(iter(self.aborted)))
        abort = pb_utils.InferenceRequest(
            model_name="llm", requested_output_names=[],
            inputs=[pb_utils.Tensor("abort", np.array([[exchange.encode("ascii")]], dtype=np.object_))])
        for response in abort.exec(decoupled=True):
            if response.has_error():
                pb_utils.Logger.log_warn(f"aborting the generation of {exchange} failed: {response.error().message()}")

    def _operation(self, request):
        operation = text(request, "operation")
        if operation not in OPERATIONS:
            raise BadRequest(f"'operation' must be one of {', '.join(OPERATIONS)}, got {operation!r}")
        tenant, conversation_id = self._ids(request)
        if operation == "recall":
            result = self.memory.recall_only(tenant, conversation_id, text(request, "message"),
                                             **recall_options(text(request, "payload", required=False)))
        elif operation == "ingest":
            result = self.memory.ingest(tenant, conversation_id, text(request, "payload"))
            self.metrics.record("imem_memory_turns_written_total", result["ingested"])
        elif operation == "export":
            result = self.memory.export(tenant, conversation_id)
        else:
            result = self.memory.delete(tenant, conversation_id)
        return [bytes_tensor("result", json.dumps(result))]

    def finalize(self):
        # A graceful stop does not wait for the replies still lingering to be embedded: they are stored
        # without their vector, and embedded on the next start.
        self.backfill.close(timeout=0)
        self.metrics.close()
        self.store.close()
