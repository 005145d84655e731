"""`imem bench loadtest`: a headless Locust run of loadtest/locustfile.py against a running server, then a
short summary of Locust's CSV: turns/s, tokens/s, time to first token and full-response latency
(p50/p95/p99), failures, and how often the fact a question asked about was recalled.

    imem bench loadtest --users 8 --duration 60s            # what `make loadtest` runs
    imem bench loadtest --quick                              # 2 users, 15 s

Locust runs in its own process (it monkey-patches with gevent). Its CSV files and HTML report, the
summary (summary.json, summary.md) and the exact command go to --out (default results/loadtest/<time>).
`imem bench soak` and `imem bench backpressure` run Locust through the same functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"
USER_CLASSES = {"grpc": ["GrpcChatUser"], "http": ["HttpChatUser"], "openai": ["OpenAIChatUser"],
                "both": ["GrpcChatUser", "HttpChatUser"]}
PROTOCOLS = ("grpc", "http", "openai")
# The entry Locust files a refusal for capacity under (an UNAVAILABLE error: nothing stored), and the
# check, after each, that its message is not in memory.
REFUSED = "chat: refused (busy)"
REFUSED_STORED = "memory: refused turn stored"


def _number(value: str | float | None) -> float:
    """A number of Locust's CSV; 0 for a missing or empty cell."""
    if value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _latency(row: dict | None) -> dict:
    if row is None:
        return {}
    return {"p50_ms": _number(row.get("50%")), "p95_ms": _number(row.get("95%")),
            "p99_ms": _number(row.get("99%")), "mean_ms": round(_number(row.get("Average Response Time")), 1)}


def summarize(stats_csv: str | Path, failures_csv: str | Path | None = None) -> dict:
    """The summary of one Locust run from its `<prefix>_stats.csv` (and `<prefix>_failures.csv`)."""
    with open(stats_csv, newline="", encoding="utf-8") as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    summary: dict = {"protocols": {}}
    totals = {"turns": 0, "failures": 0, "turns_per_s": 0.0, "tokens": 0.0, "tokens_per_s": 0.0}
    for protocol in PROTOCOLS:
        full = rows.get((protocol, f"{protocol} chat: full response"))
        refused = rows.get((protocol, f"{protocol} {REFUSED}"))
        if full is None and refused is None:
            continue
        if full is None:  # a flood where every request was refused
            full = {"Request Count": 0, "Failure Count": 0, "Requests/s": 0, "Average Content Size": 0}
        first = rows.get((protocol, f"{protocol} chat: first token"))
        check = rows.get((protocol, f"{protocol} memory: fact recalled"))
        turns, failures = int(_number(full["Request Count"])), int(_number(full["Failure Count"]))
        rate = _number(full["Requests/s"])
        tokens_per_turn = _number(full["Average Content Size"])  # completion tokens (see locustfile)
        entry: dict[str, Any] = {
            "turns": turns,
            "failures": failures,
            "turns_per_s": round(rate, 3),
            "tokens": round(tokens_per_turn * turns),
            "tokens_per_s": round(rate * tokens_per_turn, 2),
            "time_to_first_token": _latency(first),
            "latency": _latency(full),
        }
        if check is not None and int(_number(check["Request Count"])):
            entry["fact_recall_rate"] = round(_number(check["Average Content Size"]), 3)
            entry["fact_questions"] = int(_number(check["Request Count"]))
        if refused is not None:
            entry["refused"] = int(_number(refused["Request Count"]))
            entry["refusal_latency"] = _latency(refused)
        stored = rows.get((protocol, f"{protocol} {REFUSED_STORED}"))
        if stored is not None:
            entry["refused_checked"] = int(_number(stored["Request Count"]))
            entry["refused_stored"] = int(_number(stored["Failure Count"]))
        summary["protocols"][protocol] = entry
        for key in ("turns", "failures", "turns_per_s", "tokens", "tokens_per_s"):
            totals[key] += entry[key]
    summary.update({k: round(v, 2) if isinstance(v, float) else v for k, v in totals.items()})
    errors = []
    if failures_csv and Path(failures_csv).exists():
        with open(failures_csv, newline="", encoding="utf-8") as handle:
            errors = [{"name": r["Name"], "error": r["Error"], "occurrences": int(_number(r["Occurrences"]))}
                      for r in csv.DictReader(handle)]
    summary["errors"] = errors
    return summary


def table(summary: dict) -> str:
    lines = ["| protocol | turns | failures | turns/s | tokens/s | TTFT p50/p95/p99 ms | latency p50/p95/p99 ms "
             "| facts recalled |", "|---|---|---|---|---|---|---|---|"]
    for protocol, e in summary["protocols"].items():
        ttft, lat = e["time_to_first_token"], e["latency"]
        recall = f"{e['fact_recall_rate']:.0%} of {e['fact_questions']}" if "fact_recall_rate" in e else "-"
        ttft_ms = " / ".join(f"{ttft.get(k, 0):.0f}" for k in ("p50_ms", "p95_ms", "p99_ms"))
        latency_ms = " / ".join(f"{lat.get(k, 0):.0f}" for k in ("p50_ms", "p95_ms", "p99_ms"))
        lines.append(f"| {protocol} | {e['turns']} | {e['failures']} | {e['turns_per_s']:.2f} "
                     f"| {e['tokens_per_s']:.1f} | {ttft_ms} | {latency_ms} | {recall} |")
    lines.append(f"\nall: {summary['turns']} turns, {summary['failures']} failed, "
                 f"{summary['turns_per_s']:.2f} turns/s, {summary['tokens_per_s']:.1f} tokens/s")
    for error in summary["errors"][:5]:
        lines.append(f"error x{error['occurrences']} in {error['name']}: {error['error'][:160]}")
    return "\n".join(lines)


def locust_command(users: int, duration: str, prefix: Path, protocol: str = "both", spawn_rate: float | None = None,
                   history: bool = False) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users),
            "--spawn-rate", str(spawn_rate or users), "--run-time", duration,
            "--csv", str(prefix), "--html", str(prefix.parent / f"{prefix.name}-report.html"), "--only-summary",
            "--loglevel", "WARNING", *(["--csv-full-history"] if history else []), *USER_CLASSES[protocol]]


def locust_env(grpc_url: str | None, http_url: str | None, max_tokens: int, turns: int, **extra: str) -> dict:
    """The locustfile's options, as the environment variables it reads them from."""
    env = dict(os.environ, IMEM_LOADTEST_MAX_TOKENS=str(max_tokens), IMEM_LOADTEST_TURNS=str(turns), **extra)
    if grpc_url:
        env["IMEM_URL"] = grpc_url
    if http_url:
        env["IMEM_HTTP_URL"] = http_url
    return env


def seconds(duration: str) -> float:
    """Locust's --run-time ("90", "30s", "5m", "1h30m") in seconds."""
    units, total, number = {"h": 3600, "m": 60, "s": 1}, 0.0, ""
    for char in duration.strip():
        if char.isdigit() or char == ".":
            number += char
        else:
            total, number = total + float(number) * units[char], ""
    return total + (float(number) if number else 0.0)


# Locust stops its users at --run-time; past this many seconds more it has hung (as it did when a gRPC
# channel was closed a second time at exit: see _TritonClient in the locustfile) and is killed, as a failure.
EXIT_GRACE_S = 120


def run_locust(command: list[str], env: dict, prefix: Path) -> dict | None:
    """Runs Locust (in its own process: it monkey-patches with gevent) and summarises its CSV; None when it
    wrote no statistics or did not exit. Locust exits 1 when any request failed; the summary says which."""
    (prefix.parent / f"{prefix.name}-command.txt").write_text(" ".join(command) + "\n")
    limit = seconds(command[command.index("--run-time") + 1]) + EXIT_GRACE_S
    locust = subprocess.Popen(command, env=env, cwd=REPO_ROOT)
    try:
        locust.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        # Say where it hung, then kill it.
        try:
            dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(locust.pid)],
                                  capture_output=True, text=True, timeout=60)
            where = dump.stdout or dump.stderr
        except (OSError, subprocess.TimeoutExpired) as error:
            where = f"no py-spy dump: {error}"
        locust.kill()
        locust.wait()
        print(f"Locust did not exit within {limit:.0f} s (its run time + {EXIT_GRACE_S} s): killed; where it "
              f"hung (py-spy):\n{where}", file=sys.stderr)
        return None
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        print(f"Locust wrote no statistics (exit code {locust.returncode})", file=sys.stderr)
        return None
    return summarize(stats, Path(f"{prefix}_failures.csv"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8, help="concurrent conversations (default 8)")
    parser.add_argument("--spawn-rate", type=float, default=None,
                        help="users started per second (default: all at once)")
    parser.add_argument("--duration", default="60s", help="Locust run time, e.g. 30s, 5m (default 60s)")
    parser.add_argument("--protocol", choices=sorted(USER_CLASSES), default="both",
                        help="gRPC users, HTTP users, half of each (default both), or users of the OpenAI gateway")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per turn (default 32)")
    parser.add_argument("--turns", type=int, default=10, help="user turns per conversation (default 10)")
    parser.add_argument("--url", default=None, help="grpc://host:port (default IMEM_URL or grpc://localhost:GRPC_PORT)")
    parser.add_argument("--http-url", default=None, help="http://host:port (default IMEM_HTTP_URL or "
                                                         "http://localhost:HTTP_PORT)")
    parser.add_argument("--gateway-url", default=None, help="the OpenAI gateway, for --protocol openai "
                                                            "(default IMEM_GATEWAY_URL or http://localhost:8080)")
    parser.add_argument("--api-key", default=None, help="a gateway API key (default IMEM_API_KEY)")
    parser.add_argument("--out", default=None, help="results folder (default results/loadtest/<UTC time>)")
    parser.add_argument("--json", default=None, help="also write the summary JSON here")
    parser.add_argument("--quick", action="store_true", help="2 users for 15 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.duration = 2, "15s"
    out = Path(args.out or REPO_ROOT / "results" / "loadtest" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    print(f"running Locust for {args.duration} with {args.users} user(s) ({args.protocol}); results in {out}",
          flush=True)
    summary = run_locust(locust_command(args.users, args.duration, prefix, args.protocol, args.spawn_rate),
                         locust_env(args.url, args.http_url, args.max_tokens, args.turns,
                                    **{name: value for name, value in (("IMEM_GATEWAY_URL", args.gateway_url),
                                                                       ("IMEM_API_KEY", args.api_key)) if value}),
                         prefix)
    if summary is None:
        return 1
    summary["settings"] = {"users": args.users, "duration": args.duration, "protocol": args.protocol,
                           "max_tokens": args.max_tokens, "turns_per_conversation": args.turns}
    text = table(summary)
    print(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["failures"] == 0 and summary["turns"] > 0 else 1
