"""Triton entry point of the `embedder` model: a batch of texts in, unit-length vectors out. For direct use
(clients, perf_analyzer): memory embeds with its own copy of the same embedder, in its own process."""

import numpy as np
import triton_python_backend_utils as pb_utils

from imem.config import load
from imem.embedding import model_process_embedder
from imem.orphans import die_with_server


class TritonPythonModel:
    def initialize(self, args):
        die_with_server()  # a stub orphaned by a crash can hang in exit(): see imem/orphans.py
        self.embedder = model_process_embedder(load().embedder)

    def execute(self, requests):
        # Dynamic batching hands us several requests: embed them in one call.
        texts, sizes, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            array = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            try:
                batch = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array]
            except UnicodeDecodeError as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"the message to embed is not valid UTF-8 (byte {error.start})"))
                batch = []
            texts.extend(batch)
            sizes.append(len(batch))
        vectors = self.embedder.embed(texts)
        start = 0
        for index, size in enumerate(sizes):
            if responses[index] is None:
                block = vectors[start:start + size]
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("embedding", np.ascontiguousarray(block))])
            start += size
        return responses
