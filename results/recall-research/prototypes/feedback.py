"""Pseudo-relevance feedback (Rocchio): the query vector plus the mean of the PRF_M best hits' vectors,
searched again (plain and speaker lists, in numpy beside the store); weights refitted and checked held out
by imem_bench.locomo_fit.

    PRF_M=3 python feedback.py --data locomo-dev.json --json OUT
"""
import os, sys, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imem import recall as R
from imem_bench import locomo_fit
M = int(os.environ.get("PRF_M", "3")); ALPHA = float(os.environ.get("PRF_A", "1.0"))
SIDE = {}
orig = R.signals
def signals(store, config, tenant, conv, query, embed_query):
    recent, terms, turns, found = orig(store, config, tenant, conv, query, embed_query)
    side = SIDE[conv]
    vec = embed_query(terms)
    named = R.named_speaker(query, {t.role for t in store.latest(tenant, conv, R.SPEAKER_WINDOW)})
    weights = {**R.WEIGHTS, "neighbour": config.neighbour_weight}
    base = {n: sum(weights.get(k, 0) * v for k, v in r.items() if k != "neighbour") for n, r in found.items()}
    top = sorted(base, key=lambda n: (-base[n], n))[:M]
    idx = {int(t): j for j, t in enumerate(side["turns"])}
    q2 = vec + ALPHA * np.mean([side["own"][idx[t]] for t in top], axis=0)
    q2 /= np.linalg.norm(q2)
    taken = {t.turn for t in recent}
    sims = side["own"] @ q2
    lists = [("feedback", sims)]
    if named: lists.append(("speaker feedback", np.where(side["role"] == named, sims, -9)))
    extra = []
    for name, s in lists:
        rank = 0
        for j in np.argsort(-s)[: config.candidates]:
            t = int(side["turns"][j])
            if t in taken: continue
            found.setdefault(t, {})[name] = 1.0 / (R.RRF_K + rank); rank += 1
            if t not in turns: extra.append(t)
    if extra: turns.update((t.turn, t) for t in store.get(tenant, conv, extra))
    for n, ranks in found.items():
        if named and turns[n].role == named: ranks["speaker"] = 1.0
    return recent, terms, turns, found
R.signals = signals
R.WEIGHTS.update({"feedback": 1.0, "speaker feedback": 1.0})
orig_ingest = locomo_fit.ingest
def ingest_with_side(process, c, tenant):
    out = orig_ingest(process, c, tenant)
    turns = process.store.export(tenant, c.sample_id)
    SIDE[c.sample_id] = dict(turns=np.array([t.turn for t in turns]), role=np.array([t.role for t in turns]),
                             own=process.memory.embed([t.text for t in turns]))
    return out
locomo_fit.ingest = ingest_with_side
sys.exit(locomo_fit.main(sys.argv[1:]))
