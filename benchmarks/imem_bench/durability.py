"""`imem bench durability`: what it costs to make an acknowledged turn survive power loss.

By default the embedded store acknowledges a write once it is in Qdrant Edge's write-ahead log, a
memory-mapped file: that survives the process being killed (the kernel has the pages), not a power loss
before the kernel writes them back. IMEM_FLUSH_EACH_WRITE=1 makes every write call the shard's flush()
(a sync to disk) before it returns. This times single-turn writes, as chat makes them, both ways, on a
store in --dir (default a temporary folder: put it on the disk you will run on).

    imem bench durability --writes 500
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from imem_bench import common


def time_writes(folder: Path, writes: int, flush_each_write: bool, seed: int = 0) -> list[float]:
    from imem.store import EdgeTurnStore
    from imem.turn import Turn

    store = EdgeTurnStore(folder, flush_each_write=flush_each_write)
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(writes, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    times = []
    try:
        for i in range(writes):
            turn = Turn("bench", f"conv-{i % 20}", 0, "user", f"message {i}: the kettle is in the left cupboard")
            started = time.perf_counter()
            store.add([turn], vectors[i:i + 1])
            times.append((time.perf_counter() - started) * 1000)
    finally:
        store.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imem bench durability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--dir", default=None, help="where the test stores go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="output (default results/durability.json)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="imem-durability-", dir=args.dir))
    rows = []
    try:
        for flush in (False, True):
            times = time_writes(root / f"flush-{flush}", args.writes, flush)
            rows.append({"flush_each_write": flush, "writes": len(times),
                         "p50_ms": round(common.percentile(times, 50), 3),
                         "p99_ms": round(common.percentile(times, 99), 3),
                         "mean_ms": round(sum(times) / len(times), 3)})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(common.md_table(["IMEM_FLUSH_EACH_WRITE", "writes", "p50 ms", "p99 ms", "mean ms"],
                          [[int(r["flush_each_write"]), r["writes"], r["p50_ms"], r["p99_ms"], r["mean_ms"]]
                           for r in rows]))
    print(f"\na write that survives power loss costs {rows[1]['p50_ms'] / rows[0]['p50_ms']:.1f}x at p50 "
          f"(+{rows[1]['p50_ms'] - rows[0]['p50_ms']:.2f} ms); a chat exchange makes two writes")
    common.write_results("durability", {"machine": common.machine(), "filesystem": str(root.parent), "rows": rows},
                         args.json)
    return 0
