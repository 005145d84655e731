"""Prototype default policy with options, Edge-only (direct shard calls) + numpy side indexes."""
import re
import numpy as np, qdrant_edge as edge
from imem import recall as R
from imem.prompt import date_label
from imem.store.base import bm25, scope, SPARSE, DENSE, Match
from imem.store.edge import _filter
from imem.turn import ScoredTurn, Turn

DEFAULT = dict(speaker="off", rrf_k=2, rank0=False, dense_w=1.0, sparse_w=1.0, spk_w=1.0, cands=30,
               extra_queries=(), extra_w=1.0, mmr=0.0, ctx=None, ctx_w=1.0, nb_dirs=None, entity=0.0, session=0.0, nb_table=None, compress=None)
OPT = dict(DEFAULT)
SIDE = {}  # conv -> dict(turns=np.array of turn numbers, ctx=matrix, dense=matrix, role=array, ents=list of sets, session=array)

STOP = set("""a an the of to in on at for with and or but is are was were be been being do does did done has have had
what which who whom whose when where why how this that these those it its his her their them they he she you your
i me my we our us about from by as any some ever would could should might may can will into than then there""".split())
QWORDS = {"what", "which", "who", "whom", "whose", "when", "where", "why", "how", "did", "does", "do", "is", "are", "was", "were", "has", "have", "had"}

def keywords(terms, query):
    return " ".join(w for w in re.findall(r"[\w'’-]+", terms) if w.lower() not in STOP)

def entities(text):
    # capitalised words not at sentence start
    words = re.findall(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+(?:\s[A-Z][a-z]+)*)", text)
    return {w for w in words}

def named_speakers(query, speakers):
    return [s for s in speakers if s.strip() and s.strip().lower() not in R.GENERIC_ROLES
            and re.search(r"(?<!\w)" + re.escape(s.strip()) + r"(?!\w)", query, re.I)]

def run_searches(store, tenant, conv, searches, vectors=False):
    reqs = []
    for using, vec, extra, limit, thr in searches:
        where = _filter(scope(tenant, conv, *extra))
        q = edge.Query.Nearest(vec.tolist() if using != SPARSE else vec, using=using)
        reqs.append(edge.QueryRequest(limit=limit, query=q, filter=where, score_threshold=thr, with_payload=True,
                                      with_vector=[DENSE] if vectors else None))
    return store.shard.query_batch(edge.QueryBatchRequest(reqs))

def proto(store, config, tenant, conv, query, embed_query):
    o = OPT
    window = store.latest(tenant, conv, max(config.recent_turns, R.SPEAKER_WINDOW))
    recent = window[-config.recent_turns:] if config.recent_turns > 0 else []
    speakers = {t.role for t in window}
    terms = R.without_speakers(query, speakers)
    taken = {t.turn for t in recent}
    named = named_speakers(query, speakers)
    c = o["cands"]
    texts = [terms] + [f(terms, query) for f in o["extra_queries"]]
    texts = [t for t in dict.fromkeys(texts) if t and re.search(r"\w", t)]
    searches, weights, qvecs = [], [], []
    side = SIDE.get(conv)
    extras = [()]
    if o["speaker"] == "filter" and len(named) == 1:
        extras = [(Match("role", named[0]),)]
    elif o["speaker"] == "both" and len(named) == 1:
        extras = [(), (Match("role", named[0]),)]
    side_lists = []
    for i, text in enumerate(texts):
        vec = embed_query(text); qvecs.append(vec)
        sp = bm25().embed_query(text)
        w = 1.0 if i == 0 else o["extra_w"]
        for ex in extras:
            ww = w * (o["spk_w"] if ex else 1.0)
            searches.append((DENSE, vec, ex, c, config.threshold or None)); weights.append(ww * o["dense_w"])
            if sp.indices:
                searches.append((SPARSE, sp, ex, c, None)); weights.append(ww * o["sparse_w"])
            if o["ctx"] and side is not None:
                mask = np.ones(len(side["turns"]), bool) if not ex else (side["role"] == named[0])
                sims = side["ctx"] @ vec
                sims = np.where(mask, sims, -9)
                top = np.argsort(-sims)[:c]
                side_lists.append(([int(side["turns"][j]) for j in top if sims[j] >= (config.threshold or -1)], ww * o["ctx_w"]))
    results = run_searches(store, tenant, conv, searches, vectors=o["mmr"] > 0)
    fused, payloads, vecs = {}, {}, {}
    base = 0 if o["rank0"] else 1
    for res, w in zip(results, weights):
        for rank, h in enumerate(res):
            t = h.payload["turn"]
            payloads[t] = h.payload
            if h.vector: vecs[t] = np.asarray(h.vector[DENSE], np.float32)
            fused[t] = fused.get(t, 0.0) + w / (o["rrf_k"] + rank + base)
    for lst, w in side_lists:
        for rank, t in enumerate(lst):
            fused[t] = fused.get(t, 0.0) + w / (o["rrf_k"] + rank + base)
    missing = [t for t in fused if t not in payloads]
    if missing:
        for t in store.get(tenant, conv, missing): payloads[t.turn] = t.payload()
    if o["entity"] > 0 and side is not None:
        # one hop along shared proper names from the top hits
        top = sorted(fused, key=lambda t: (-fused[t], t))[:5]
        idx = {int(t): j for j, t in enumerate(side["turns"])}
        extra = {}
        for t in top:
            ents = side["ents"][idx[t]] - set(speakers)
            if not ents: continue
            for j, e2 in enumerate(side["ents"]):
                tt = int(side["turns"][j])
                if tt != t and ents & e2:
                    extra[tt] = max(extra.get(tt, 0), fused[t] * o["entity"])
        for tt, s in extra.items():
            fused[tt] = fused.get(tt, 0) + s
        missing = [t for t in fused if t not in payloads]
        if missing:
            for t in store.get(tenant, conv, missing): payloads[t.turn] = t.payload()
    order = sorted(fused, key=lambda t: (-fused[t], t))
    if o["mmr"] > 0:
        # greedy redundancy penalty among direct hits
        chosen = []
        pool = [t for t in order[: 2 * config.candidates] if t in vecs]
        scores = {}
        while pool and len(chosen) < config.candidates:
            best, bs = None, -1e9
            for t in pool:
                red = max((float(vecs[t] @ vecs[u]) for u in chosen), default=0.0)
                s = fused[t] * (1 - o["mmr"] * max(red, 0))
                if s > bs: best, bs = t, s
            chosen.append(best); pool.remove(best); scores[best] = bs
        order = chosen; fused = scores
    order = order[: config.candidates]
    own = {t: fused[t] for t in order if t not in taken}
    turns = {t: Turn.from_payload(payloads[t]) for t in own}
    if config.neighbours > 0 and own:
        wanted = {n + d for n in own for d in range(-config.neighbours, config.neighbours + 1)} - taken - own.keys()
        turns.update((t.turn, t) for t in store.get(tenant, conv, wanted))
    scored = []
    for number, turn in turns.items():
        day = date_label(turn.timestamp)
        score = own.get(number, 0.0)
        for distance in range(1, config.neighbours + 1):
            for other in (number - distance, number + distance):
                if other in own and date_label(turns[other].timestamp) == day:
                    if o["nb_table"]:
                        d = number - other  # position of this turn relative to the hit
                        score += own[other] * o["nb_table"][("?" in turns[other].text, d)]
                    else:
                        score += own[other] * config.neighbour_weight ** distance
        scored.append(ScoredTurn(turn, score))
    scored.sort(key=lambda s: (-s.score, s.turn.turn not in own, s.turn.turn))
    if o["compress"]:
        import dataclasses, filler
        names = {s_.lower() for s_ in speakers} | {s_.lower()[:3] for s_ in speakers}
        qw = {w[:5] for w in re.findall(r"\w+", terms.lower()) if w not in STOP}
        def shorten(text):
            t = filler.compress(text, names)
            if o["compress"] == "filler": return t
            limit = o["compress"][1]
            parts = filler.SENT.split(t)
            if len(t.split()) <= limit or len(parts) == 1: return t
            rank = sorted(range(len(parts)), key=lambda i: (-len(qw & {w[:5] for w in re.findall(r"\w+", parts[i].lower())}), i))
            keep, used = set(), 0
            for i in rank:
                n = len(parts[i].split())
                if keep and used + n > limit: continue
                keep.add(i); used += n
            return " ".join(parts[i] if i in keep else "…" for i in range(len(parts))).replace("… …", "…")
        scored = [ScoredTurn(dataclasses.replace(s_.turn, text=shorten(s_.turn.text)), s_.score) for s_ in scored]
    return R.Offer(scored[: config.top_k], recent, config.context_budget, terms)

def build_side(env, ctx_mode="prev"):
    for c in env.convs:
        turns = env.store_turns(c.sample_id)
        texts = [t.text for t in turns]
        if ctx_mode == "prev":
            ctx_texts = [(texts[i - 1] + "\n" if i > 0 and turns[i-1].timestamp == turns[i].timestamp else "") + texts[i] for i in range(len(texts))]
        elif ctx_mode == "prevnext":
            ctx_texts = [(texts[i - 1] + "\n" if i > 0 and turns[i-1].timestamp == turns[i].timestamp else "") + texts[i]
                         + ("\n" + texts[i + 1] if i + 1 < len(texts) and turns[i+1].timestamp == turns[i].timestamp else "") for i in range(len(texts))]
        same = lambda i, j: 0 <= j < len(turns) and turns[j].timestamp == turns[i].timestamp
        prev = [(texts[i - 1] + "\n" if same(i, i - 1) else "") + texts[i] for i in range(len(texts))]
        nxt = [texts[i] + ("\n" + texts[i + 1] if same(i, i + 1) else "") for i in range(len(texts))]
        SIDE[c.sample_id] = dict(turns=np.array([t.turn for t in turns]), role=np.array([t.role for t in turns]),
                                 ctx=env.memory.embed(ctx_texts), ents=[entities(t.text) for t in turns],
                                 ctxp=env.memory.embed(prev), ctxn=env.memory.embed(nxt))

def install():
    R.default = proto
