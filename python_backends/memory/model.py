"""Triton entry point of the `memory` model, the only owner of the turn store.

It serves three kinds of request, told apart by which inputs are present:
  * recall (chat step 2): conversation_id, tenant, message, query_embedding -> prompt, handle
  * commit (chat step 4, once per llm response): memory_handle + llm_* tensors -> the chat outputs;
    on the final response it stores the exchange before answering, so an acknowledged turn is durable
  * a direct operation: operation (recall | ingest | export | delete) + ids + payload -> result (JSON);
    a recall's optional payload {"policy": ...} picks a reference policy for benchmarks (imem/recall.py)
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from imem.backfill import VectorBackfill
from imem.config import load
from imem.memory import Memory, decode_handle, encode_handle
from imem.store import open_store
from imem.tensors import BadRequest, bytes_tensor, error_response, int_tensor, optional_input, text

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
        from transformers import AutoTokenizer

        config = load()
        tokenizer = AutoTokenizer.from_pretrained(config.engine.tokenizer_path)
        self.store = open_store(config.memory, dim=config.embedder.dim)
        # Replies are embedded off the client's path; on start it also embeds any reply that a crash left
        # stored without its vector (retrying until the embedder model is up).
        self.backfill = VectorBackfill(self.store, self._embed, log=pb_utils.Logger.log_warn,
                                       linger=config.memory.backfill_linger_ms / 1000)
        self.memory = Memory(config.memory, self.store, tokenizer, self._embed, self.backfill)
        self.limits = config.memory

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
            except Exception as error:  # never lose the batch: answer this request with the cause
                pb_utils.Logger.log_error(f"memory failed: {error!r}")
                responses.append(error_response(f"memory failed: {error}"))
        return responses

    def _ids(self, request):
        return (text(request, "tenant", required=False, default="default", max_bytes=self.limits.max_id_bytes),
                text(request, "conversation_id", max_bytes=self.limits.max_id_bytes))

    def _recall(self, request):
        tenant, conversation_id = self._ids(request)
        message = text(request, "message", max_bytes=self.limits.max_message_bytes)
        system = text(request, "system", required=False, max_bytes=self.limits.max_message_bytes)
        vector = optional_input(request, "query_embedding")
        if vector is None:
            raise BadRequest("'query_embedding' is required")
        vector = vector.reshape(-1).astype(np.float32)
        recall = self.memory.recall(tenant, conversation_id, message, vector, system)
        return [
            bytes_tensor("prompt", recall.prompt.text),
            bytes_tensor("handle", encode_handle(recall, vector)),
        ]

    def _commit(self, request):
        handle = decode_handle(text(request, "memory_handle"))
        finish_reason = text(request, "llm_finish_reason", required=False)
        turn = 0
        if finish_reason:
            user, _ = self.memory.commit(handle["tenant"], handle["conversation_id"], handle["message"],
                                         handle["vector"], text(request, "llm_completion", required=False))
            turn = user.turn
        completion_tokens = optional_input(request, "llm_output_tokens")
        return [
            bytes_tensor("text_output", text(request, "llm_text", required=False)),
            bytes_tensor("finish_reason", finish_reason),
            int_tensor("turn", turn),
            int_tensor("prompt_tokens", int(handle["prompt_tokens"])),
            int_tensor("completion_tokens", 0 if completion_tokens is None else int(completion_tokens.reshape(-1)[0])),
            bytes_tensor("recalled", json.dumps(handle["recalled"]) if finish_reason else "[]"),
        ]

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
        elif operation == "export":
            result = self.memory.export(tenant, conversation_id)
        else:
            result = self.memory.delete(tenant, conversation_id)
        return [bytes_tensor("result", json.dumps(result))]

    def _embed(self, texts):
        """Embeds through the `embedder` model (BLS), so one copy of the embedding model serves all."""
        vectors = []
        for start in range(0, len(texts), 64):
            chunk = texts[start:start + 64]
            response = pb_utils.InferenceRequest(
                model_name="embedder",
                inputs=[pb_utils.Tensor("text", np.array([[t.encode("utf-8")] for t in chunk], dtype=np.object_))],
                requested_output_names=["embedding"],
            ).exec()
            if response.has_error():
                raise RuntimeError(f"embedder: {response.error().message()}")
            vectors.append(pb_utils.get_output_tensor_by_name(response, "embedding").as_numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, 384), dtype=np.float32)

    def finalize(self):
        # Triton allows no BLS call (the embedder) once unloading has begun: what is not embedded by now
        # stays stored without its vector and is embedded on the next start.
        self.backfill.close(timeout=0)
        self.store.close()
