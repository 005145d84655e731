"""`imem bench backpressure` (`make backpressure`): a flood beyond capacity, measured with Locust.

Three Locust runs against one server of its own: a calm load, a flood of many more users than the llm
model admits (IMEM_MAX_GENERATIONS generations in flight), then the calm load again. For each phase:
turns served, requests refused ("busy", before anything is stored) and how fast the refusal came, the
latency of served turns, other errors, and the largest RSS of every server process; recovery is the
latency of the second calm phase next to the first. Writes results/backpressure.json.

    imem bench backpressure --max-generations 32 --flood-users 160
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from imem_bench import common
from imem_bench.loadtest import locust_command, locust_env, run_locust
from imem_bench.processes import MemorySampler


def phase_row(name: str, summary: dict, sampler: MemorySampler) -> dict:
    protocols = summary["protocols"].values()
    refused = sum(p.get("refused", 0) for p in protocols)
    refusal = [p["refusal_latency"] for p in protocols if p.get("refused")]
    served = [p for p in protocols if p["turns"]]
    other_errors = [e for e in summary["errors"] if "busy" not in e["error"]]
    return {
        "phase": name,
        "served": sum(p["turns"] - p["failures"] for p in protocols),
        "served_per_s": round(sum(p["turns_per_s"] for p in protocols), 2),
        "refused": refused,
        "refusal_p50_ms": max((r["p50_ms"] for r in refusal), default=None),
        "refusal_p99_ms": max((r["p99_ms"] for r in refusal), default=None),
        "latency_p50_ms": max((p["latency"]["p50_ms"] for p in served), default=None),
        "latency_p99_ms": max((p["latency"]["p99_ms"] for p in served), default=None),
        "ttft_p50_ms": max((p["time_to_first_token"]["p50_ms"] for p in served), default=None),
        "other_errors": sum(e["occurrences"] for e in other_errors),
        "other_error_kinds": other_errors[:5],
        "rss_max_mib": {n: g["max_mib"] for n, g in sampler.growth().items()},
    }


def main(argv: list[str] | None = None) -> int:
    from imem_serve.triton import TritonServer, free_ports

    parser = argparse.ArgumentParser(prog="imem bench backpressure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-generations", type=int, default=32, help="IMEM_MAX_GENERATIONS of the server")
    parser.add_argument("--calm-users", type=int, default=4)
    parser.add_argument("--flood-users", type=int, default=160)
    parser.add_argument("--calm-seconds", type=int, default=40)
    parser.add_argument("--flood-seconds", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="output (default results/backpressure.json)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="imem-backpressure-"))
    http, grpc, metrics = free_ports(3)
    server = TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1",
                          log_path=workdir / "triton.log",
                          env={"IMEM_DATA_DIR": str(workdir / "data"), "IMEM_MAX_GENERATIONS": str(args.max_generations)})
    print(f"starting tritonserver (log {workdir / 'triton.log'}) ...", flush=True)
    server.start()
    rows = []
    try:
        server.wait_ready(timeout=600)
        env = locust_env(f"grpc://127.0.0.1:{grpc}", f"http://127.0.0.1:{http}",
                         args.max_tokens, 10)
        for name, users, seconds in (("calm", args.calm_users, args.calm_seconds),
                                     ("flood", args.flood_users, args.flood_seconds),
                                     ("calm after", args.calm_users, args.calm_seconds)):
            print(f"{name}: {users} users for {seconds} s", flush=True)
            prefix = workdir / name.replace(" ", "-")
            with MemorySampler(server, interval=2) as sampler:
                summary = run_locust(locust_command(users, f"{seconds}s", prefix), env, prefix)
            if summary is None:
                return 1
            rows.append(phase_row(name, summary, sampler))
        alive = server.process.poll() is None
    finally:
        server.stop()
    calm, after = rows[0], rows[2]
    recovery = round(after["latency_p50_ms"] / calm["latency_p50_ms"], 2) if calm["latency_p50_ms"] else None
    print(common.md_table(
        ["phase", "served", "served/s", "refused", "refusal p50 / p99 ms", "latency p50 / p99 ms", "other errors",
         "largest RSS (MiB)"],
        [[r["phase"], r["served"], r["served_per_s"], r["refused"], f"{r['refusal_p50_ms']} / {r['refusal_p99_ms']}",
          f"{r['latency_p50_ms']} / {r['latency_p99_ms']}", r["other_errors"],
          ", ".join(f"{n} {v:.0f}" for n, v in sorted(r["rss_max_mib"].items()))] for r in rows]))
    print(f"\nrecovery: calm latency p50 after the flood is {recovery}x that before; server alive: {alive}")
    common.write_results("backpressure", {"machine": common.machine(), "settings": vars(args), "phases": rows,
                                          "recovery_latency_ratio": recovery, "server_survived": alive}, args.json)
    return 0 if alive and all(r["other_errors"] == 0 for r in rows) else 1
