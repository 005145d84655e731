"""Triton entry point of the `memory` model, the only owner of the turn store.

It serves three kinds of request, told apart by which inputs are present:
  * recall (the chat model's first call): conversation_id, tenant, message (, system, recall_policy) ->
    prompt, handle, prompt_tokens, recalled. The message is embedded here, in this process. Reads only.
  * commit (the chat model's call on its first and its final response): memory_handle, and on the final
    one the reply (reply, finish_reason, completion_tokens) -> turn, reply_turn. The first stores the user
    turn, the final one the reply, each before the chat model sends that response on: a message is stored
    once its answer begins, and a reply is durable before it is acknowledged.
  * a direct operation: operation (recall | ingest | export | delete) + ids + payload -> result (JSON);
    a recall's optional payload {"policy": ...} picks a reference policy for benchmarks (imem/recall.py)
Nothing is written for a request that fails. A direct operation's error carries its Triton code
(imem/errors.py). The chat model's calls are answered with `refused` (the code and the message as JSON)
instead: Triton 2.51 hands a model's error to a BLS caller as INTERNAL whatever its code.
"""

import json
import os
import signal

import triton_python_backend_utils as pb_utils

from imem.config import load
from imem.embedding import model_process_embedder
from imem.errors import BadRequest, ServiceError, error_response
from imem.handle import decode as decode_handle
from imem.memory import Memory
from imem.metrics import Metrics
from imem.orphans import die_with_server
from imem.recovery import VectorRecovery
from imem.store import open_store
from imem.tensors import bytes_tensor, int_tensor, optional_input, text
from imem.tokenizer import load_tokenizer

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


class TritonPythonModel:
    def initialize(self, args):
        die_with_server()  # a stub orphaned by a crash can hang in exit(): see imem/orphans.py
        config = load()
        tokenizer = load_tokenizer(config.engine.tokenizer_path)
        self.store = open_store(config.memory, dim=config.embedder.dim)
        # Messages, ingested history and direct recall queries are all embedded here: a chat message costs
        # one embedding and no Triton hop (the `embedder` model is for direct use).
        self.embedder = model_process_embedder(config.embedder)
        self.recovery = VectorRecovery(self.store, self.embedder.embed, log=pb_utils.Logger.log_warn)
        self.memory = Memory(config.memory, self.store, tokenizer, self.embedder.embed)
        self.limits = config.memory
        self.metrics = Metrics(pb_utils, "memory", gauges=self.store.stats, interval=config.memory.metrics_interval_s)

    def execute(self, requests):
        responses = []
        for request in requests:
            direct = optional_input(request, "operation") is not None
            try:
                if direct:
                    outputs = self._operation(request)
                elif optional_input(request, "memory_handle") is not None:
                    outputs = self._commit(request)
                    self._crash_point()
                else:
                    outputs = self._recall(request)
            except Exception as error:  # never lose the batch: answer this request with the cause
                if not isinstance(error, ServiceError):
                    pb_utils.Logger.log_error(f"memory failed: {error!r}")
                    error = ServiceError(f"memory failed: {error}")
                if error.code in ("UNAVAILABLE", "INTERNAL"):  # not the caller's doing: a full disk, a bug
                    pb_utils.Logger.log_error(f"memory could not serve a request: {error}")
                    self.metrics.record("imem_memory_write_failures_total")
                if direct:
                    responses.append(error_response(error))
                    continue
                outputs = [bytes_tensor("refused", json.dumps({"code": error.code, "message": str(error)}))]
            wanted = set(request.requested_output_names())
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[t for t in outputs if not wanted or t.name() in wanted]))
        return responses

    def _ids(self, request):
        return (text(request, "tenant", required=False, default="default", max_bytes=self.limits.max_id_bytes),
                text(request, "conversation_id", max_bytes=self.limits.max_id_bytes))

    def _recall(self, request):
        tenant, conversation_id = self._ids(request)
        self.store.check_writable()  # refuse now, not after generating a reply that could not be stored
        message = text(request, "message", max_bytes=self.limits.max_message_bytes)
        system = text(request, "system", required=False, max_bytes=self.limits.max_message_bytes)
        policy = text(request, "recall_policy", required=False, default="default", max_bytes=64)
        if policy == "full":
            raise BadRequest("'recall_policy' full has no token budget: it is for the direct recall only")
        recall = self.memory.recall(tenant, conversation_id, message, None, system, policy)
        handle = self.memory.exchange_handle(recall)
        self.metrics.record("imem_memory_embed_duration_ms", recall.embed_ms)
        self.metrics.record("imem_memory_recall_duration_ms", recall.recall_ms)
        self.metrics.record("imem_memory_turns_recalled", len(recall.prompt.recalled) + len(recall.prompt.recent))
        self.metrics.record("imem_memory_context_tokens", recall.prompt.context_tokens)
        self.metrics.record("imem_memory_prompt_tokens", recall.prompt.tokens)
        return [
            bytes_tensor("prompt", recall.prompt.text),
            bytes_tensor("handle", handle),
            int_tensor("prompt_tokens", recall.prompt.tokens),
            bytes_tensor("recalled", json.dumps(recall.summary()["recalled"])),
        ]

    def _commit(self, request):
        handle = decode_handle(text(request, "memory_handle"))
        finish_reason = text(request, "finish_reason", required=False)
        if not finish_reason:
            user = self.memory.store_message(handle)
            self.metrics.record("imem_memory_turns_written_total")
            return [int_tensor("turn", user.turn), int_tensor("reply_turn", 0)]
        tokens = optional_input(request, "completion_tokens")
        user, reply, written = self.memory.store_reply(handle, text(request, "reply", required=False), finish_reason,
                                                       0 if tokens is None else int(tokens.reshape(-1)[0]))
        self.metrics.record("imem_memory_turns_written_total", written)
        return [int_tensor("turn", user.turn), int_tensor("reply_turn", reply.turn)]

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
            self._crash_point()
        elif operation == "export":
            result = self.memory.export(tenant, conversation_id)
        else:
            result = self.memory.delete(tenant, conversation_id)
        return [bytes_tensor("result", json.dumps(result))]

    def _crash_point(self):
        """Dies here, between a store write and its answer, when the crash benchmark has armed it."""
        if self.limits.crash_point_file and os.path.exists(self.limits.crash_point_file):
            os.kill(os.getpid(), signal.SIGKILL)

    def finalize(self):
        self.recovery.close()
        self.metrics.close()
        self.store.close()
