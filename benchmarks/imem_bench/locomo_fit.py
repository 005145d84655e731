"""`imem bench locomo-fit`: fits the default recall policy's weights (imem/recall.py WEIGHTS and
MemoryConfig.neighbour_weight) on LoCoMo, in-process, and checks them on conversations they were not fitted on.

Every candidate turn the policy considers for a question (recall.signals: its reciprocal rank in each
search, the speaker signal, the neighbour signal) is one example, labelled by whether it is one of the
question's evidence turns; a logistic regression over the signals gives their weights (only their ratios
matter for the order, so they are scaled to BM25's weight = 1). Then, for each conversation, the weights
fitted on the others are used to recall its questions (the same code and packing as `imem bench locomo
--in-process`): the evidence recall of these held-out runs is the figure to trust, the in-sample one
beside it shows how much the fit flatters itself.

    imem bench locomo-fit --data locomo-dev.json [--set NAME=VALUE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from imem_bench.locomo import InProcess, Tally, commit, ingest, load


def examples(memory, conversation, turn_of: dict[str, int], tenant: str):
    """(signal dicts, labels) of every candidate turn of every question of the conversation."""
    from imem import recall

    rows, labels = [], []
    for question in conversation.questions:
        if not question.evidence:
            continue
        evidence = {turn_of[e] for e in question.evidence}
        _, _, _, found = recall.signals(memory.store, memory.config, tenant, conversation.sample_id, question.text,
                                        lambda text: memory.embed([text])[0])
        for number, signals in found.items():
            rows.append(signals)
            labels.append(number in evidence)
    return rows, labels


def fit(rows: list[dict], labels: list[bool], names: list[str]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    x = np.array([[r.get(n, 0.0) for n in names] for r in rows])
    model = LogisticRegression(C=1.0, max_iter=5000).fit(x, np.array(labels))
    scale = model.coef_[0][names.index("bm25")]
    return {n: round(float(w / scale), 3) for n, w in zip(names, model.coef_[0], strict=True)}


def evaluate(memory, conversation, turn_of, tenant, weights: dict[str, float], tally: Tally) -> None:
    from imem import recall

    saved, config = dict(recall.WEIGHTS), memory.config
    recall.WEIGHTS.update({k: v for k, v in weights.items() if k != "neighbour"})
    memory.config = dataclasses.replace(config, neighbour_weight=weights["neighbour"])
    try:
        for question in conversation.questions:
            if not question.evidence:
                continue
            result = memory.recall_only(tenant, conversation.sample_id, question.text)
            context = {t["turn"] for t in result["recalled"] + result["recent"]}
            found = sum(1 for e in question.evidence if turn_of[e] in context)
            timing = result["timing_ms"]
            tally.add(question.category, found / len(question.evidence), found > 0, int(result["context_tokens"]),
                      timing["recall"], 0.0, timing["recall"] + timing["embed"], conversation.sample_id)
    finally:
        recall.WEIGHTS.clear()
        recall.WEIGHTS.update(saved)
        memory.config = config


def run(args) -> dict:
    from imem import recall

    conversations = load(args.data)
    names = [*recall.WEIGHTS, "neighbour"]
    with InProcess(dict(item.split("=", 1) for item in args.set)) as process:
        memory = process.memory
        turn_of = {c.sample_id: ingest(process, c, args.tenant) for c in conversations}
        data = {c.sample_id: examples(memory, c, turn_of[c.sample_id], args.tenant) for c in conversations}
        every = fit([r for rows, _ in data.values() for r in rows], [y for _, ys in data.values() for y in ys], names)
        held_out, in_sample, per_fold = Tally(), Tally(), {}
        for c in conversations:
            others = [k for k in data if k != c.sample_id]
            weights = fit([r for k in others for r in data[k][0]], [y for k in others for y in data[k][1]], names)
            per_fold[c.sample_id] = weights
            evaluate(memory, c, turn_of[c.sample_id], args.tenant, weights, held_out)
            evaluate(memory, c, turn_of[c.sample_id], args.tenant, every, in_sample)
            print(f"{c.sample_id}: held out {weights}", file=sys.stderr, flush=True)
        config = memory.recall_config()
    return {
        "commit": commit(),
        "data": args.data,
        "weights": every,
        "weights_per_held_out_conversation": per_fold,
        "held_out": {**held_out.overall(), "per_category": held_out.per_category(),
                     "per_conversation": held_out.per_conversation()},
        "in_sample": {**in_sample.overall(), "per_category": in_sample.per_category(),
                      "per_conversation": in_sample.per_conversation()},
        "config": config,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench locomo-fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a JSON file in the format of LoCoMo's locomo10.json")
    parser.add_argument("--tenant", default="locomo")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a MemoryConfig setting (repeatable)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    print(f"weights (all conversations, BM25 = 1): {json.dumps(report['weights'])}")
    for name in ("held_out", "in_sample"):
        figures = report[name]
        print(f"{name:<10} evidence recall {figures['evidence_recall']:.3f}  hit rate {figures['hit_rate']:.3f}  "
              f"context tokens {figures['context_tokens_mean']:.1f}  " + "  ".join(
                  f"{k} {v['evidence_recall']:.3f}" for k, v in figures["per_category"].items()))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
    return 0
