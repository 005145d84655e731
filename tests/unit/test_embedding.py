"""The default embedder runs all-MiniLM-L6-v2 on ONNX Runtime: it must give the vectors that
sentence-transformers gives (stored vectors and recall stay the same whichever runtime made them)."""

from dataclasses import replace

import numpy as np
import pytest

from imem.config import EmbedderConfig
from imem.embedding import Embedder

TEXTS = ["hi", "What did Melanie paint last summer at the lake house?", "Zürich, 東京, naïve café ☕",
         "My locker code at the gym is 4417.", " ".join(["memory"] * 400)]  # the last is cut at 256 tokens


def test_onnx_runtime_gives_the_vectors_of_sentence_transformers(embedder):
    assert embedder.runtime == "onnx"
    reference = Embedder(replace(EmbedderConfig(), runtime="torch"))
    # One at a time and in one padded batch: padding must not change a sentence's vector.
    one_by_one = np.concatenate([embedder.embed([t]) for t in TEXTS])
    batched = embedder.embed(TEXTS)
    expected = reference.embed(TEXTS)
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    np.testing.assert_allclose(one_by_one, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_onnx_runtime_on_a_gpu_is_refused_with_the_setting_to_use():
    with pytest.raises(ValueError, match="IMEM_EMBEDDER_RUNTIME=torch"):
        Embedder(replace(EmbedderConfig(), device="cuda"))


def test_a_missing_export_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(RuntimeError, match="python -m imem.embedding"):
        Embedder(replace(EmbedderConfig(), model=str(tmp_path)))


def test_an_unknown_runtime_is_named():
    with pytest.raises(ValueError, match="IMEM_EMBEDDER_RUNTIME must be onnx or torch, got 'tvm'"):
        Embedder(replace(EmbedderConfig(), runtime="tvm"))


def test_several_threads_embedding_at_once_get_the_vectors_each_alone_gets(embedder):
    """Memory embeds a message while its recovery embeds old turns, on one embedder."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [TEXTS[i % len(TEXTS):] + TEXTS[:i % len(TEXTS)] for i in range(40)]
    expected = [embedder.embed(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(embedder.embed, batches))
    for one, other in zip(got, expected, strict=True):
        np.testing.assert_allclose(one, other, atol=1e-6)


def test_a_long_list_is_embedded_in_batches_of_like_length_and_given_back_in_order(embedder):
    texts = [("word " * (1 + (i * 7) % 40)).strip() + f" {i}" for i in range(150)]
    vectors = embedder.embed(texts)
    for i in (0, 1, 63, 64, 99, 149):
        np.testing.assert_allclose(vectors[i], embedder.embed([texts[i]])[0], atol=1e-5)
