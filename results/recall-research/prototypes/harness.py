"""Exploration harness: ingest the LoCoMo dev split once into the in-process memory (imem_bench.locomo.InProcess),
then evaluate variants of the recall policy or its settings on it. Besides evidence recall it reports an
answer guard ("ans-*"): the share of the gold answer's words (those that occur in the evidence turns) that
are in the packed context, so that a change which shortens turns cannot gain evidence recall by cutting
what answers."""
import dataclasses, json, time, sys, tempfile
from pathlib import Path
import numpy as np
from imem_bench.locomo import load, CATEGORIES, InProcess, ingest

import re
STOPW = set("a an the of to in on at for with and or but is are was were be been his her their they he she it its that this by as from not no yes".split())
def words(text):
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if (len(w) > 2 or w.isdigit()) and w not in STOPW]

DATA = "/work/shared/locomo/locomo-dev.json"

class Env:
    def __init__(self, overrides=None):
        self.ip = InProcess(overrides or {})
        self.memory = self.ip.memory
        self.convs = load(DATA)
        self.turn_of = {}
        self.need = {}
        for c in self.convs:
            text = {t["metadata"]["dia_id"]: t["text"] for t in c.turns}
            for q in c.questions:
                ev = set(words(" ".join(text[e] for e in q.evidence)))
                self.need[(c.sample_id, q.text)] = {w for w in words(q.answer) if w in ev}
        for c in self.convs:
            self.turn_of[c.sample_id] = ingest(self.ip, c, "locomo")

    def evaluate(self, label="", **overrides):
        base = self.ip.config
        self.memory.config = dataclasses.replace(base, **overrides)
        self.memory.packer.pleasantries = self.memory.config.pleasantries
        rows = []
        for c in self.convs:
            tof = self.turn_of[c.sample_id]
            for q in c.questions:
                if not q.evidence: continue
                r = self.memory.recall_only("locomo", c.sample_id, q.text)
                ctx = {t["turn"] for t in r["recalled"] + r["recent"]}
                found = sum(1 for e in q.evidence if tof[e] in ctx)
                ctx_words = set(words(" ".join(t["text"] for t in r["recalled"] + r["recent"])))
                need = self.need[(c.sample_id, q.text)]
                ans = len(need & ctx_words) / len(need) if need else None
                rows.append((q.category, found / len(q.evidence), found > 0, r["context_tokens"],
                             r["timing_ms"]["recall"] + r["timing_ms"]["embed"], c.sample_id, r["timing_ms"]["recall"], ans))
        self.memory.config = base
        self.memory.packer.pleasantries = base.pleasantries
        out = {"all": round(np.mean([r[1] for r in rows]), 4)}
        for k, n in CATEGORIES.items():
            out[n] = round(np.mean([r[1] for r in rows if r[0] == k]), 4)
        for k, n in CATEGORIES.items():
            out["ans-" + n[:5]] = round(np.mean([r[7] for r in rows if r[0] == k and r[7] is not None]), 4)
        out["hit"] = round(np.mean([r[2] for r in rows]), 4)
        out["tok"] = round(np.mean([r[3] for r in rows]), 1)
        out["ms50"] = round(float(np.percentile([r[4] for r in rows], 50)), 2)
        out["sel50"] = round(float(np.percentile([r[6] for r in rows], 50)), 2)
        out["conv"] = {c.sample_id: round(np.mean([r[1] for r in rows if r[5] == c.sample_id]), 3) for c in self.convs}
        print(label, json.dumps(out), flush=True)
        return out, rows

def _store_turns(self, conv):
    return self.ip.store.export("locomo", conv)
Env.store_turns = _store_turns
