"""Prints the markdown tables of docs/recall-research.md from the JSON files of results/recall-research/.

    python results/recall-research/prototypes/tables.py
"""
import json
import os

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATS = ["1-multi-hop", "2-temporal", "3-open-domain", "4-single-hop"]


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as file:
        return json.load(file)


def bench_row(label, report, base=None):
    """A row from an `imem bench locomo` report: recall overall and per category (gain over `base`)."""
    def cell(value, reference):
        return f"{value:.3f}" if reference is None else f"{value:.3f} ({value - reference:+.3f})"
    o, pc = report["overall"], report["per_category"]
    b = base and (base["overall"], base["per_category"])
    cells = [cell(o["evidence_recall"], b and b[0]["evidence_recall"])]
    cells += [cell(pc[c]["evidence_recall"], b and b[1][c]["evidence_recall"]) for c in CATS]
    cells += [f"{o['hit_rate']:.3f}", f"{o['context_tokens_mean']:.0f}", f"{o['recall_ms_p50']:.2f}",
              f"{o['recall_with_embedding_ms_p50']:.2f}", f"{report['ingest_ms_per_turn']:.1f}"]
    return f"| {label} | " + " | ".join(cells) + " |"


def proto_row(label, figures, base):
    keys = ["all", "multi-hop", "temporal", "open-domain", "single-hop"]
    cells = [f"{figures[k]:.3f} ({figures[k] - base[k]:+.3f})" for k in keys]
    guard = [f"{figures[k]:.2f}" for k in ("ans-multi", "ans-open-")]
    cells += [f"{figures['tok']:.0f}", f"{figures['sel50']:.2f}", f"{figures['ms50']:.2f}", " / ".join(guard)]
    return f"| {label} | " + " | ".join(cells) + " |"


def fit_row(label, report, base):
    h = report["held_out"]
    b = base["held_out"]
    cells = [f"{h['evidence_recall']:.3f} ({h['evidence_recall'] - b['evidence_recall']:+.3f})"]
    cells += [f"{h['per_category'][c]['evidence_recall']:.3f} ({h['per_category'][c]['evidence_recall'] - b['per_category'][c]['evidence_recall']:+.3f})"
              for c in CATS]
    cells += [f"{h['context_tokens_mean']:.0f}", f"{h['recall_with_embedding_ms_p50']:.2f}"]
    return f"| {label} | " + " | ".join(cells) + " |"


def main():
    head = ("| | evidence recall | multi-hop | temporal | open-domain | single-hop | hit rate | context tokens "
            "| recall ms p50 | with embedding p50 | ingest ms/turn |\n|---|" + "---|" * 10)
    baseline, final = load("baseline.json"), load("final.json")
    print("## official runs (imem bench locomo --in-process)\n" + head)
    print(bench_row("baseline (old default)", baseline))
    print(bench_row("pleasantries left out, alone", load("pleasantries.json"), baseline))
    print(bench_row("**final default**", final, baseline))
    for name, label in [("final-without-speaker-search.json", "final without speaker search"),
                        ("final-with-pleasantries.json", "final with pleasantries"),
                        ("final-threshold-0.3.json", "final, threshold 0.3"),
                        ("final-without-neighbours.json", "final without neighbours"),
                        ("final-neighbour-weight-0.5.json", "final, neighbour weight 0.5"),
                        ("fused-weights-only.json", "fitted fusion only (no speaker search, thr 0.3, pleasantries)"),
                        ("final-candidates-30.json", "final, 30 candidates"),
                        ("final-candidates-50.json", "final, 50 candidates"),
                        ("final-top-k-16.json", "final, top_k 16")]:
        if os.path.exists(os.path.join(HERE, name)):
            print(bench_row(label, load(name), final))
    print("\n## per conversation\n| | " + " | ".join(baseline["per_conversation"]) + " |\n|---|" +
          "---|" * len(baseline["per_conversation"]))
    for key in ["evidence_recall"] + CATS:
        for label, report in (("baseline", baseline), ("final", final)):
            cells = [f"{report['per_conversation'][c].get(key, float('nan')):.3f}" for c in baseline["per_conversation"]]
            print(f"| {label} {key} | " + " | ".join(cells) + " |")
    phead = ("| idea | evidence recall | multi-hop | temporal | open-domain | single-hop | context tokens "
             "| recall ms p50 | with embedding p50 | answer guard multi-hop / open |\n|---|" + "---|" * 9)
    for name, base_label in (("prototypes-on-old-default.json", "old default (its own code)"),
                             ("prototypes-on-final.json", "final default")):
        if not os.path.exists(os.path.join(HERE, name)):
            continue
        results = load(name)["results"]
        base = next(r for r in results if r["label"] == base_label)
        print(f"\n## {name}\n" + phead)
        for r in results:
            print(proto_row(f"{r['idea']}: {r['label']}", r, base))
    fits = [(n, f"context-vectors-{n}.json") for n in ("none", "prev", "prevnext", "prev-mean", "prevnext-mean")]
    fits.append(("feedback m=3", "feedback-m3.json"))
    if all(os.path.exists(os.path.join(HERE, f)) for _, f in fits):
        base = load("context-vectors-none.json")
        print("\n## held-out fits\n| | evidence recall | multi-hop | temporal | open-domain | single-hop "
              "| context tokens | with embedding p50 |\n|---|" + "---|" * 7)
        for label, name in fits:
            print(fit_row(label, load(name), base))


if __name__ == "__main__":
    main()
