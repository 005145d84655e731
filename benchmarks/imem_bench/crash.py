"""`imem bench crash` (`make crash ROUNDS=N`): kill the server at random moments under write load, restart
it at once on the same data, and check every acknowledged turn, round after round (after Qdrant's own
crasher, qdrant/crasher).

Each round:
  1. traffic: worker threads chat in several conversations of several tenants, each request over one of
     gRPC streaming, gRPC with one response, HTTP generate_stream and HTTP generate; now and then one
     ingests a few history lines. Every message carries a unique tag naming its tenant and conversation.
     A request is acknowledged when its final response (or the ingest's result) reached the client.
  2. a fault at a random moment: SIGKILL to tritonserver alone (its stubs and vLLM's engine are orphaned
     and must get out of the way), SIGKILL to its whole process group, SIGKILL to one model's stub
     (memory, llm or an embedder instance; Triton 2.51 does not restart a dead stub, so the server is
     then stopped), or SIGTERM (a graceful stop while requests are in flight);
  3. a new server on the same data folder at once; a start that fails is a restart failure;
  4. checks, over everything acknowledged in every round so far:
     lost         an acknowledged turn missing, or holding other text, role or reply link
     duplicates   a message or a reply stored more than once
     gaps         turn numbers of a conversation not exactly 1..N
     half_written a stored reply that is not a whole generation (its finish reason is not stop/length)
     leaks        a turn of another conversation or tenant in an export or a recall
     vectors      stored turns still without a dense vector 90 s after the restart
Prints a summary and writes results/crash.json.

    imem bench crash --rounds 50
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from imem_bench import common

TENANTS = ("acme", "globex", "initech")
PROTOCOLS = ("grpc-stream", "grpc", "http-stream", "http")
FAULTS = ("kill-server", "kill-group", "kill-memory", "kill-llm", "kill-embedder", "sigterm")
WORDS = ("river apple lantern quartz violet harbor meadow copper falcon ember willow saffron glacier "
         "orbit canyon pepper marble thunder cobalt juniper").split()


@dataclass
class Acknowledged:
    """What a client was told is stored: turn number -> (role, text, reply_to)."""
    turns: dict = field(default_factory=dict)


@dataclass
class Round:
    number: int
    fault: str
    acknowledged: int = 0
    client_errors: int = 0
    restart_s: float = 0.0
    restart_failed: str = ""
    orphans_left: int = 0
    findings: list = field(default_factory=list)


class Traffic:
    """Worker threads writing into the conversations until stopped; records what was acknowledged."""

    def __init__(self, grpc_url: str, http_url: str, conversations: list[tuple[str, str]], ledger: dict,
                 rng: random.Random, round_number: int, workers: int):
        self.urls = {"grpc": grpc_url, "http": http_url}
        self.conversations, self.ledger, self.round = conversations, ledger, round_number
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged = self.errors = 0
        self.threads = [threading.Thread(target=self._work, args=(w, random.Random(rng.random())), daemon=True)
                        for w in range(workers)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _work(self, worker: int, rng: random.Random):
        from imem_client.client import Client

        clients = {name: Client(url, timeout=60) for name, url in self.urls.items()}
        sent = 0
        while not self.stop.is_set():
            tenant, conversation = rng.choice(self.conversations)
            tag = f"[{tenant}/{conversation} r{self.round} w{worker} n{sent}"
            sent += 1
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            try:
                if rng.random() < 0.1:
                    lines = [{"role": rng.choice(["user", "assistant"]), "text": f"{tag}.{i}] history: {words}"}
                             for i in range(rng.randint(1, 4))]
                    result = clients["grpc"].ingest(conversation, lines, tenant=tenant)
                    stored = {result["first_turn"] + i: (line["role"], line["text"], 0) for i, line in enumerate(lines)}
                else:
                    protocol = rng.choice(PROTOCOLS)
                    client = clients["grpc" if protocol.startswith("grpc") else "http"]
                    message = f"{tag}] {words}"
                    reply = client.chat(conversation, message, tenant=tenant, stream=protocol.endswith("stream"),
                                        sampling={"max_tokens": rng.randint(2, 24)})
                    stored = {reply.turn: ("user", message, 0), reply.reply_turn: ("assistant", reply.text, reply.turn)}
            except Exception:  # the server is being killed: not acknowledged, nothing to check
                with self.lock:
                    self.errors += 1
                time.sleep(0.25)
                continue
            with self.lock:
                self.ledger[(tenant, conversation)].turns.update(stored)
                self.acknowledged += 1
        for client in clients.values():
            client.close()


def ours(text: str) -> bool:
    """A text this test wrote (a message or history line): it starts with its tenant/conversation tag."""
    return any(text.startswith(f"[{tenant}/") for tenant in TENANTS)


def inject(server, fault: str, rng: random.Random) -> None:
    if fault == "kill-server":
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()  # reaped: its orphaned stubs see it gone (they poll their parent every 300 ms)
    elif fault == "kill-group":
        server.kill()
    elif fault == "sigterm":
        server.stop()
    else:
        model = fault.removeprefix("kill-")
        stubs = [pid for name, pid in server.stubs().items() if name.startswith(model + "_")]
        if stubs:
            os.kill(rng.choice(stubs), signal.SIGKILL)
        time.sleep(1.0)  # requests in flight meet the dead stub
        server.stop()


def metric(server, name: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def check(grpc_url: str, ledger: dict, server, vector_wait: float) -> dict:
    """Every finding, by kind, over everything acknowledged so far."""
    from imem_client.client import Client, ServiceError

    findings: dict[str, list] = {k: [] for k in ("lost", "duplicates", "gaps", "half_written", "leaks", "vectors")}
    client = Client(grpc_url, timeout=120)
    exports = {}
    for (tenant, conversation), acked in ledger.items():
        try:
            turns = client.export(conversation, tenant=tenant)["turns"]
        except ServiceError as error:  # an unknown conversation: lost if anything was acknowledged in it
            turns = []
            if acked.turns:
                findings["lost"].append(f"{tenant}/{conversation}: export failed: {error}")
        exports[(tenant, conversation)] = turns
        by_number = {t["turn"]: t for t in turns}
        if [t["turn"] for t in turns] != list(range(1, len(turns) + 1)):
            findings["gaps"].append(f"{tenant}/{conversation}: numbers {[t['turn'] for t in turns][:50]}")
        for number, (role, text, reply_to) in acked.turns.items():
            stored = by_number.get(number)
            if stored is None or (stored["role"], stored["text"], stored.get("reply_to", 0)) != (role, text, reply_to):
                findings["lost"].append(f"{tenant}/{conversation} turn {number}: acknowledged {(role, text[:60])}, "
                                        f"stored {stored and (stored['role'], stored['text'][:60])}")
        tags = Counter(t["text"].split("]", 1)[0] for t in turns if ours(t["text"]))
        findings["duplicates"] += [f"{tenant}/{conversation}: {tag}] stored {n} times" for tag, n in tags.items() if n > 1]
        replies = Counter(t["reply_to"] for t in turns if t.get("reply_to"))
        findings["duplicates"] += [f"{tenant}/{conversation}: turn {n} answered {k} times" for n, k in replies.items() if k > 1]
        for t in turns:
            if t["role"] == "assistant" and t.get("reply_to") and \
                    t["metadata"].get("finish_reason") not in ("stop", "length"):
                findings["half_written"].append(f"{tenant}/{conversation} turn {t['turn']}: {t['metadata']}")
            if ours(t["text"]) and not t["text"].startswith(f"[{tenant}/{conversation} "):
                findings["leaks"].append(f"{tenant}/{conversation} exports {t['text'][:60]}")
    # Recall must not reach across conversations or tenants either: ask each with another one's tag.
    keys = list(ledger)
    for i, (tenant, conversation) in enumerate(keys):
        if not exports[(tenant, conversation)]:
            continue
        other = keys[(i + 1) % len(keys)]
        try:
            result = client.recall(conversation, f"{other[0]}/{other[1]} river apple", tenant=tenant)
        except ServiceError as error:
            findings["leaks"].append(f"{tenant}/{conversation}: recall failed: {error}")
            continue
        for t in result["recalled"] + result["recent"]:
            if ours(t["text"]) and not t["text"].startswith(f"[{tenant}/{conversation} "):
                findings["leaks"].append(f"{tenant}/{conversation} recalls {t['text'][:60]}")
    client.close()
    deadline = time.monotonic() + vector_wait
    missing = metric(server, "imem_memory_vectors_missing")
    while (missing is None or missing > 0) and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = metric(server, "imem_memory_vectors_missing")
    if missing:
        findings["vectors"].append(f"{missing:.0f} stored turns without a dense vector after {vector_wait:.0f} s")
    return findings


def main(argv: list[str] | None = None) -> int:
    from imem_serve.triton import TritonServer, group_members

    parser = argparse.ArgumentParser(prog="imem bench crash", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=6, help="client threads writing at once (default 6)")
    parser.add_argument("--conversations", type=int, default=4, help="conversations per tenant (default 4)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"which faults to draw from ({', '.join(FAULTS)})")
    parser.add_argument("--max-delay", type=float, default=4.0, help="latest moment of the fault after the traffic "
                                                                      "starts (s)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data", default=None, help="data folder (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="output (default results/crash.json)")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="imem-crash-"))
    data = Path(args.data) if args.data else workdir / "data"
    ports = dict(http_port=common._free_port(), grpc_port=common._free_port(), metrics_port=common._free_port())
    env = {"IMEM_DATA_DIR": str(data), "IMEM_METRICS_INTERVAL_S": "0.5", "IMEM_BACKFILL_LINGER_MS": "200"}
    conversations = [(tenant, f"conv-{i}") for tenant in TENANTS for i in range(args.conversations)]
    ledger = {key: Acknowledged() for key in conversations}
    grpc_url, http_url = f"grpc://127.0.0.1:{ports['grpc_port']}", f"http://127.0.0.1:{ports['http_port']}"

    def new_server() -> TritonServer:
        return TritonServer(host="127.0.0.1", log_path=workdir / "triton.log", env=env, exit_timeout=5, **ports)

    print(f"crash test: {args.rounds} rounds, seed {seed}, data {data}, log {workdir / 'triton.log'}", flush=True)
    server = new_server().start()
    server.wait_ready(timeout=600)
    rounds: list[Round] = []
    totals = Counter()
    for number in range(1, args.rounds + 1):
        fault = rng.choice(faults)
        current = Round(number, fault)
        traffic = Traffic(grpc_url, http_url, conversations, ledger, rng, number, args.workers)
        traffic.start()
        time.sleep(rng.uniform(0.3, args.max_delay))
        old_group = server.process.pid
        inject(server, fault, rng)
        started = time.monotonic()
        server = new_server().start()  # at once, on the same data: orphans of a killed server may still run
        try:
            server.wait_ready(timeout=600)
        except Exception as error:  # noqa: BLE001 - a restart failure is a finding; start clean for the next round
            current.restart_failed = str(error)
            server.kill()
            server = new_server().start()
            server.wait_ready(timeout=600)
        current.restart_s = round(time.monotonic() - started, 1)
        traffic.finish()
        leftover = group_members(old_group)
        current.orphans_left = len(leftover)
        for pid in leftover:  # never expected; reported, then cleaned up so the next round starts clean
            os.kill(pid, signal.SIGKILL)
        current.acknowledged, current.client_errors = traffic.acknowledged, traffic.errors
        findings = check(grpc_url, ledger, server, vector_wait=90)
        current.findings = [f"{kind}: {item}" for kind, items in findings.items() for item in items]
        for kind, items in findings.items():
            totals[kind] = max(totals[kind], len(items))  # findings are cumulative: the worst round counts
        rounds.append(current)
        print(f"round {number:3d} {fault:13s} acknowledged {traffic.acknowledged:3d} (client errors "
              f"{traffic.errors:3d}) restart {current.restart_s:5.1f} s"
              + (f" RESTART FAILED: {current.restart_failed[:200]}" if current.restart_failed else "")
              + (f" ORPHANS LEFT: {len(leftover)}" if leftover else "")
              + "".join(f"\n    {f[:300]}" for f in current.findings[:10]), flush=True)
    server.stop()

    acknowledged_turns = sum(len(a.turns) for a in ledger.values())
    restart = [r.restart_s for r in rounds]
    summary = {
        "rounds": len(rounds),
        "acknowledged": sum(r.acknowledged for r in rounds),
        "acknowledged_turns": acknowledged_turns,
        "lost": totals["lost"],
        "duplicates": totals["duplicates"],
        "gaps": totals["gaps"],
        "leaks": totals["leaks"],
        "half_written": totals["half_written"],
        "vectors_unset": totals["vectors"],
        "restart_failures": sum(1 for r in rounds if r.restart_failed),
        "orphans_left": sum(r.orphans_left for r in rounds),
        "faults": dict(Counter(r.fault for r in rounds)),
        "client_errors": sum(r.client_errors for r in rounds),
        "restart_s_p50": round(common.percentile(restart, 50), 1) if restart else None,
        "restart_s_max": max(restart) if restart else None,
    }
    print("\n" + common.md_table(["rounds", "acknowledged requests", "acknowledged turns", "lost", "duplicates",
                                  "gaps", "leaks", "half-written", "vectors unset", "restart failures"],
                                 [[summary[k] for k in ("rounds", "acknowledged", "acknowledged_turns", "lost",
                                                        "duplicates", "gaps", "leaks", "half_written", "vectors_unset",
                                                        "restart_failures")]]))
    print(f"faults: {summary['faults']}; restart p50 {summary['restart_s_p50']} s, max {summary['restart_s_max']} s; "
          f"{summary['client_errors']} requests failed in flight (never acknowledged)")
    common.write_results("crash", {"machine": common.machine(), "seed": seed, "workers": args.workers,
                                   "conversations": len(conversations), **summary,
                                   "rounds_detail": [r.__dict__ for r in rounds]}, args.json)
    clean = all(summary[k] == 0 for k in ("lost", "duplicates", "gaps", "leaks", "half_written", "vectors_unset",
                                          "restart_failures", "orphans_left"))
    return 0 if clean else 1
