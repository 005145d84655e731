"""`imem bench locomo`: retrieval quality on LoCoMo through the running server's `memory` model.

Each LoCoMo conversation is ingested as history into its own conversation (tenant `locomo`, deleted and
re-created first, so reruns are clean): one turn per LoCoMo turn, speaker as role, the session's date as
timestamp, a shared photo as its caption. Then every question of categories 1-4 is sent to the direct
`recall` operation, the code path chat uses, and the turns in the context it returns (recalled + recent)
are checked against the question's evidence turns.

Reported per policy: evidence recall (share of a question's evidence turns in the context, averaged over
questions), hit rate (at least one evidence turn present), context tokens (what memory adds to the prompt,
counted by the server with the model's tokenizer), and recall latency (server-side selection and packing,
without the query embedding; the same with the query embedding, what a recall costs memory; and the
client's round trip). The reference policies run in the same pass at the same token budget: `recency`
(the latest turns only) and `dense` (the last turns, then plain dense top-k); `full` gives the tokens of
the whole history. Per-conversation figures of the default policy show how stable a figure is.

`--in-process` runs the server's own memory code (imem.memory.Memory over a Qdrant Edge store in a temporary
folder, the model's tokenizer, the default embedder) in this process instead of calling a server: the
same figures without Triton, for measuring changes to recall quickly. `--set NAME=VALUE` (in-process only)
overrides a MemoryConfig setting, e.g. --set top_k=16.

    imem bench locomo --data locomo10.json [--conversations 0-4] [--questions N] [--json OUT]
    imem bench locomo --in-process --data locomo10.json [--set top_k=16 ...] [--policies default]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from imem_client.client import Client, default_url
from imem_client.wire import Code, ServiceError

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
REFERENCE_POLICIES = ("recency", "dense")
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")


@dataclass
class Question:
    text: str
    category: int
    evidence: list[str]  # dia_ids that exist in the conversation
    answer: str = ""  # the gold answer (imem bench answers)


@dataclass
class Conversation:
    sample_id: str
    turns: list[dict]  # ingest lines: speaker, text, timestamp, metadata.dia_id
    questions: list[Question] = field(default_factory=list)
    bad_evidence: int = 0  # evidence ids that name no turn of the conversation


def turn_text(turn: dict) -> str:
    text = str(turn.get("text", "")).strip()
    caption = turn.get("blip_caption")
    if caption:
        text = f"{text} [shares {caption}]" if text else f"[shares {caption}]"
    return text


def load(path: str) -> list[Conversation]:
    """Reads a file in the format of LoCoMo's locomo10.json."""
    with open(path, encoding="utf-8") as file:
        samples = json.load(file)
    if isinstance(samples, dict):
        samples = [samples]
    conversations = []
    for index, sample in enumerate(samples):
        conversation = sample["conversation"]
        sessions = sorted((int(m.group(1)), key) for key in conversation
                          if (m := re.fullmatch(r"session_(\d+)", key)) and isinstance(conversation[key], list))
        turns, known = [], set()
        for number, key in sessions:
            date = str(conversation.get(f"{key}_date_time") or "")
            for turn in conversation[key]:
                text = turn_text(turn)
                if not text:
                    continue
                dia_id = str(turn.get("dia_id", ""))
                turns.append({"speaker": str(turn.get("speaker") or "unknown"), "text": text, "timestamp": date,
                              "metadata": {"dia_id": dia_id, "session": number}})
                known.add(dia_id)
        result = Conversation(str(sample.get("sample_id", f"sample-{index}")), turns)
        for qa in sample.get("qa", []):
            try:
                category = int(qa.get("category"))
            except (TypeError, ValueError):
                continue
            if category not in CATEGORIES:
                continue
            evidence, raw = [], qa.get("evidence") or []
            for item in raw if isinstance(raw, list) else [raw]:
                found = [f"D{a}:{b}" for a, b in _DIA_ID.findall(str(item))]
                result.bad_evidence += sum(1 for e in found if e not in known) + (0 if found else 1)
                evidence += [e for e in found if e in known and e not in evidence]
            result.questions.append(Question(str(qa.get("question", "")), category, evidence,
                                             str(qa.get("answer", "")).strip()))
        conversations.append(result)
    return conversations


def select(spec: str | None, count: int) -> list[int]:
    """'0-4', '1,3', '2' -> indices; None -> all."""
    if not spec:
        return list(range(count))
    chosen: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            chosen += range(low, high + 1)
        elif part:
            chosen.append(int(part))
    for index in chosen:
        if not 0 <= index < count:
            raise SystemExit(f"--conversations: {index} is out of range (the file has {count})")
    return sorted(set(chosen))


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


class Tally:
    """Evidence recall, hit rate, tokens and latency of one policy, overall, per category and per
    conversation."""

    def __init__(self):
        self.rows: list[tuple[int, float, bool, int, float, float, float, str]] = []

    def add(self, category: int, recall: float, hit: bool, tokens: int, server_ms: float, round_trip_ms: float,
            embedded_ms: float = 0.0, conversation: str = ""):
        self.rows.append((category, recall, hit, tokens, server_ms, round_trip_ms, embedded_ms, conversation))

    @staticmethod
    def _figures(rows) -> dict:
        if not rows:
            return {"questions": 0}
        return {
            "questions": len(rows),
            "evidence_recall": round(float(np.mean([r[1] for r in rows])), 4),
            "hit_rate": round(float(np.mean([r[2] for r in rows])), 4),
            "context_tokens_mean": round(float(np.mean([r[3] for r in rows])), 1),
            "context_tokens_max": int(max(r[3] for r in rows)),
            "recall_ms_p50": percentile([r[4] for r in rows], 50),
            "recall_ms_p95": percentile([r[4] for r in rows], 95),
            "recall_with_embedding_ms_p50": percentile([r[6] for r in rows], 50),
            "recall_with_embedding_ms_p95": percentile([r[6] for r in rows], 95),
            "round_trip_ms_p50": percentile([r[5] for r in rows], 50),
            "round_trip_ms_p95": percentile([r[5] for r in rows], 95),
        }

    def overall(self) -> dict:
        return self._figures(self.rows)

    def per_category(self) -> dict:
        return {f"{c}-{name}": self._figures([r for r in self.rows if r[0] == c]) for c, name in CATEGORIES.items()
                if any(r[0] == c for r in self.rows)}

    def per_conversation(self) -> dict:
        """Each conversation's evidence recall, overall and per category."""
        names = list(dict.fromkeys(r[7] for r in self.rows))
        return {name: {"evidence_recall": self._figures([r for r in self.rows if r[7] == name])["evidence_recall"],
                       **{f"{c}-{label}": round(float(np.mean(rs)), 4) for c, label in CATEGORIES.items()
                          if (rs := [r[1] for r in self.rows if r[7] == name and r[0] == c])}}
                for name in names}


class InProcess:
    """The server's memory code in this process, spoken to like the Client: Memory over a Qdrant Edge store
    in a temporary folder, the model's tokenizer (IMEM_MODEL / IMEM_TOKENIZER), the memory model's embedder.
    Recall timings come from Memory itself, as through the server."""

    def __init__(self, overrides: dict[str, str] | None = None):
        from imem.config import load
        from imem.embedding import model_process_embedder
        from imem.memory import Memory
        from imem.store import EdgeTurnStore
        from imem.tokenizer import load_tokenizer

        config = load()
        self.config = dataclasses.replace(config.memory, **typed(config.memory, overrides or {}))
        self.folder = tempfile.mkdtemp(prefix="imem-locomo-")
        self.store = EdgeTurnStore(Path(self.folder) / "edge-shard", dim=config.embedder.dim)
        self.embedder = model_process_embedder(config.embedder)
        tokenizer = load_tokenizer(config.engine.tokenizer_path)
        self.memory = Memory(self.config, self.store, tokenizer, self.embedder.embed)

    def delete(self, conversation_id: str, tenant: str) -> dict:
        from imem.errors import NotFound

        try:
            return self.memory.delete(tenant, conversation_id)
        except NotFound as error:
            raise ServiceError(str(error), Code.NOT_FOUND) from None

    def ingest(self, conversation_id: str, history: list[dict], tenant: str) -> dict:
        return self.memory.ingest(tenant, conversation_id, "\n".join(json.dumps(h) for h in history))

    def recall(self, conversation_id: str, query: str, tenant: str, policy: str | None = None) -> dict:
        return self.memory.recall_only(tenant, conversation_id, query, policy or "default")

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def typed(config, overrides: dict[str, str]) -> dict:
    """NAME=VALUE strings as MemoryConfig values of each field's type; an unknown name is an error."""
    fields = {f.name: type(getattr(config, f.name)) for f in dataclasses.fields(config)}
    values = {}
    for name, value in overrides.items():
        if name not in fields:
            raise SystemExit(f"--set {name}: not a MemoryConfig setting ({', '.join(fields)})")
        kind = fields[name]
        values[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return values


class MemoryCalls(Protocol):
    """What ingest() needs: the Client, or InProcess."""

    def delete(self, conversation_id: str, tenant: str) -> dict: ...

    def ingest(self, conversation_id: str, history: list[dict], tenant: str) -> dict: ...


def ingest(client: MemoryCalls, conversation: Conversation, tenant: str) -> dict[str, int]:
    """(Re)creates the conversation; returns dia_id -> turn number."""
    try:
        client.delete(conversation.sample_id, tenant)
    except ServiceError as error:
        if error.code != Code.NOT_FOUND:
            raise
    first = None
    for start in range(0, len(conversation.turns), 100):
        result = client.ingest(conversation.sample_id, conversation.turns[start:start + 100], tenant)
        first = result["first_turn"] if first is None else first
    if first is None:  # no turns
        return {}
    return {t["metadata"]["dia_id"]: first + i for i, t in enumerate(conversation.turns)}


def measure(client, tenant: str, conversation_id: str, question: Question, policy: str,
            turn_of: dict[str, int], tally: Tally) -> dict:
    started = time.perf_counter()
    result = client.recall(conversation_id, question.text, tenant, policy=policy)
    round_trip = (time.perf_counter() - started) * 1000
    context = {t["turn"] for t in result["recalled"] + result["recent"]}
    found = sum(1 for e in question.evidence if turn_of[e] in context)
    timing = result["timing_ms"]
    tally.add(question.category, found / len(question.evidence), found > 0, int(result["context_tokens"]),
              float(timing["recall"]), round_trip, float(timing["recall"]) + float(timing.get("embed", 0.0)),
              conversation_id)
    return result


def run(args) -> dict:
    if args.in_process:
        with InProcess(dict(item.split("=", 1) for item in args.set)) as memory:
            return _run(args, memory)
    if args.set:
        raise SystemExit("--set changes the in-process memory's settings: use it with --in-process")
    with Client(args.url) as client:
        return _run(args, client)


def commit() -> str:
    """The commit the code ran on (with '+dirty' when the work tree has changes), for the report."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run(args, client) -> dict:
    conversations = load(args.data)
    chosen = select(args.conversations, len(conversations))
    policies = tuple(dict.fromkeys(["default", *(args.policies or REFERENCE_POLICIES)]))
    references = [p for p in policies if p != "default"]
    tallies = {p: Tally() for p in policies}
    full_tokens: list[int] = []
    config: dict = {}
    skipped, bad_evidence, turns, ingest_ms = 0, 0, 0, 0.0
    for index in chosen:
        conversation = conversations[index]
        started = time.perf_counter()
        turn_of = ingest(client, conversation, args.tenant)
        ingest_s = time.perf_counter() - started
        ingest_ms += ingest_s * 1000
        questions = conversation.questions[: args.questions] if args.questions else conversation.questions
        turns += len(conversation.turns)
        bad_evidence += conversation.bad_evidence
        for question in questions:
            if not question.evidence:
                skipped += 1
                continue
            for policy in policies:
                result = measure(client, args.tenant, conversation.sample_id, question, policy, turn_of,
                                 tallies[policy])
                config = config or result.get("config", {})
        probe = questions[0].text if questions else "What happened?"
        full = client.recall(conversation.sample_id, probe, args.tenant, policy="full")
        full_tokens.append(int(full["context_tokens"]))
        default = tallies["default"].overall()
        print(f"[{index}] {conversation.sample_id}: {len(conversation.turns)} turns ingested in {ingest_s:.1f} s, "
              f"{len(questions)} questions; running evidence recall {default.get('evidence_recall', 0):.3f}",
              file=sys.stderr, flush=True)
    report = {
        "commit": commit(),
        "mode": "in-process" if args.in_process else "server",
        "data": args.data,
        "conversations": [conversations[i].sample_id for i in chosen],
        "turns": turns,
        "ingest_ms_per_turn": round(ingest_ms / turns, 3) if turns else 0.0,
        "questions_skipped_no_evidence": skipped,
        "evidence_ids_malformed_or_unknown": bad_evidence,
        "overall": tallies["default"].overall(),
        "per_category": tallies["default"].per_category(),
        "per_conversation": tallies["default"].per_conversation(),
        "baselines": {
            **{p: {**tallies[p].overall(), "per_category": tallies[p].per_category()} for p in references},
            "full_history": {"context_tokens_mean": round(float(np.mean(full_tokens)), 1) if full_tokens else 0.0,
                             "evidence_recall": 1.0, "hit_rate": 1.0},
        },
        "config": config,
    }
    return report


def print_table(report: dict) -> None:
    rows = [("default", report["overall"])] + [(f"  {k}", v) for k, v in report["per_category"].items()]
    rows += [(f"{name} (baseline)", figures) for name, figures in report["baselines"].items()
             if name != "full_history"]
    print(f"{'policy / category':<26}{'questions':>10}{'ev.recall':>10}{'hit rate':>10}{'ctx tok':>9}"
          f"{'p50 ms':>8}{'p95 ms':>8}{'+emb p50':>9}{'+emb p95':>9}{'rt p50':>8}{'rt p95':>8}")
    for name, f in rows:
        if not f.get("questions"):
            continue
        print(f"{name:<26}{f['questions']:>10}{f['evidence_recall']:>10.3f}{f['hit_rate']:>10.3f}"
              f"{f['context_tokens_mean']:>9.1f}{f['recall_ms_p50']:>8.2f}{f['recall_ms_p95']:>8.2f}"
              f"{f['recall_with_embedding_ms_p50']:>9.2f}{f['recall_with_embedding_ms_p95']:>9.2f}"
              f"{f['round_trip_ms_p50']:>8.1f}{f['round_trip_ms_p95']:>8.1f}")
    print(f"{'full history':<26}{'':>10}{1.0:>10.3f}{1.0:>10.3f}"
          f"{report['baselines']['full_history']['context_tokens_mean']:>9.1f}")
    for name, figures in report["per_conversation"].items():
        print(f"  {name:<24}" + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    print(f"config: {json.dumps(report['config'])}")
    print(f"ingest: {report['ingest_ms_per_turn']:.2f} ms per turn ({report['mode']})")
    print("ms: recall (selection + packing, query embedding excluded); +emb: with the query embedding; "
          "rt: the caller's round trip")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench locomo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help=f"grpc://host:port or http://host:port (default {default_url()})")
    parser.add_argument("--data", required=True, help="a JSON file in the format of LoCoMo's locomo10.json")
    parser.add_argument("--conversations", default=None, help="which samples, e.g. 0-4 or 0,2 (default: all)")
    parser.add_argument("--questions", type=int, default=0, help="at most N questions per conversation (0: all)")
    parser.add_argument("--tenant", default="locomo")
    parser.add_argument("--json", dest="json_out", default=None, help="write the report here")
    parser.add_argument("--in-process", action="store_true",
                        help="run the server's memory code in this process (temporary store) instead of a server")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="in-process only: override a MemoryConfig setting (repeatable)")
    parser.add_argument("--policies", nargs="*", default=None,
                        help=f"reference policies beside default (default: {' '.join(REFERENCE_POLICIES)})")
    args = parser.parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
    return 0
