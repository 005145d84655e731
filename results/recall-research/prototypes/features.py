"""Candidate pool + features per candidate, for a learned priority (prototype)."""
import re, math
import numpy as np, qdrant_edge as edge
from imem import recall as R
from imem.prompt import date_label
from imem.store.base import bm25, scope, SPARSE, DENSE, Match
from imem.store.edge import _filter
from imem.turn import Turn
import filler, proto

NAMES = ["rr_d", "cos_d", "rr_s", "bm_s", "rr_ds", "rr_ss", "spk", "named1", "nb_reply", "nb_prompt", "nb_cont", "nb_react",
         "qmark", "loglen", "allfiller", "caption", "rr_ctx", "cos_ctx", "bias", "rr_ctxp", "rr_ctxn", "sess", "sess_max", "nb_any", "rr_ctxs"]

def pool(store, tenant, conv, query, vec, speakers, side=None, cands=40):
    terms = R.without_speakers(query, speakers)
    named = proto.named_speakers(query, speakers)
    sp = bm25().embed_query(terms)
    searches = [(DENSE, vec, ()), (SPARSE, sp, ())]
    if len(named) == 1:
        ex = (Match("role", named[0]),)
        searches += [(DENSE, vec, ex), (SPARSE, sp, ex)]
    reqs = []
    for using, v, ex in searches:
        if using == SPARSE and not sp.indices:
            v = None
        if v is None:
            reqs.append(None); continue
        reqs.append(edge.QueryRequest(limit=cands, query=edge.Query.Nearest(v.tolist() if using == DENSE else v, using=using),
                                      filter=_filter(scope(tenant, conv, *ex)), with_payload=True))
    real = [r for r in reqs if r is not None]
    res = iter(store.shard.query_batch(edge.QueryBatchRequest(real)))
    lists = [next(res) if r is not None else [] for r in reqs] + [[], []][: 4 - len(reqs)]
    feats, payload = {}, {}
    def f(t):
        return feats.setdefault(t, dict.fromkeys(NAMES, 0.0))
    for li, key in zip(lists, ("d", "s", "ds", "ss")):
        top = li[0].score if li else 1.0
        for rank, h in enumerate(li):
            t = h.payload["turn"]; payload[t] = h.payload
            x = f(t)
            x["rr_" + key] = 1.0 / (2 + rank)
            if key == "d": x["cos_d"] = h.score
            if key == "s": x["bm_s"] = h.score / top if top else 0
    if side is not None:
        for key, name in (("ctx", "rr_ctx"), ("ctxp", "rr_ctxp"), ("ctxn", "rr_ctxn")):
            if key not in side: continue
            sims = side[key] @ vec
            order = np.argsort(-sims)[:cands]
            for rank, j in enumerate(order):
                t = int(side["turns"][j]); x = f(t); x[name] = 1.0 / (2 + rank)
                if key == "ctx": x["cos_ctx"] = float(sims[j])
            if key == "ctx" and len(named) == 1:
                sims = np.where(side["role"] == named[0], sims, -9)
                order = np.argsort(-sims)[:cands]
                for rank, j in enumerate(order):
                    t = int(side["turns"][j]); x = f(t); x["rr_ctxs"] = 1.0 / (2 + rank)
    missing = [t for t in feats if t not in payload]
    # base score for neighbour relations: plain RRF of d and s
    base = {t: x["rr_d"] + x["rr_s"] + x["rr_ds"] + x["rr_ss"] for t, x in feats.items()}
    hits = sorted(base, key=lambda t: (-base[t], t))[:20]
    wanted = {h + d for h in hits for d in (-2, -1, 1, 2)} - payload.keys()
    for t in store.get(tenant, conv, set(wanted) | set(missing)):
        payload[t.turn] = t.payload()
    turns = {t: Turn.from_payload(p) for t, p in payload.items()}
    for h in hits:
        ht = turns[h]
        for d in (-2, -1, 1, 2):
            n = h + d
            if n not in turns or date_label(turns[n].timestamp) != date_label(ht.timestamp): continue
            x = f(n)
            if d == 1 and "?" in ht.text: k = "nb_reply"
            elif d == -1: k = "nb_prompt"
            elif abs(d) == 2 and turns[n].role == ht.role: k = "nb_cont"
            else: k = "nb_react"
            x[k] = max(x[k], base[h])
    sessions = {}
    for t in feats:
        if t in turns:
            d = date_label(turns[t].timestamp)
            sessions[d] = sessions.get(d, 0.0) + base.get(t, 0.0)
    smax = max(sessions.values()) if sessions else 1.0
    for t, x in feats.items():
        x["nb_any"] = max(x["nb_reply"], x["nb_prompt"], x["nb_cont"], x["nb_react"])
        x["sess"] = sessions.get(date_label(turns[t].timestamp), 0.0)
        x["sess_max"] = x["sess"] / smax if smax else 0.0
    names = {s.lower() for s in speakers} | {s.lower()[:3] for s in speakers}
    for t, x in feats.items():
        tt = turns[t]
        x["spk"] = float(len(named) == 1 and tt.role == named[0])
        x["named1"] = float(len(named) == 1)
        x["qmark"] = float("?" in tt.text)
        x["loglen"] = math.log(1 + len(tt.text.split()))
        x["allfiller"] = float(filler.compress(tt.text, names) == tt.text and all(filler.is_filler(p, names) for p in filler.SENT.split(tt.text)))
        x["caption"] = float("[shares" in tt.text)
        x["bias"] = 1.0
    return terms, turns, feats
