"""`imem bench soak` (`make soak MINUTES=N`): a steady Locust load for a long while against a server of its
own, reporting errors, how latency drifts, and how the resident memory of every process grows.

The load is loadtest/locustfile.py (half gRPC streaming, half HTTP generate_stream users, each holding
multi-turn conversations), below capacity. Every 10 s the RSS of tritonserver, each model instance's stub
and vLLM's engine processes is sampled; Locust's per-second history gives the median latency of each
minute. Drift: the median latency of the last minute over that of the second (the first warms up).
Writes results/soak.json and .png (latency and RSS over time).

    imem bench soak --minutes 20 --users 4
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from imem_bench import common
from imem_bench.loadtest import locust_command, locust_env, run_locust
from imem_bench.processes import MemorySampler

FULL_RESPONSE = ("grpc chat: full response", "http chat: full response")


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


def plot(path: Path, minutes: list[dict], samples: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, memory) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    latency.plot([m["minute"] for m in minutes], [m["latency_p50_ms"] for m in minutes], marker="o")
    latency.set_ylabel("full response p50 (ms)")
    latency.set_title("soak: latency and resident memory over time")
    for name in sorted({n for s in samples for n in s["rss_mib"]}):
        points = [(s["t_s"] / 60, s["rss_mib"][name]) for s in samples if name in s["rss_mib"]]
        memory.plot([p[0] for p in points], [p[1] for p in points], label=name)
    memory.set_ylabel("RSS (MiB)")
    memory.set_xlabel("minutes")
    memory.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from imem_serve.triton import TritonServer

    parser = argparse.ArgumentParser(prog="imem bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--users", type=int, default=4, help="Locust users, below capacity (default 4)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="output (default results/soak.json; PNG beside it)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="imem-soak-"))
    ports = dict(http_port=common._free_port(), grpc_port=common._free_port(), metrics_port=common._free_port())
    server = TritonServer(host="127.0.0.1", log_path=workdir / "triton.log", env={"IMEM_DATA_DIR": str(workdir / "data")},
                          **ports)
    print(f"starting tritonserver (log {workdir / 'triton.log'}) ...", flush=True)
    server.start()
    try:
        server.wait_ready(timeout=600)
        prefix = workdir / "soak"
        duration = f"{int(args.minutes * 60)}s"
        print(f"soak: {args.users} Locust users for {duration}; Locust files in {workdir}", flush=True)
        started = time.monotonic()
        with MemorySampler(server, interval=10) as sampler:
            summary = run_locust(locust_command(args.users, duration, prefix, history=True),
                                 locust_env(f"grpc://127.0.0.1:{ports['grpc_port']}",
                                            f"http://127.0.0.1:{ports['http_port']}", args.max_tokens, 10), prefix)
        elapsed = time.monotonic() - started
        data_mib = sum(f.stat().st_size for f in (workdir / "data").rglob("*") if f.is_file()) / 2**20
    finally:
        server.stop()
    if summary is None:
        return 1
    minutes = minute_medians(Path(f"{prefix}_stats_history.csv"))
    steady = [m for m in minutes[1:] if m["latency_p50_ms"]]
    drift = round(steady[-1]["latency_p50_ms"] / steady[0]["latency_p50_ms"], 3) if len(steady) > 1 else None
    growth = sampler.growth()
    hours = elapsed / 3600
    result = {
        "machine": common.machine(),
        "settings": {"minutes": args.minutes, "users": args.users, "max_tokens": args.max_tokens},
        "turns": summary["turns"], "failures": summary["failures"], "errors": summary["errors"],
        "turns_per_s": summary["turns_per_s"], "tokens_per_s": summary["tokens_per_s"],
        "latency_drift": drift, "minutes_detail": minutes,
        "rss": {name: {**g, "growth_mib_per_hour": round(g["growth_mib"] / hours, 1)} for name, g in growth.items()},
        "store_disk_mib": round(data_mib, 1),
        "rss_samples": sampler.samples,
    }
    print(common.md_table(["turns", "failures", "turns/s", "p50 minute 2 (ms)", "p50 last minute (ms)", "drift"],
                          [[summary["turns"], summary["failures"], summary["turns_per_s"],
                            steady[0]["latency_p50_ms"] if steady else "-",
                            steady[-1]["latency_p50_ms"] if steady else "-", drift]]))
    print()
    print(common.md_table(["process", "RSS first (MiB)", "last", "max", "growth", "growth per hour"],
                          [[name, g["first_mib"], g["last_mib"], g["max_mib"], g["growth_mib"],
                            result["rss"][name]["growth_mib_per_hour"]] for name, g in growth.items()]))
    path = common.write_results("soak", result, args.json)
    plot(common.plot_path(path), minutes, sampler.samples)
    return 0 if summary["failures"] == 0 else 1
