"""`imem bench backpressure` (`make backpressure`): a flood beyond capacity, measured with Locust.

Three Locust runs against one server of its own: a calm load, a flood of more users than the chat model
admits (IMEM_MAX_GENERATIONS generations in flight; by default twice as many), then the calm load again.
A refused user waits a second before its next turn, as clients honour Retry-After. For each phase: turns
served, requests refused (UNAVAILABLE, decided before memory does any work) and how fast the refusal came,
the time to first token and latency of served turns, other errors, and the largest RSS of every server
process; each refused message is looked up in memory (it must not be there). Recovery is the latency of
the second calm phase next to the first. Writes results/backpressure.json (-vllm for the vLLM engine).

Beside Locust, a probe (a client thread of the bench's own) sends one streamed chat (8 tokens) every 100 ms
and times the first token of those served and the refusal of those refused. Locust drives every user from
one process, which the flood keeps busy: its timings include its own wait for the CPU. The targets are
judged on the probe's timings; Locust's are reported beside them.

    imem bench backpressure                               # synthetic engine, 32 generations, 64 flood users
    imem bench backpressure --engine vllm --flood-users 160
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from imem_bench import common
from imem_bench.loadtest import REFUSED, REFUSED_STORED, locust_command, locust_env, run_locust
from imem_bench.processes import MemorySampler, cpu_by_role

# Targets with the synthetic engine at twice the capacity.
TARGETS = {"refusal_p99_ms_at_most": 50.0, "flood_ttft_p50_vs_calm_at_most": 1.5, "refused_stored": 0}


class Probe:
    """One streamed chat every `every` seconds in a conversation of its own, timed: time to the first token
    of a served chat, time to the refusal of a refused one. After the phase, the conversation is exported
    and no refused message may be in it."""

    def __init__(self, grpc_url: str, conversation: str, max_tokens: int = 8, every: float = 0.1):
        self.grpc_url, self.conversation, self.max_tokens, self.every = grpc_url, conversation, max_tokens, every
        self.ttft_ms: list[float] = []
        self.refusal_ms: list[float] = []
        self.refused: list[str] = []
        self.other_errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> "Probe":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def _run(self) -> None:
        from imem_client.client import Client
        from imem_client.wire import Code, ServiceError

        with Client(self.grpc_url, timeout=60) as client:
            number = 0
            while not self.stop.wait(self.every):
                number += 1
                message = f"probe message {number}: how is the weather by the river?"
                started = time.perf_counter()
                first: float | None = None
                try:
                    for _ in client.stream_chat(self.conversation, message, tenant="probe",
                                                sampling={"max_tokens": self.max_tokens}):
                        first = first or time.perf_counter()
                    if first is None:
                        raise ServiceError("a stream without a response")
                    self.ttft_ms.append((first - started) * 1000)
                except ServiceError as error:
                    if error.code == Code.UNAVAILABLE:
                        self.refusal_ms.append((time.perf_counter() - started) * 1000)
                        self.refused.append(message)
                    else:
                        self.other_errors.append(str(error)[:200])

    def row(self) -> dict:
        """The phase's probe figures; looks every refused message up in memory (after the phase)."""
        from imem_client.client import Client
        from imem_client.wire import Code, ServiceError

        try:
            with Client(self.grpc_url, timeout=60) as client:
                stored = {t["text"] for t in client.export(self.conversation, tenant="probe")["turns"]}
        except ServiceError as error:
            if error.code != Code.NOT_FOUND:
                raise
            stored = set()
        def pct(values: list[float], q: float) -> float | None:
            return round(common.percentile(values, q), 1) if values else None

        return {"probe_served": len(self.ttft_ms), "probe_ttft_p50_ms": pct(self.ttft_ms, 50),
                "probe_refused": len(self.refusal_ms), "probe_refusal_p50_ms": pct(self.refusal_ms, 50),
                "probe_refusal_p99_ms": pct(self.refusal_ms, 99),
                "probe_refused_stored": sum(1 for m in self.refused if m in stored),
                "probe_other_errors": self.other_errors[:5]}


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


def cores_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores each server process kept busy over the phase, and "clients and the rest": the machine's busy
    time less the server's (Locust, the probe, anything else running)."""
    cores = {role: round((after[role] - before.get(role, 0.0)) / seconds, 2) for role in after}
    cores["clients and the rest"] = round(cores.pop("machine") - sum(cores.values()), 2)
    return cores


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


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
            cpu_before, started = cpu_by_role(server), time.monotonic()
            with MemorySampler(server, interval=2) as sampler, \
                    Probe(f"grpc://127.0.0.1:{grpc}", f"probe-{name.replace(' ', '-')}") as probe:
                summary = run_locust(locust_command(users, f"{seconds}s", prefix), env, prefix)
            if summary is None:
                return 1
            rows.append({**phase_row(name, summary, sampler), **probe.row(),
                         "cpu_cores": cores_used(cpu_before, cpu_by_role(server), time.monotonic() - started)})
        alive = server.started.poll() is None
    finally:
        server.stop()
    calm, flood, after = rows
    recovery = round(after["latency_p50_ms"] / calm["latency_p50_ms"], 2) if calm["latency_p50_ms"] else None
    ttft_ratio = ratio(flood["probe_ttft_p50_ms"], calm["probe_ttft_p50_ms"])
    locust_ttft_ratio = ratio(flood["ttft_p50_ms"], calm["ttft_p50_ms"])
    ms = lambda value: "-" if value is None else f"{value:.0f}"  # noqa: E731
    print(common.md_table(
        ["phase", "served", "served/s", "refused", "refusal p50 / p99 ms (probe; Locust)",
         "TTFT p50 ms (probe; Locust)", "latency p50 / p99 ms", "refused and stored", "other errors",
         "largest RSS (MiB)"],
        [[r["phase"], r["served"], r["served_per_s"], r["refused"],
          f"{ms(r['probe_refusal_p50_ms'])} / {ms(r['probe_refusal_p99_ms'])}; "
          f"{ms(r['refusal_p50_ms'])} / {ms(r['refusal_p99_ms'])}",
          f"{ms(r['probe_ttft_p50_ms'])}; {ms(r['ttft_p50_ms'])}", f"{r['latency_p50_ms']} / {r['latency_p99_ms']}",
          f"{r['refused_stored'] + r['probe_refused_stored']} of {r['refused_checked'] + r['probe_refused']}",
          r["other_errors"] + len(r["probe_other_errors"]),
          ", ".join(f"{n} {v:.0f}" for n, v in sorted(r["rss_max_mib"].items()))] for r in rows]))
    print("\ncores busy, by process: " + "; ".join(
        f"{r['phase']}: " + ", ".join(f"{n} {v}" for n, v in r["cpu_cores"].items()) for r in rows))
    print(f"flood: served TTFT p50 {ttft_ratio}x the calm phase's (probe; Locust: {locust_ttft_ratio}x); "
          f"recovery: calm latency p50 after the flood is {recovery}x that before; server alive: {alive}")
    refused_stored = sum(r["refused_stored"] + r["probe_refused_stored"] for r in rows)
    result = {"machine": common.machine(), "settings": vars(args), "phases": rows,
              "flood_ttft_p50_vs_calm": ttft_ratio, "locust_flood_ttft_p50_vs_calm": locust_ttft_ratio,
              "recovery_latency_ratio": recovery, "server_survived": alive}
    if args.engine == "synthetic":
        result["targets"] = {**TARGETS, "met": {
            "refusal_p99_ms": flood["probe_refusal_p99_ms"] is not None
            and flood["probe_refusal_p99_ms"] <= TARGETS["refusal_p99_ms_at_most"],
            "flood_ttft_p50_vs_calm": ttft_ratio is not None
            and ttft_ratio <= TARGETS["flood_ttft_p50_vs_calm_at_most"],
            "refused_stored": refused_stored == 0}}
    common.write_results("backpressure" if args.engine == "synthetic" else "backpressure-vllm", result, args.json)
    clean = alive and refused_stored == 0 and all(r["other_errors"] == 0 and not r["probe_other_errors"] for r in rows)
    return 0 if clean else 1
