"""`imem bench ingest`: how fast `imem memory ingest` imports a long existing history, through the server.

Each run writes a synthetic history (alternating user/assistant turns of chat-like length) to a JSON-lines
file and times the command a user runs, `imem memory ingest -c ID FILE`, from start to exit; memory
embeds every turn and stores it. A new conversation per run.

    imem bench ingest                                   # starts its own server; 10,000 turns, 2 runs
    imem bench ingest --turns 10000 --url grpc://localhost:8001
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imem_bench import common
from imem_bench.synthetic import history


def ingest_once(url: str, conversation: str, path: Path) -> dict:
    imem = Path(sys.executable).parent / "imem"
    started = time.perf_counter()
    done = subprocess.run([str(imem), "memory", "ingest", "--url", url, "--tenant", "bench-ingest", "-c",
                           conversation, str(path)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"imem memory ingest failed: {done.stderr.strip() or done.stdout.strip()}")
    return {"seconds": round(seconds, 2), **json.loads(done.stdout)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running server (grpc://host:port); default: start one")
    parser.add_argument("--turns", type=int, default=10_000, help="turns in the history (default 10,000)")
    parser.add_argument("--runs", type=int, default=2, help="histories ingested, one after another (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default results/ingest.json)")
    parser.add_argument("--quick", action="store_true", help="200 turns, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.runs = 200, 1
    with tempfile.TemporaryDirectory(prefix="imem-ingest-") as folder:
        path = Path(folder) / "history.jsonl"
        path.write_text("\n".join(json.dumps(h) for h in history(random.Random(args.seed), args.turns)) + "\n")
        runs = []
        with common.server(args.url) as (grpc_url, _, _):
            for run in range(args.runs):
                result = ingest_once(grpc_url, f"history-{int(time.time())}-{run}", path)
                if result["ingested"] != args.turns:
                    raise RuntimeError(f"ingested {result['ingested']} of {args.turns} turns")
                result["turns_per_s"] = round(args.turns / result["seconds"], 1)
                runs.append(result)
                print(f"run {run + 1}: {args.turns:,} turns in {result['seconds']:.1f} s, "
                      f"{result['turns_per_s']:,.0f} turns/s", flush=True)
    best = max(r["turns_per_s"] for r in runs)
    print(f"\nimem memory ingest of {args.turns:,} turns: {best:,.0f} turns/s (best of {len(runs)})")
    common.write_results("ingest", {"benchmark": "ingest", "machine": common.machine(),
                                    "settings": {k: v for k, v in vars(args).items() if k != "json"},
                                    "runs": runs, "turns_per_s": best}, args.json)
    return 0
