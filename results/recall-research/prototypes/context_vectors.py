"""Context-enriched vectors measured through the default policy: a turn's context vector (its text embedded
with its neighbours' on the same day, or with "-mean" the normalised sum of their stored vectors, which
costs no embedding) is searched like the dense vector (plain and speaker lists), held in numpy beside the
store; the weights are refitted and checked held out by imem_bench.locomo_fit.

    python context_vectors.py {none|prev|next|prevnext}[-mean] --data locomo-dev.json --json OUT
"""
import os, sys, time, argparse, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imem import recall as R
from imem_bench import locomo_fit
from imem_bench.locomo import InProcess, ingest, load
MODE = sys.argv[1]  # none | prev | prevnext | next  (+ "-mean" for the mean of the stored vectors)
import os
MEAN = MODE.endswith("-mean"); MODE = MODE.replace("-mean", "")
MEAN_W = float(os.environ.get("MEAN_W", "1.0"))
SIDE = {}
orig = R.signals
def signals(store, config, tenant, conv, query, embed_query):
    recent, terms, turns, found = orig(store, config, tenant, conv, query, embed_query)
    side = SIDE.get(conv)
    if side is None: return recent, terms, turns, found
    vec = embed_query(terms)
    named = R.named_speaker(query, {t.role for t in store.latest(tenant, conv, R.SPEAKER_WINDOW)})
    taken = {t.turn for t in recent}
    sims = side["ctx"] @ vec
    lists = [("context", sims)]
    if named:
        lists.append(("speaker context", np.where(side["role"] == named, sims, -9)))
    extra = []
    for name, s in lists:
        order = np.argsort(-s)[: config.candidates]
        rank = 0
        for j in order:
            t = int(side["turns"][j])
            if t in taken: continue
            found.setdefault(t, {})[name] = 1.0 / (R.RRF_K + rank); rank += 1
            if t not in turns: extra.append(t)
    if extra:
        turns.update((t.turn, t) for t in store.get(tenant, conv, extra))
    for n, ranks in found.items():
        if named and turns[n].role == named: ranks["speaker"] = 1.0
    return recent, terms, turns, found
R.signals = signals
if MODE != "none":
    R.WEIGHTS.update({"context": 1.0, "speaker context": 1.0})
orig_ingest = locomo_fit.ingest
def ingest_with_side(process, c, tenant):
    out = orig_ingest(process, c, tenant)
    if MODE != "none":
        turns = process.store.export(tenant, c.sample_id)
        texts = [t.text for t in turns]
        same = lambda i, j: 0 <= j < len(turns) and turns[j].timestamp == turns[i].timestamp
        if MODE == "prev": ctx = [(texts[i-1] + "\n" if same(i, i-1) else "") + texts[i] for i in range(len(texts))]
        elif MODE == "next": ctx = [texts[i] + ("\n" + texts[i+1] if same(i, i+1) else "") for i in range(len(texts))]
        else: ctx = [(texts[i-1] + "\n" if same(i, i-1) else "") + texts[i] + ("\n" + texts[i+1] if same(i, i+1) else "") for i in range(len(texts))]
        t0 = time.perf_counter()
        if MEAN:
            own = process.memory.embed(texts)
            rows = []
            for i in range(len(texts)):
                v = own[i].copy()
                if MODE in ("prev", "prevnext") and same(i, i-1): v += MEAN_W * own[i-1]
                if MODE in ("next", "prevnext") and same(i, i+1): v += MEAN_W * own[i+1]
                rows.append(v / np.linalg.norm(v))
            SIDE[c.sample_id] = dict(turns=np.array([t.turn for t in turns]), role=np.array([t.role for t in turns]), ctx=np.array(rows))
        else:
            SIDE[c.sample_id] = dict(turns=np.array([t.turn for t in turns]), role=np.array([t.role for t in turns]), ctx=process.memory.embed(ctx))
        print(f"ctx embed {MODE}: {(time.perf_counter()-t0)*1000/len(turns):.2f} ms/turn", file=sys.stderr)
    return out
locomo_fit.ingest = ingest_with_side
sys.exit(locomo_fit.main(sys.argv[2:]))
