"""`imem bench backpressure` (`make backpressure`): a flood beyond capacity, measured with Locust.

Three Locust runs against one server of its own: a calm load, a flood of more users than the chat model
admits (IMEM_MAX_GENERATIONS generations in flight; by default twice as many), then the calm load again.
A refused user waits a second before its next turn, as clients honour Retry-After. For each phase: turns
served, requests refused (UNAVAILABLE, decided before memory does any work) and how fast the refusal came,
the time to first token and latency of served turns, other errors, and the largest RSS of every server
process; each refused message is looked up in memory (it must not be there). Recovery is the latency of
the second calm phase next to the first. Writes results/backpressure.json (-vllm for the vLLM engine).

    imem bench backpressure                               # synthetic engine, 32 generations, 64 flood users
    imem bench backpressure --engine vllm --flood-users 160
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from imem_bench import common
from imem_bench.loadtest import REFUSED, REFUSED_STORED, locust_command, locust_env, run_locust
from imem_bench.processes import MemorySampler

# Targets with the synthetic engine at twice the capacity.
TARGETS = {"refusal_p99_ms_at_most": 50.0, "flood_ttft_p50_vs_calm_at_most": 1.5, "refused_stored": 0}


def phase_row(name: str, summary: dict, sampler: MemorySampler) -> dict:
    protocols = summary["protocols"].values()
    refused = sum(p.get("refused", 0) for p in protocols)
    refusal = [p["refusal_latency"] for p in protocols if p.get("refused")]
    served = [p for p in protocols if p["turns"]]
    other_errors = [e for e in summary["errors"] if not e["name"].endswith(REFUSED)]
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
        "refused_checked": sum(p.get("refused_checked", 0) for p in protocols),
        "refused_stored": sum(p.get("refused_stored", 0) for p in protocols),
        "other_errors": sum(e["occurrences"] for e in other_errors if not e["name"].endswith(REFUSED_STORED)),
        "other_error_kinds": other_errors[:5],
        "rss_max_mib": {n: g["max_mib"] for n, g in sampler.growth().items()},
    }


def main(argv: list[str] | None = None) -> int:
    from imem_serve.launcher import TritonServer, free_ports

    parser = argparse.ArgumentParser(prog="imem bench backpressure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("synthetic", "vllm"), default="synthetic")
    parser.add_argument("--max-generations", type=int, default=32, help="IMEM_MAX_GENERATIONS of the server")
    parser.add_argument("--calm-users", type=int, default=8)
    parser.add_argument("--flood-users", type=int, default=None, help="default: twice --max-generations")
    parser.add_argument("--calm-seconds", type=int, default=40)
    parser.add_argument("--flood-seconds", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="output (default results/backpressure.json)")
    parser.add_argument("--quick", action="store_true", help="4 generations, phases of 6, 10 and 6 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_generations, args.calm_users, args.calm_seconds, args.flood_seconds = 4, 2, 6, 10
    args.flood_users = args.flood_users or 2 * args.max_generations

    workdir = Path(tempfile.mkdtemp(prefix="imem-backpressure-"))
    http, grpc, metrics = free_ports(3)
    server = TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1",
                          log_path=workdir / "triton.log",
                          env={"IMEM_DATA_DIR": str(workdir / "data"), "IMEM_ENGINE": args.engine,
                               "IMEM_MAX_GENERATIONS": str(args.max_generations)})
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
        alive = server.started.poll() is None
    finally:
        server.stop()
    calm, flood, after = rows
    recovery = round(after["latency_p50_ms"] / calm["latency_p50_ms"], 2) if calm["latency_p50_ms"] else None
    ttft_ratio = round(flood["ttft_p50_ms"] / calm["ttft_p50_ms"], 2) if calm["ttft_p50_ms"] else None
    print(common.md_table(
        ["phase", "served", "served/s", "refused", "refusal p50 / p99 ms", "TTFT p50 ms", "latency p50 / p99 ms",
         "refused and stored", "other errors", "largest RSS (MiB)"],
        [[r["phase"], r["served"], r["served_per_s"], r["refused"], f"{r['refusal_p50_ms']} / {r['refusal_p99_ms']}",
          r["ttft_p50_ms"], f"{r['latency_p50_ms']} / {r['latency_p99_ms']}",
          f"{r['refused_stored']} of {r['refused_checked']}", r["other_errors"],
          ", ".join(f"{n} {v:.0f}" for n, v in sorted(r["rss_max_mib"].items()))] for r in rows]))
    print(f"\nflood: served TTFT p50 {ttft_ratio}x the calm phase's; recovery: calm latency p50 after the flood "
          f"is {recovery}x that before; server alive: {alive}")
    result = {"machine": common.machine(), "settings": vars(args), "phases": rows,
              "flood_ttft_p50_vs_calm": ttft_ratio, "recovery_latency_ratio": recovery, "server_survived": alive}
    if args.engine == "synthetic":
        result["targets"] = {**TARGETS, "met": {
            "refusal_p99_ms": flood["refusal_p99_ms"] is not None and flood["refusal_p99_ms"] <= TARGETS[
                "refusal_p99_ms_at_most"],
            "flood_ttft_p50_vs_calm": ttft_ratio is not None
            and ttft_ratio <= TARGETS["flood_ttft_p50_vs_calm_at_most"],
            "refused_stored": sum(r["refused_stored"] for r in rows) == 0}}
    common.write_results("backpressure" if args.engine == "synthetic" else "backpressure-vllm", result, args.json)
    clean = alive and all(r["other_errors"] == 0 and r["refused_stored"] == 0 for r in rows)
    return 0 if clean else 1
