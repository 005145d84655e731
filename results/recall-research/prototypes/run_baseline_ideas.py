"""Each idea alone on top of the old default policy, at the old settings (threshold 0.3, 30 candidates,
neighbour weight 0.5, pleasantries kept, no speaker search). The knobs and budgets run the old default's own
code (old_recall.py, imem/recall.py of commit aeb09b4); the ideas run proto.py, which re-implements it with
options (rank0=True: its ranking, with the fusion done in Python instead of Qdrant; ties may differ).

    PYTHONPATH=... python results/recall-research/prototypes/run_baseline_ideas.py OUT.json
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import old_recall  # noqa: E402
import proto  # noqa: E402
from harness import Env  # noqa: E402
from imem import recall as R  # noqa: E402
from imem_bench.locomo import commit  # noqa: E402

OLD = {"threshold": "0.3", "pleasantries": "1", "candidates": "30", "neighbour_weight": "0.5", "speaker_search": "0"}
results = []


def record(idea, label, out):
    results.append({"idea": idea, "label": label, **out})


def run(idea, label, settings=None, **options):
    proto.OPT.clear()
    proto.OPT.update(proto.DEFAULT)
    proto.OPT.update(rank0=True)
    proto.OPT.update(options)
    record(idea, label, env.evaluate(label, **(settings or {}))[0])


def table(q1, qm1, qm2, q2, s2, sm2, sm1, s1):
    """Neighbour weights by (hit is a question, position relative to the hit)."""
    return {(True, 1): q1, (True, -1): qm1, (True, -2): qm2, (True, 2): q2,
            (False, 2): s2, (False, -2): sm2, (False, -1): sm1, (False, 1): s1}


env = Env(OLD)
R.default = old_recall.default
record("baseline", "old default (its own code)", env.evaluate("old default")[0])
# Knobs of the old default, one at a time.
for name, values in {"top_k": (8, 16, 30), "candidates": (15, 50, 100), "neighbours": (0, 1, 3),
                     "neighbour_weight": (0.25, 0.75, 1.0), "threshold": (0.0,), "recent_turns": (0,)}.items():
    for value in values:
        record("knobs", f"{name}={value}", env.evaluate(f"{name}={value}", **{name: value})[0])
for budget in (800, 1000, 1200):
    record("budget (upper bound)", f"context_budget={budget}",
           env.evaluate(f"budget {budget}", context_budget=budget, top_k=40, prompt_budget=4096)[0])
proto.install()
run("baseline", "prototype of the old default (rank0)")
run("speaker-aware search", "speaker lists only (filter)", speaker="filter")
run("speaker-aware search", "speaker lists beside the plain ones", speaker="both")
run("speaker-aware search", "speaker lists beside, weight 2", speaker="both", spk_w=2.0)
run("fusion weights", "rrf k=10", rrf_k=10)
run("fusion weights", "rrf k=60", rrf_k=60)
run("fusion weights", "dense weight 2", dense_w=2.0)
run("fusion weights", "bm25 weight 2", sparse_w=2.0)
run("multi-query", "+ keywords-only query", extra_queries=(proto.keywords,))
run("multi-query", "+ keywords-only query, weight 0.5", extra_queries=(proto.keywords,), extra_w=0.5)
run("diversity", "redundancy penalty 0.3 (MMR-like, python)", mmr=0.3)
run("diversity", "redundancy penalty 0.6 (MMR-like, python)", mmr=0.6)
run("relation-aware neighbours", "question->reply 1.0, statement->same speaker 0.35",
    nb_table=table(1.0, .5, .1, .2, .35, .2, .2, .1))
run("relation-aware neighbours", "variant 2", nb_table=table(.8, .4, .1, .1, .3, .15, .15, .05))
run("relation-aware neighbours", "variant 3", nb_table=table(1.0, .5, .05, .1, .5, .25, .25, .05))
run("budget", "pleasantries left out", compress="filler")
run("budget", "query-focused sentences, 30 words a turn", compress=("focus", 30))
run("budget", "query-focused sentences, 20 words a turn", compress=("focus", 20))
proto.build_side(env, "prev")  # also the proper names of each turn (entity links)
run("entity links", "one hop along shared proper names, 0.5", entity=0.5)
run("context vectors", "previous + turn, embedded (rrf list)", ctx=True)
run("context vectors", "previous + turn, embedded, weight 0.5", ctx=True, ctx_w=0.5)
proto.build_side(env, "prevnext")
run("context vectors", "previous + turn + next, embedded (rrf list)", ctx=True)
run("context vectors", "previous + turn + next, + speaker lists", ctx=True, speaker="both")
with open(sys.argv[1], "w", encoding="utf-8") as file:
    json.dump({"commit": commit(), "settings": OLD, "results": results}, file, indent=1)
