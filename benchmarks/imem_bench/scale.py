"""`imem bench scale`: recall latency and ingest rate as the store grows, in-process (no server).

For each size, a fresh store is filled with that many turns spread over --conversations conversations
(synthetic chat text, so BM25 has real words; random vectors clustered per conversation, so a query finds
turns above the similarity threshold as real ones do). Queries go to --probes conversations of exactly
--probe-turns turns that are part of every size, so only the store's size changes between sizes, not the
length of the conversations asked about. For those:
  recall   Memory.recall exactly as the chat path runs it (recent turns, batched searches, prompt packing with
           the real tokenizer), excluding only the query's embedding
  similar  the store's filtered dense top-k alone; latest: the last turns alone
plus the ingest rate (blocks of up to 256 turns of one conversation, as memory ingest writes them; vectors
given, BM25 computed), the
folder's size on disk, the process's RSS, the time to reopen the store, and the start-up scan for turns
still waiting for their vector (VectorBackfill).

Stores: `edge` (Qdrant Edge, the embedded default) at every size; `local` (qdrant-client's local mode,
brute force in Python, the stand-in for a Qdrant server in tests) only up to --local-max turns, because
it needs minutes per 100k turns (DESIGN.md: 160 s ingest, 1-1.5 s per query at 100k).

    imem bench scale                                  # 1k, 10k, 100k turns
    imem bench scale --sizes 1000,10000,100000,1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from imem_bench import common
from imem_bench.synthetic import history

DIM = 384
BATCH = 256


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class Corpus:
    """Turns of `conversations` conversations, filled round-robin; each conversation's vectors cluster
    around its own centre (cosine ~0.5 between its turns), like the turns of one real conversation."""

    def __init__(self, conversations: int, seed: int, probes: int = 0, probe_turns: int = 0):
        self.rng = np.random.default_rng(seed)
        self.conversations = conversations
        self.probes, self.probe_turns = probes, probe_turns
        self.centres = _unit(self.rng.normal(size=(conversations + probes, DIM)))
        self.texts = [h["text"] for h in history(random.Random(seed), 4096)]

    def vectors(self, conversation_indexes: np.ndarray) -> np.ndarray:
        noise = self.rng.normal(size=(len(conversation_indexes), DIM)) / np.sqrt(DIM)
        return _unit(self.centres[conversation_indexes] + noise)

    def batches(self, start: int, stop: int, tenant: str):
        """Turns start..stop-1 as (turns, vectors) blocks of one conversation each (the store adds the turns
        of one conversation at a time): the probe conversations first, whole, then the others round-robin,
        each visit adding a block of up to BATCH turns."""
        from imem.turn import Turn

        first = self.probes * self.probe_turns
        if start < first:
            for probe in range(start // self.probe_turns, min(first, stop) // self.probe_turns):
                indexes = np.full(self.probe_turns, self.conversations + probe)
                yield self._turns(probe * self.probe_turns, indexes, tenant, Turn), self.vectors(indexes)
            start = first
        block = int(np.clip((stop - start) // max(self.conversations, 1), 1, BATCH))
        for number, begin in enumerate(range(start, stop, block)):
            indexes = np.full(min(block, stop - begin), number % self.conversations)
            yield self._turns(begin, indexes, tenant, Turn), self.vectors(indexes)

    def _turns(self, begin, indexes, tenant, Turn):
        return [Turn(tenant, f"conv-{c}", 0, "user" if (begin + i) % 2 else "assistant",
                     self.texts[(begin + i) % len(self.texts)]) for i, c in enumerate(indexes)]


def open_store(kind: str, folder: Path):
    from imem.store import EdgeTurnStore
    from imem.store.server import ServerTurnStore

    if kind == "edge":
        return EdgeTurnStore(folder / "edge-shard", DIM)
    from qdrant_client import QdrantClient

    return ServerTurnStore(QdrantClient(path=str(folder / "qdrant-local")), "turns", DIM)


def measure(kind: str, sizes: list[int], conversations: int, probes: int, probe_turns: int, queries: int, seed: int,
            tokenizer) -> list[dict]:
    import warnings

    from imem.config import MemoryConfig
    from imem.memory import Memory

    warnings.filterwarnings("ignore", message="Payload indexes have no effect")
    rows = []
    folder = Path(tempfile.mkdtemp(prefix=f"imem-scale-{kind}-"))
    try:
        gc.collect()
        rss_before = _rss_mib()
        store = open_store(kind, folder)
        corpus = Corpus(conversations, seed, probes, probe_turns)
        tenant, stored, ingest_s = "scale", 0, 0.0
        for size in sizes:
            # Grow the same store to the next size: only the new turns are timed.
            started = time.perf_counter()
            for turns, vectors in corpus.batches(stored, size, tenant):
                store.add(turns, vectors)
            ingest_s = time.perf_counter() - started
            added, stored = size - stored, size
            memory = Memory(MemoryConfig(data_dir=str(folder)), store, tokenizer, embed=_no_embedding)
            rng = np.random.default_rng(seed + size)
            picks = conversations + rng.integers(0, probes, size=queries)
            recall_ms, similar_ms, latest_ms = [], [], []
            for c in picks:
                conversation = f"conv-{c}"
                query = corpus.vectors(np.array([c]))[0]
                message = corpus.texts[int(rng.integers(len(corpus.texts)))]
                t0 = time.perf_counter()
                memory.recall(tenant, conversation, message, query)
                t1 = time.perf_counter()
                store.similar(tenant, conversation, query, limit=6, threshold=0.3)
                t2 = time.perf_counter()
                store.latest(tenant, conversation, 3)
                t3 = time.perf_counter()
                recall_ms.append((t1 - t0) * 1000)
                similar_ms.append((t2 - t1) * 1000)
                latest_ms.append((t3 - t2) * 1000)
            t0 = time.perf_counter()
            store.missing_vectors(64)
            scan_ms = (time.perf_counter() - t0) * 1000
            row = {
                "store": kind, "turns": size, "conversations": min(conversations, size - probes * probe_turns) + probes,
                "ingest_turns_per_s": round(added / ingest_s, 1) if ingest_s else None,
                "recall_p50_ms": round(common.percentile(recall_ms, 50), 3),
                "recall_p99_ms": round(common.percentile(recall_ms, 99), 3),
                "similar_p50_ms": round(common.percentile(similar_ms, 50), 3),
                "similar_p99_ms": round(common.percentile(similar_ms, 99), 3),
                "latest_p50_ms": round(common.percentile(latest_ms, 50), 3),
                "missing_vector_scan_ms": round(scan_ms, 2),
                "rss_mib": round(_rss_mib() - rss_before, 1),
            }
            if kind == "edge":
                store.shard.flush()
            row["disk_mib"] = round(_disk_mib(folder), 1)
            if kind == "edge":  # reopen: what a restart costs at this size
                store.close()
                t0 = time.perf_counter()
                store = open_store(kind, folder)
                row["reopen_s"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            print(f"  {kind:5s} {size:>9,} turns: ingest {row['ingest_turns_per_s']:>9,.0f} turns/s, recall p50 "
                  f"{row['recall_p50_ms']:.2f} ms p99 {row['recall_p99_ms']:.2f} ms, similar p50 "
                  f"{row['similar_p50_ms']:.3f} ms, disk {row['disk_mib']:.0f} MiB, RSS +{row['rss_mib']:.0f} MiB",
                  flush=True)
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _no_embedding(texts):
    raise AssertionError("the scale benchmark measures recall without embedding")


def report(rows: list[dict]) -> str:
    header = ["store", "turns", "ingest turns/s", "recall p50 ms", "recall p99 ms", "similar p50 ms",
              "similar p99 ms", "latest p50 ms", "disk MiB", "RSS MiB", "reopen s"]
    return common.md_table(header, [[r["store"], f"{r['turns']:,}", f"{r['ingest_turns_per_s']:,.0f}",
                                     r["recall_p50_ms"], r["recall_p99_ms"], r["similar_p50_ms"], r["similar_p99_ms"],
                                     r["latest_p50_ms"], r["disk_mib"], r["rss_mib"], r.get("reopen_s", "-")]
                                    for r in rows])


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in sorted({r["store"] for r in rows}):
        mine = [r for r in rows if r["store"] == kind]
        sizes = [r["turns"] for r in mine]
        left.plot(sizes, [r["recall_p50_ms"] for r in mine], "o-", label=f"{kind} recall p50")
        left.plot(sizes, [r["recall_p99_ms"] for r in mine], "o--", label=f"{kind} recall p99")
        right.plot(sizes, [r["ingest_turns_per_s"] for r in mine], "o-", label=f"{kind}")
    left.set(xscale="log", yscale="log", xlabel="stored turns", ylabel="ms (without embedding)",
             title="Recall latency")
    right.set(xscale="log", yscale="log", xlabel="stored turns", ylabel="turns/s", title="Ingest rate")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="stored turns (default 1000,10000,100000; "
                                                                    "1000000 takes a few minutes and ~3 GiB)")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=20, help="conversations queried (default 20) ...")
    parser.add_argument("--probe-turns", type=int, default=40, help="... of this many turns each (default 40)")
    parser.add_argument("--queries", type=int, default=300, help="recalls timed per size (default 300)")
    parser.add_argument("--stores", default="edge,local", help="edge, local or both (default edge,local)")
    parser.add_argument("--local-max", type=int, default=10000, help="largest size for qdrant-client's local mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default results/scale.json; PNG beside it)")
    parser.add_argument("--quick", action="store_true", help="1k and 2k turns, 50 queries, Qdrant Edge only")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.stores = "1000,2000", 50, "edge"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from imem.config import load
    from imem.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(load().engine.tokenizer_path)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if sizes[0] < args.probes * args.probe_turns:
        parser.error(f"the smallest size must hold the {args.probes} x {args.probe_turns} probe turns")
    rows = []
    for kind in args.stores.split(","):
        mine = sizes if kind == "edge" else [s for s in sizes if s <= args.local_max]
        if mine:
            print(f"{kind}: {', '.join(f'{s:,}' for s in mine)} turns", flush=True)
            rows += measure(kind, mine, args.conversations, args.probes, args.probe_turns, args.queries, args.seed,
                            tokenizer)
    print()
    print(report(rows))
    edge = [r for r in rows if r["store"] == "edge"]
    flat = None
    if len(edge) >= 2:
        flat = round(edge[-1]["recall_p50_ms"] / edge[0]["recall_p50_ms"], 2)
        print(f"\nedge recall p50 at {edge[-1]['turns']:,} turns is {flat}x that at {edge[0]['turns']:,}")
    result = {"benchmark": "scale", "machine": common.machine(),
              "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "notes": f"qdrant-client local mode measured up to {args.local_max:,} turns only (brute force in Python)",
              "rows": rows, "edge_recall_p50_growth": flat}
    path = common.write_results("scale", result, args.json)
    plot(rows, common.plot_path(path))
    return 0
