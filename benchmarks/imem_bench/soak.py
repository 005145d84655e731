"""`imem bench soak` (`make soak MINUTES=N`): a steady Locust load for a long while against a server of its
own, reporting errors, how latency drifts, and how the memory of every process grows with the store.

The load is loadtest/locustfile.py (gRPC and HTTP users holding multi-turn conversations, with direct
recalls and ingests now and then), below capacity. On the synthetic engine (the default: tokens as a GPU
would stream them, so the load is memory's, not the CPU model's) it runs many users at once. Every 10 s
each process's resident memory is sampled in its parts (anonymous: the heap, what a leak grows; file: mapped
files, which the store's segments grow), with the store's turns and size on disk. Locust's per-second
history gives the median latency of each minute. Reported: each process's growth per 10,000 stored turns
after the warm-up (a least-squares slope against the turns stored), anonymous and file-backed apart.
Writes results/soak.json (results/soak-vllm.json for vLLM) and a PNG.

    imem bench soak --minutes 60
    imem bench soak --minutes 20 --engine vllm --users 4
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from imem_bench import common
from imem_bench.loadtest import locust_command, locust_env, run_locust
from imem_bench.processes import MemorySampler

FULL_RESPONSE = ("grpc chat: full response", "http chat: full response")
# Samples in the first share of the run are the warm-up (caches, pools, the first segments): left out of
# the slopes.
WARM_UP_SHARE = 0.25


def minute_medians(history_csv: Path) -> list[dict]:
    """Per minute of the run: the median of Locust's per-second 50th percentiles of full responses, and the
    requests and failures of that minute."""
    with open(history_csv, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] in FULL_RESPONSE]
    if not rows:
        return []
    start = int(rows[0]["Timestamp"])
    minutes: dict[int, dict] = {}
    for row in rows:
        minute = (int(row["Timestamp"]) - start) // 60
        entry = minutes.setdefault(minute, {"p50": [], "requests": {}, "failures": {}})
        if row["50%"] not in ("N/A", "0"):
            entry["p50"].append(float(row["50%"]))
        entry["requests"][row["Name"]] = int(row["Total Request Count"])
        entry["failures"][row["Name"]] = int(row["Total Failure Count"])
    out, before_requests, before_failures = [], 0, 0
    for minute in sorted(minutes):
        entry = minutes[minute]
        requests, failures = sum(entry["requests"].values()), sum(entry["failures"].values())
        out.append({"minute": minute + 1, "latency_p50_ms": round(statistics.median(entry["p50"]), 1) if entry["p50"]
                    else None, "requests": requests - before_requests, "failures": failures - before_failures})
        before_requests, before_failures = requests, failures
    return out


def store_reading(metrics_port: int, data: Path) -> dict:
    """The store's turns (memory's gauge) and its size on disk."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    turns = next((float(line.split()[-1]) for line in body.splitlines()
                  if line.startswith("imem_memory_turns_stored ")), None)
    return {"turns_stored": turns, "store_disk_mib": round(common.disk_mib(data), 1)}


def slopes(samples: list[dict]) -> dict:
    """Per process and part (anon, file): MiB per 10,000 stored turns after the warm-up, by least squares."""
    usable = [s for s in samples if s.get("turns_stored") is not None]
    usable = usable[int(len(usable) * WARM_UP_SHARE):]
    out: dict = {}
    if len(usable) < 3 or usable[-1]["turns_stored"] == usable[0]["turns_stored"]:
        return out
    for part in ("anon_mib", "file_mib"):
        for name in sorted({n for s in usable for n in s[part]}):
            points = [(s["turns_stored"], s[part][name]) for s in usable if name in s[part]]
            turns, mib = np.array(points, dtype=float).T
            slope = np.polyfit(turns, mib, 1)[0] if len(points) >= 3 else float("nan")
            out.setdefault(name, {})[part.removesuffix("_mib")] = round(float(slope) * 10_000, 2)
    return out


def plot(path: Path, minutes: list[dict], samples: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, anon, mapped) = plt.subplots(3, 1, figsize=(9, 10), sharex=False)
    latency.plot([m["minute"] for m in minutes], [m["latency_p50_ms"] for m in minutes], marker="o")
    latency.set_ylabel("full response p50 (ms)")
    latency.set_xlabel("minutes")
    latency.set_title("soak: latency, then each process's memory against the turns stored")
    for axis, part, label in ((anon, "anon_mib", "anonymous (MiB)"), (mapped, "file_mib", "file-backed (MiB)")):
        for name in sorted({n for s in samples for n in s[part]}):
            points = [(s.get("turns_stored") or 0, s[part][name]) for s in samples if name in s[part]]
            axis.plot([p[0] for p in points], [p[1] for p in points], label=name)
        axis.set_ylabel(label)
        axis.set_xlabel("turns stored")
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from imem_serve.launcher import TritonServer, free_ports

    parser = argparse.ArgumentParser(prog="imem bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--engine", choices=("synthetic", "vllm"), default="synthetic")
    parser.add_argument("--users", type=int, default=None, help="Locust users, below capacity (default 24 on "
                                                                "synthetic, 4 on vllm)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="30 s, 4 users")
    parser.add_argument("--json", default=None, help="output (default results/soak.json, results/soak-vllm.json; "
                                                     "PNG beside it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.users = 0.5, 4
    users = args.users or (24 if args.engine == "synthetic" else 4)

    workdir = Path(tempfile.mkdtemp(prefix="imem-soak-"))
    data = workdir / "data"
    http, grpc, metrics = free_ports(3)
    server = TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1",
                          log_path=workdir / "triton.log",
                          env={"IMEM_DATA_DIR": str(data), "IMEM_ENGINE": args.engine})
    print(f"starting tritonserver on the {args.engine} engine (log {workdir / 'triton.log'}) ...", flush=True)
    server.start()
    try:
        server.wait_ready(timeout=600)
        prefix = workdir / "soak"
        duration = f"{int(args.minutes * 60)}s"
        print(f"soak: {users} Locust users for {duration}; Locust files in {workdir}", flush=True)
        started = time.monotonic()
        with MemorySampler(server, interval=10, extra=lambda: store_reading(metrics, data)) as sampler:
            summary = run_locust(locust_command(users, duration, prefix, history=True),
                                 locust_env(f"grpc://127.0.0.1:{grpc}", f"http://127.0.0.1:{http}",
                                            args.max_tokens, 10), prefix)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    if summary is None:
        return 1
    minutes = minute_medians(Path(f"{prefix}_stats_history.csv"))
    steady = [m for m in minutes[1:] if m["latency_p50_ms"]]
    drift = round(steady[-1]["latency_p50_ms"] / steady[0]["latency_p50_ms"], 3) if len(steady) > 1 else None
    last = sampler.samples[-1]
    result = {
        "machine": common.machine(),
        "settings": {"minutes": args.minutes, "engine": args.engine, "users": users, "max_tokens": args.max_tokens,
                     "warm_up_share": WARM_UP_SHARE},
        "wall_s": round(elapsed, 1),
        "turns": summary["turns"], "failures": summary["failures"], "errors": summary["errors"],
        "turns_per_s": summary["turns_per_s"], "tokens_per_s": summary["tokens_per_s"],
        "turns_stored": last.get("turns_stored"), "store_disk_mib": last.get("store_disk_mib"),
        "latency_drift": drift, "minutes_detail": minutes,
        "growth_mib_per_10k_turns": slopes(sampler.samples),
        "anon": sampler.growth("anon_mib"), "file": sampler.growth("file_mib"), "rss": sampler.growth("rss_mib"),
        "samples": sampler.samples,
    }
    print(common.md_table(["turns", "failures", "turns/s", "p50 minute 2 (ms)", "p50 last minute (ms)", "drift",
                           "turns stored", "store on disk (MiB)"],
                          [[summary["turns"], summary["failures"], summary["turns_per_s"],
                            steady[0]["latency_p50_ms"] if steady else "-",
                            steady[-1]["latency_p50_ms"] if steady else "-", drift, last.get("turns_stored"),
                            last.get("store_disk_mib")]]))
    print()
    print(common.md_table(["process", "anonymous first -> last (MiB)", "file-backed first -> last (MiB)",
                           "anonymous per 10k turns", "file-backed per 10k turns"],
                          [[name, f"{result['anon'][name]['first_mib']} -> {result['anon'][name]['last_mib']}",
                            f"{result['file'][name]['first_mib']} -> {result['file'][name]['last_mib']}",
                            result["growth_mib_per_10k_turns"].get(name, {}).get("anon", "-"),
                            result["growth_mib_per_10k_turns"].get(name, {}).get("file", "-")]
                           for name in result["anon"]]))
    path = common.write_results("soak" if args.engine == "synthetic" else "soak-vllm", result, args.json)
    plot(common.plot_path(path), minutes, sampler.samples)
    return 0 if summary["failures"] == 0 else 1
