import dataclasses
import numpy as np
from imem import recall as R
from imem.turn import ScoredTurn
import features, proto, filler
MODELS = {}
OPT = dict(loco=True, top_k=20, compress=True, drop=(), alpha=0.0)
import math
def policy(store, config, tenant, conv, query, embed_query):
    window = store.latest(tenant, conv, max(config.recent_turns, R.SPEAKER_WINDOW))
    recent = window[-config.recent_turns:] if config.recent_turns > 0 else []
    speakers = {t.role for t in window}
    terms = R.without_speakers(query, speakers)
    vec = embed_query(terms)
    _, turns, feats = features.pool(store, tenant, conv, query, vec, speakers, proto.SIDE.get(conv))
    cols, w, b = MODELS[conv if OPT["loco"] else "all"]
    taken = {t.turn for t in recent}
    scored = []
    for t, x in feats.items():
        if t in taken: continue
        v = [x[features.NAMES[i]] for i in cols]
        s = b + sum(wi * vi for wi, vi, i in zip(w, v, cols) if features.NAMES[i] not in OPT["drop"])
        scored.append(ScoredTurn(turns[t], s))
    if OPT["alpha"]:
        scored = [ScoredTurn(s_.turn, math.log(1 / (1 + math.exp(-s_.score))) - OPT["alpha"] * math.log(8 + len(s_.turn.text.split()))) for s_ in scored]
    scored.sort(key=lambda s: (-s.score, s.turn.turn))
    scored = scored[: OPT["top_k"]]
    if OPT["compress"]:
        names = {s_.lower() for s_ in speakers} | {s_.lower()[:3] for s_ in speakers}
        scored = [ScoredTurn(dataclasses.replace(s_.turn, text=filler.compress(s_.turn.text, names)), s_.score) for s_ in scored]
    return R.Offer(scored, recent, config.context_budget, terms)
def install():
    R.default = policy
