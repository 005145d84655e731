"""Ideas measured on top of the final default policy (imem/recall.py): diversity among the offered turns,
shorter neighbours, and a learned ranking over many more signals (logistic regression per held-out
conversation, features.py). Context vectors and feedback queries: context_vectors.py, feedback.py.

    PYTHONPATH=... python results/recall-research/prototypes/run_final_ideas.py OUT.json
"""
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import features  # noqa: E402
import learned  # noqa: E402
import proto  # noqa: E402
from harness import Env  # noqa: E402
from imem import recall as R  # noqa: E402
from imem.prompt import date_label  # noqa: E402
from imem.turn import ScoredTurn  # noqa: E402
from imem_bench.locomo import commit  # noqa: E402

results = []
env = Env()
final = R.default
results.append({"idea": "final", "label": "final default", **env.evaluate("final")[0]})

# Diversity: greedy selection, each candidate's priority lowered by its likeness to those already chosen
# (MMR-like, cosine of the stored vectors) or by how many chosen turns share its day.
VECTORS = {}
for c in env.convs:
    turns = env.ip.store.export("locomo", c.sample_id)
    VECTORS[c.sample_id] = {t.turn: v for t, v in zip(turns, env.memory.embed([t.text for t in turns]))}
DIVERSITY = {}


def diverse(store, config, tenant, conv, query, embed_query):
    recent, terms, turns, found = R.signals(store, config, tenant, conv, query, embed_query)
    weights = {**R.WEIGHTS, "neighbour": config.neighbour_weight}
    score = {n: sum(weights[k] * v for k, v in r.items()) for n, r in found.items()}
    pool = sorted(score, key=lambda n: (-score[n], n))[:40]
    top = max(score.values(), default=1.0)
    chosen, out = [], []
    while pool and len(chosen) < config.top_k:
        def adjusted(n):
            if DIVERSITY["mode"] == "mmr":
                like = max((float(VECTORS[conv][n] @ VECTORS[conv][m]) for m in chosen), default=0.0)
                return score[n] - DIVERSITY["lambda"] * max(like, 0.0) * top
            same_day = sum(date_label(turns[m].timestamp) == date_label(turns[n].timestamp) for m in chosen)
            return score[n] * (1 - DIVERSITY["lambda"]) ** same_day
        best = max(pool, key=lambda n: (adjusted(n), -n))
        out.append(ScoredTurn(turns[best], adjusted(best)))
        chosen.append(best)
        pool.remove(best)
    return R.Offer(out, recent, config.context_budget, terms)


R.default = diverse
for mode, lam in (("mmr", 0.1), ("mmr", 0.3), ("session", 0.1), ("session", 0.25)):
    DIVERSITY.update(mode=mode, **{"lambda": lam})
    results.append({"idea": "diversity", "label": f"{mode} {lam}", **env.evaluate(f"{mode} {lam}")[0]})

# Shorter neighbours: a turn offered only as a neighbour is cut to its first N words.
CUT = {}


def short_neighbours(store, config, tenant, conv, query, embed_query):
    recent, terms, turns, found = R.signals(store, config, tenant, conv, query, embed_query)
    weights = {**R.WEIGHTS, "neighbour": config.neighbour_weight}
    out = []
    for n, ranks in found.items():
        turn = turns[n]
        if set(ranks) <= {"neighbour", "speaker"} and len(turn.text.split()) > CUT["words"]:
            turn = dataclasses.replace(turn, text=" ".join(turn.text.split()[: CUT["words"]]) + " …")
        out.append(ScoredTurn(turn, sum(weights[k] * v for k, v in ranks.items())))
    out.sort(key=lambda s: (-s.score, s.turn.turn))
    return R.Offer(out[: config.top_k], recent, config.context_budget, terms)


R.default = short_neighbours
for words in (25, 15):
    CUT["words"] = words
    results.append({"idea": "budget", "label": f"neighbours cut to {words} words, top_k 16",
                    **env.evaluate(f"short neighbours {words}", top_k=16)[0]})
R.default = final
results.append({"idea": "knobs", "label": "final, top_k 16", **env.evaluate("top_k 16", top_k=16)[0]})

# A learned ranking over many signals (features.py), one model per held-out conversation.
R.default = final
proto.build_side(env, "prevnext")
rows = []
coverage = {}  # category -> [evidence turns among the candidates, evidence turns]
for c in env.convs:
    speakers = {t["speaker"] for t in c.turns}
    for q in c.questions:
        if not q.evidence:
            continue
        evidence = {env.turn_of[c.sample_id][e] for e in q.evidence}
        vector = env.memory.embed([R.without_speakers(q.text, speakers)])[0]
        _, _, found = features.pool(env.ip.store, "locomo", c.sample_id, q.text, vector, speakers,
                                    proto.SIDE[c.sample_id])
        rows += [(c.sample_id, [x[n] for n in features.NAMES], t in evidence) for t, x in found.items()]
        tally = coverage.setdefault(q.category, [0, 0])
        tally[0] += len(evidence & found.keys())
        tally[1] += len(evidence)
X = np.array([r[1] for r in rows])
y = np.array([r[2] for r in rows])
conversation = np.array([r[0] for r in rows])


def train(names):
    from sklearn.linear_model import LogisticRegression

    cols = [features.NAMES.index(n) for n in names]
    models = {}
    for held in sorted(set(conversation)) + ["all"]:
        keep = conversation != held
        model = LogisticRegression(C=1.0, max_iter=3000).fit(X[keep][:, cols], y[keep])
        models[held] = (cols, model.coef_[0].tolist(), float(model.intercept_[0]))
    return models


ALL = ["rr_d", "cos_d", "rr_s", "bm_s", "rr_ds", "rr_ss", "spk", "named1", "nb_reply", "nb_prompt", "nb_cont",
       "nb_react", "qmark", "loglen", "allfiller", "caption", "rr_ctx", "cos_ctx"]
BASE = ["rr_d", "rr_s", "rr_ds", "rr_ss", "spk", "nb_any"]
SETS = {
    "all signals": ALL,
    "all but context vectors": [n for n in ALL if n not in ("rr_ctx", "cos_ctx")],
    "all but speaker": [n for n in ALL if n not in ("rr_ds", "rr_ss", "spk", "named1")],
    "all but shape (question mark, length, pleasantry, photo)": [n for n in ALL if n not in (
        "qmark", "loglen", "allfiller", "caption")],
    "ranks + speaker + any neighbour (the final's signals)": BASE,
    "the final's + neighbour relations": [n for n in BASE if n != "nb_any"] + ["nb_reply", "nb_prompt", "nb_cont",
                                                                               "nb_react"],
    "the final's + raw scores": BASE + ["cos_d", "bm_s"],
    "the final's + session score": BASE + ["sess"],
    "the final's + context vector (prev+turn+next)": BASE + ["rr_ctx"],
    "the final's + context vector, plain and speaker": BASE + ["rr_ctx", "rr_ctxs"],
    "the final's + context vector (prev+turn)": BASE + ["rr_ctxp"],
}
learned.install()
learned.OPT.update(loco=True, compress=False, top_k=20)
for label, names in SETS.items():
    learned.MODELS.clear()
    learned.MODELS.update(train(names))
    out = env.evaluate(label)[0]
    weights = dict(zip([features.NAMES[i] for i in learned.MODELS["all"][0]], learned.MODELS["all"][1]))
    results.append({"idea": "learned ranking (held out)", "label": label, **out,
                    "weights": {k: round(v, 3) for k, v in weights.items()}})
with open(sys.argv[1], "w", encoding="utf-8") as file:
    json.dump({"commit": commit(), "results": results,
               "candidate_pool_evidence_share": {str(k): round(a / b, 3) for k, (a, b) in sorted(coverage.items())},
               "candidate_pool_size_mean": round(len(rows) / sum(len(q.questions) for q in env.convs), 1)},
              file, indent=1)
