"""`imem bench crash` (`make crash ROUNDS=N`): kill the server at random moments under write load, restart
it at once on the same data, and check every acknowledged turn, round after round (after Qdrant's own
crasher, qdrant/crasher).

Each round:
  0. conversations that have lived `--lifetime` rounds are deleted (staggered: one or two a round) and
     new ones take their place: a deletion is then crashed into like any write, and a round's check reads
     a few rounds of conversations, so it costs the same at round 1,000 as at round 1;
  1. traffic: worker threads chat in several conversations of several tenants, each request over one of
     gRPC streaming, gRPC with one response, HTTP generate_stream and HTTP generate; now and then one
     ingests a few history lines. Every message carries a unique tag naming its tenant and conversation.
     A request is acknowledged when its final response (or the ingest's result) reached the client.
  2. a fault at a random moment (FAULTS); the processes it killed are recorded, and a fault that found
     nothing to kill fails its round;
  3. a new server on the same data folder at once (after a killed engine, the chat model starts a new
     engine itself: the round waits for a chat to succeed); a start that fails is a restart failure;
  4. checks, over everything acknowledged in every round so far, read back from the store (export):
     lost             an acknowledged turn missing, or holding other text, role or reply link
     duplicates       a message or a reply stored more than once
     duplicate_numbers two acknowledged requests given the same turn number
     gaps             turn numbers of a conversation not exactly 1..N
     half_written     a stored reply that is not a whole generation (its finish reason is not stop/length)
     leaks            a turn of another conversation or tenant in an export or a recall
     vectors          stored turns without a dense vector (every turn is stored with one)
     resurrected      a deleted conversation that exports anything again (checked for the conversations
                      deleted in the last `--lifetime` rounds, and for every one after the last round)
     orphans          processes of the stopped server still alive
Prints a summary and writes results/crash-<engine>.json (results/crash.json for vLLM).

    imem bench crash --rounds 1000                 # the synthetic engine (a GPU's stream): restarts in seconds
    imem bench crash --rounds 50 --engine vllm
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from imem_bench import common
from imem_client.wire import Code, ServiceError

TENANTS = ("acme", "globex", "initech")
PROTOCOLS = ("grpc-stream", "grpc", "http-stream", "http")
FAULTS = {
    "kill-server": "SIGKILL to tritonserver alone: its model processes are orphaned and must get out of the way",
    "kill-group": "SIGKILL to tritonserver and every process of its group",
    "kill-memory": "SIGKILL to the memory model's process (Triton 2.51 never restarts one: the server is then "
                   "killed and started again, as `imem serve`'s supervisor does)",
    "kill-chat": "SIGKILL to the chat model's process (likewise)",
    "kill-engine": "SIGKILL to vLLM's engine processes (the chat model starts a new engine itself); vLLM only",
    "kill-after-store": "memory kills itself right after a store write, before it answers (the crash point)",
    "sigterm": "a graceful stop while requests are in flight",
}
FINDINGS = ("lost", "duplicates", "duplicate_numbers", "gaps", "half_written", "leaks", "vectors", "resurrected")
WORDS = ("river apple lantern quartz violet harbor meadow copper falcon ember willow saffron glacier "
         "orbit canyon pepper marble thunder cobalt juniper").split()


@dataclass
class Acknowledged:
    """What clients were told is stored in one conversation: turn number -> (role, text, reply_to)."""
    turns: dict = field(default_factory=dict)
    # Two acknowledged requests that reported one turn number: a stored turn overwritten, or a number lied.
    clashes: list = field(default_factory=list)

    def add(self, stored: dict) -> None:
        for number, turn in stored.items():
            if number in self.turns and self.turns[number] != turn:
                self.clashes.append(f"turn {number} acknowledged as {self.turns[number][:2]} and as {turn[:2]}")
            self.turns.setdefault(number, turn)


@dataclass
class Round:
    number: int
    fault: str
    killed: list = field(default_factory=list)  # pids of the processes the fault killed
    acknowledged: int = 0
    client_errors: int = 0
    fault_s: float = 0.0  # injecting the fault (a graceful stop waits for it)
    restart_s: float = 0.0
    check_s: float = 0.0
    restart_failed: str = ""
    orphans_left: int = 0
    store_mib: float = 0.0  # the data folder on disk after the round
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
                self.ledger[(tenant, conversation)].add(stored)
                self.acknowledged += 1
        for client in clients.values():
            client.close()


def ours(text: str) -> bool:
    """A text this test wrote (a message or history line): it starts with its tenant/conversation tag."""
    return any(text.startswith(f"[{tenant}/") for tenant in TENANTS)


def engine_processes(server) -> list[int]:
    from imem_serve.launcher import group_members

    return [pid for pid in group_members(server.process.pid)
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::")]


def inject(server, fault: str, rng: random.Random, crash_point: Path) -> list[int]:
    """Injects `fault`; returns the pids it killed (for a graceful stop, tritonserver's)."""
    pid = server.process.pid
    if fault == "kill-server":
        os.kill(pid, signal.SIGKILL)
        server.process.wait()  # reaped: its orphaned stubs see it gone (they poll their parent every 300 ms)
        return [pid]
    if fault == "kill-group":
        from imem_serve.launcher import group_members

        members = group_members(pid)
        server.kill()
        return members
    if fault == "sigterm":
        server.stop()
        return [pid]
    if fault == "kill-engine":
        pids = engine_processes(server)
        for engine in pids:
            os.kill(engine, signal.SIGKILL)
        return pids
    if fault == "kill-after-store":
        from imem_serve.launcher import alive  # a stub that killed itself stays a zombie until reaped

        memory = server.stubs().get("memory_0_0")
        crash_point.touch()  # armed: memory's next write is its last (a minute: on a loaded machine the
        deadline = time.monotonic() + 60  # traffic can take that long to get a write through)
        while memory and alive(memory) and time.monotonic() < deadline:
            time.sleep(0.02)
        crash_point.unlink(missing_ok=True)
        killed = [memory] if memory and not alive(memory) else []
        server.kill()
        return killed
    stub = next((p for name, p in server.stubs().items() if name.startswith(fault.removeprefix("kill-") + "_")), None)
    if stub is None:
        return []
    os.kill(stub, signal.SIGKILL)
    time.sleep(1.0)  # requests in flight meet the dead process; then what the supervisor does
    server.kill()
    return [stub]


def check(grpc_url: str, ledger: dict, deleted: list) -> dict:
    """Every finding, by kind, over everything acknowledged in the live conversations (`ledger`) and the
    deleted ones named in `deleted`."""
    from imem_client.client import Client

    findings: dict[str, list] = {k: [] for k in FINDINGS}
    client = Client(grpc_url, timeout=120)
    for tenant, conversation in deleted:
        try:
            turns = client.export(conversation, tenant=tenant)["turns"]
        except ServiceError as error:
            if error.code != Code.NOT_FOUND:
                raise
            continue
        findings["resurrected"].append(f"{tenant}/{conversation}: deleted, exports {len(turns)} turns")
    exports = {}
    for (tenant, conversation), acked in ledger.items():
        findings["duplicate_numbers"] += [f"{tenant}/{conversation}: {clash}" for clash in acked.clashes]
        try:
            export = client.export(conversation, tenant=tenant)
        except ServiceError as error:  # an unknown conversation: lost if anything was acknowledged in it
            if error.code != Code.NOT_FOUND:
                raise
            export = {"turns": [], "vectors_missing": 0}
            if acked.turns:
                findings["lost"].append(f"{tenant}/{conversation}: unknown to memory: {error}")
        turns = exports[(tenant, conversation)] = export["turns"]
        if export["vectors_missing"]:
            findings["vectors"].append(f"{tenant}/{conversation}: {export['vectors_missing']} turns without a vector")
        by_number = {t["turn"]: t for t in turns}
        if [t["turn"] for t in turns] != list(range(1, len(turns) + 1)):
            findings["gaps"].append(f"{tenant}/{conversation}: numbers {[t['turn'] for t in turns][:50]}")
        for number, (role, text, reply_to) in acked.turns.items():
            stored = by_number.get(number)
            if stored is None or (stored["role"], stored["text"], stored.get("reply_to", 0)) != (role, text, reply_to):
                findings["lost"].append(f"{tenant}/{conversation} turn {number}: acknowledged {(role, text[:60])}, "
                                        f"stored {stored and (stored['role'], stored['text'][:60])}")
        tags = Counter(t["text"].split("]", 1)[0] for t in turns if ours(t["text"]))
        findings["duplicates"] += [f"{tenant}/{conversation}: {tag}] stored {n} times"
                                   for tag, n in tags.items() if n > 1]
        replies = Counter(t["reply_to"] for t in turns if t.get("reply_to"))
        findings["duplicates"] += [f"{tenant}/{conversation}: turn {n} answered {k} times"
                                   for n, k in replies.items() if k > 1]
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
        result = client.recall(conversation, f"{other[0]}/{other[1]} river apple", tenant=tenant)
        for t in result["recalled"] + result["recent"]:
            if ours(t["text"]) and not t["text"].startswith(f"[{tenant}/{conversation} "):
                findings["leaks"].append(f"{tenant}/{conversation} recalls {t['text'][:60]}")
    client.close()
    return findings


def orphans_after_grace(group: int, killed_at: float) -> list[int]:
    """Processes of a stopped server's group still alive once the orphan watcher (imem/orphans.py) has had
    its time to see tritonserver gone and kill what did not exit: before that they may still be exiting."""
    from imem.orphans import GRACE_S, POLL_S
    from imem_serve.launcher import group_members

    deadline = killed_at + POLL_S + GRACE_S + 1.0
    while (leftover := group_members(group)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return leftover


def delete(grpc_url: str, conversation: tuple[str, str]) -> None:
    from imem_client.client import Client

    with Client(grpc_url, timeout=60) as client:
        try:
            client.delete(conversation[1], tenant=conversation[0])
        except ServiceError as error:  # nothing was ever acknowledged in it: there is nothing to delete
            if error.code != Code.NOT_FOUND:
                raise


def chats_again(grpc_url: str, timeout: float = 300) -> None:
    """Waits until a chat is answered (after a killed engine, the chat model starts a new one)."""
    from imem_client.client import Client

    deadline = time.monotonic() + timeout
    with Client(grpc_url, timeout=60) as client:
        while True:
            try:
                client.chat("crash-probe", "are you back?", tenant="probe", sampling={"max_tokens": 2})
                return
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    from imem_serve.launcher import TritonServer, free_ports

    parser = argparse.ArgumentParser(prog="imem bench crash", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--engine", choices=("synthetic", "vllm"), default="synthetic",
                        help="the server's engine (default synthetic: a GPU's token stream, restarts in seconds)")
    parser.add_argument("--workers", type=int, default=6, help="client threads writing at once (default 6)")
    parser.add_argument("--conversations", type=int, default=4, help="conversations per tenant (default 4)")
    parser.add_argument("--lifetime", type=int, default=10, help="rounds a conversation lives before it is deleted "
                                                                 "(default 10)")
    parser.add_argument("--faults", default=None, help=f"which faults to draw from (default all the engine has: "
                                                       f"{', '.join(FAULTS)})")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no round after this many minutes (a time budget for --rounds)")
    parser.add_argument("--max-delay", type=float, default=4.0, help="latest moment of the fault after the traffic "
                                                                      "starts (s)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data", default=None, help="data folder (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="one round, its fault within 2 s")
    parser.add_argument("--json", default=None, help="output (default results/crash-synthetic.json, or "
                                                     "results/crash.json for vllm)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.max_delay = 1, 2.0

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    default_faults = [f for f in FAULTS if args.engine == "vllm" or f != "kill-engine"]
    faults = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else default_faults
    unknown = set(faults) - set(default_faults)
    if unknown:
        parser.error(f"unknown fault(s) for the {args.engine} engine: {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="imem-crash-"))
    data = Path(args.data) if args.data else workdir / "data"
    crash_point = workdir / "crash-point"
    http, grpc, metrics = free_ports(3)
    env = {"IMEM_DATA_DIR": str(data), "IMEM_ENGINE": args.engine, "IMEM_CRASH_POINT_FILE": str(crash_point),
           # the synthetic engine a little faster than a GPU's 50 tokens/s: more acknowledged turns per round
           "IMEM_SYNTHETIC_TOKENS_PER_S": "200"}
    slots = [(tenant, i) for tenant in TENANTS for i in range(args.conversations)]

    def conversations_of(number: int) -> list[tuple[str, str]]:
        """The live conversation of every slot in round `number`: slots start staggered over a lifetime, so
        that one or two conversations end each round."""
        return [(tenant, f"conv-{i}-g{(number + s * args.lifetime // len(slots)) // args.lifetime}")
                for s, (tenant, i) in enumerate(slots)]

    ledger: dict[tuple[str, str], Acknowledged] = {}
    deleted: dict[tuple[str, str], int] = {}  # conversation -> the round it was deleted in
    deleted_turns = 0
    grpc_url, http_url = f"grpc://127.0.0.1:{grpc}", f"http://127.0.0.1:{http}"

    # A graceful stop under this traffic always runs out its exit timeout (Triton keeps admitting requests
    # while it stops): 2 s, so that SIGTERM rounds cost little more than the others.
    def new_server() -> TritonServer:
        return TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1",
                            log_path=workdir / "triton.log", env=env, exit_timeout=2)

    print(f"crash test: {args.rounds} rounds on the {args.engine} engine, seed {seed}, data {data}, "
          f"log {workdir / 'triton.log'}", flush=True)
    started_all = time.monotonic()
    server = new_server().start()
    server.wait_ready(timeout=600)
    rounds: list[Round] = []
    totals: Counter = Counter()
    server_failures: list[str] = []
    number = 0

    def replace_failed_server(reason: str) -> None:
        """A server that failed on its own, not by a fault (Triton 2.51's Python backend can abort with a
        boost lock_exception under BLS load, triton-inference-server/server#8882): recorded and replaced,
        as `imem serve`'s supervisor would; what it had acknowledged is checked like everything else."""
        nonlocal server
        server_failures.append(f"round {number}: {reason[:300]}")
        print(f"    the server failed on its own: {reason[:300]}; starting it again", flush=True)
        server.kill()
        server = new_server().start()
        server.wait_ready(timeout=600)

    def served(step, *args):
        try:
            return step(*args)
        except ServiceError as error:
            replace_failed_server(str(error))
            return step(*args)

    try:
        for number in range(1, args.rounds + 1):
            if args.minutes and time.monotonic() - started_all > args.minutes * 60:
                print(f"stopping after {number - 1} rounds: --minutes {args.minutes} have passed", flush=True)
                break
            if server.started.poll() is not None:
                replace_failed_server(f"tritonserver exited with {server.started.returncode}")
            fault = rng.choice(faults)
            current = Round(number, fault)
            conversations = conversations_of(number)
            for key in [key for key in ledger if key not in conversations]:
                # checked whole by the last round's check; acknowledged before the fault
                served(delete, grpc_url, key)
                deleted[key] = number
                deleted_turns += len(ledger.pop(key).turns)
            for key in conversations:
                ledger.setdefault(key, Acknowledged())
            traffic = Traffic(grpc_url, http_url, conversations, ledger, rng, number, args.workers)
            traffic.start()
            time.sleep(rng.uniform(0.3, args.max_delay))
            old_group = server.started.pid
            started = killed_at = time.monotonic()
            current.killed = inject(server, fault, rng, crash_point)
            current.fault_s = round(time.monotonic() - started, 1)
            started = time.monotonic()
            try:
                if fault == "kill-engine":
                    chats_again(grpc_url)
                else:
                    server = new_server().start()  # at once, on the same data: orphans of a killed server may run
                    server.wait_ready(timeout=600)
            except Exception as error:  # noqa: BLE001 - a restart failure is a finding; start clean for the next round
                current.restart_failed = str(error)
                server.kill()
                server = new_server().start()
                server.wait_ready(timeout=600)
            current.restart_s = round(time.monotonic() - started, 1)
            traffic.finish()
            if fault != "kill-engine":
                leftover = orphans_after_grace(old_group, killed_at)
                current.orphans_left = len(leftover)
                for pid in leftover:  # never expected; reported, then cleaned up so the next round starts clean
                    os.kill(pid, signal.SIGKILL)
            current.acknowledged, current.client_errors = traffic.acknowledged, traffic.errors
            started = time.monotonic()
            recent = [key for key, when in deleted.items() if when > number - args.lifetime]
            findings = served(check, grpc_url, ledger, recent)
            current.check_s = round(time.monotonic() - started, 1)
            current.store_mib = round(common.disk_mib(data), 1)
            if not current.killed:
                findings["nothing_killed"] = [f"{fault} found nothing to kill"]
            current.findings = [f"{kind}: {item}" for kind, items in findings.items() for item in items]
            for kind, items in findings.items():
                totals[kind] = max(totals[kind], len(items))  # findings are cumulative: the worst round counts
            totals["nothing_killed"] += 0 if current.killed else 1
            rounds.append(current)
            print(f"round {number:4d} {fault:16s} killed {len(current.killed)} acknowledged {traffic.acknowledged:3d} "
                  f"(client errors {traffic.errors:3d}) fault {current.fault_s:4.1f} s, restart "
                  f"{current.restart_s:5.1f} s, check {current.check_s:4.1f} s, store {current.store_mib:.0f} MiB"
                  + (f" RESTART FAILED: {current.restart_failed[:200]}" if current.restart_failed else "")
                  + (f" ORPHANS LEFT: {current.orphans_left}" if current.orphans_left else "")
                  + "".join(f"\n    {f[:300]}" for f in current.findings[:10]), flush=True)
        # After the last round, every conversation deleted in the run: none may be back.
        resurrected = served(check, grpc_url, ledger, list(deleted))["resurrected"] if rounds else []
        totals["resurrected"] = max(totals["resurrected"], len(resurrected))
        for item in resurrected[:10]:
            print(f"    resurrected: {item[:300]}", flush=True)
        server.stop()
    finally:  # the bench itself failed: leave no server behind
        server.kill()

    restart = [r.restart_s for r in rounds]
    summary = {
        "engine": args.engine,
        "rounds": len(rounds),
        "wall_s": round(time.monotonic() - started_all, 1),
        "acknowledged": sum(r.acknowledged for r in rounds),
        "acknowledged_turns": deleted_turns + sum(len(a.turns) for a in ledger.values()),
        "deleted": len(deleted),
        **{kind: totals[kind] for kind in FINDINGS},
        "nothing_killed": totals["nothing_killed"],
        "restart_failures": sum(1 for r in rounds if r.restart_failed),
        "server_failures": len(server_failures),  # failed on its own (not counted as a finding: see above)
        "server_failure_detail": server_failures,
        "orphans_left": sum(r.orphans_left for r in rounds),
        "faults": dict(Counter(r.fault for r in rounds)),
        "client_errors": sum(r.client_errors for r in rounds),
        "restart_s_p50": round(common.percentile(restart, 50), 1) if restart else None,
        "restart_s_max": max(restart) if restart else None,
        # restarts must not slow as the run (and the store's history) grows
        "restart_s_p50_first_100": round(common.percentile(restart[:100], 50), 1) if restart else None,
        "restart_s_p50_last_100": round(common.percentile(restart[-100:], 50), 1) if restart else None,
        "store_mib_last": rounds[-1].store_mib if rounds else None,
    }
    columns = ("rounds", "acknowledged", "acknowledged_turns", *FINDINGS, "restart_failures")
    print("\n" + common.md_table(list(columns), [[summary[k] for k in columns]]))
    print(f"faults: {summary['faults']}; restart p50 {summary['restart_s_p50']} s (first 100 rounds "
          f"{summary['restart_s_p50_first_100']}, last 100 {summary['restart_s_p50_last_100']}), max "
          f"{summary['restart_s_max']} s; store {summary['store_mib_last']} MiB; "
          f"{summary['server_failures']} server failures on its own (restarted); "
          f"{summary['client_errors']} requests failed in flight (never acknowledged); {summary['wall_s']} s in all")
    name = "crash" if args.engine == "vllm" else f"crash-{args.engine}"
    common.write_results(name, {"machine": common.machine(), "seed": seed, "workers": args.workers,
                                "conversations": len(slots), "lifetime": args.lifetime,
                                "fault_kinds": {f: FAULTS[f] for f in faults},
                                **summary, "rounds_detail": [r.__dict__ for r in rounds]}, args.json)
    clean = all(summary[k] == 0 for k in (*FINDINGS, "nothing_killed", "restart_failures", "orphans_left"))
    return 0 if clean else 1
