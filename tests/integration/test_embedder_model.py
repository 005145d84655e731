"""The `embedder` model called directly (clients, perf_analyzer): the vectors memory searches with, and a
named error for text that is not UTF-8. The chat path does not call it: memory embeds in its own process."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _embed(service, texts: list[bytes]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(service.grpc_url.removeprefix("grpc://"))
    try:
        tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t] for t in texts], dtype=np.object_))
        return client.infer("embedder", [tensor]).as_numpy("embedding")
    finally:
        client.close()


def test_the_embedder_gives_the_vectors_memory_searches_with(service, embedder):
    texts = ["My locker code at the gym is 4417.", "Zürich in the rain"]
    vectors = _embed(service, [t.encode() for t in texts])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)


def test_text_that_is_not_utf8_is_named(service):
    with pytest.raises(InferenceServerException, match="not valid UTF-8"):
        _embed(service, [b"caf\xe9 \xff"])
