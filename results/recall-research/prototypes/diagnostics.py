"""Facts about the dev split and the new default's cost that docs/recall-research.md quotes: where the
evidence of a question naming one speaker is, how long turn lines are, how much of them is pleasantries,
and where a recall's time goes (p50 of each step, the default settings).

    PYTHONPATH=... python results/recall-research/prototypes/diagnostics.py OUT.json
"""
import json
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Env  # noqa: E402
from imem import recall as R  # noqa: E402
from imem.prompt import without_pleasantries  # noqa: E402
from imem.store import Search  # noqa: E402
from imem_bench.locomo import commit  # noqa: E402

env = Env()
store, memory, config = env.ip.store, env.memory, env.ip.config
count = memory.packer.count

share = {}  # category -> [evidence turns by the one named speaker, evidence turns] over questions naming one
for c in env.convs:
    speakers = {t["speaker"] for t in c.turns}
    by = {t["metadata"]["dia_id"]: t["speaker"] for t in c.turns}
    for q in c.questions:
        named = [s for s in speakers if re.search(r"(?<!\w)" + re.escape(s) + r"(?!\w)", q.text, re.IGNORECASE)]
        if len(named) == 1 and q.evidence:
            tally = share.setdefault(q.category, [0, 0])
            tally[0] += sum(by[e] == named[0] for e in q.evidence)
            tally[1] += len(q.evidence)

lines, plain = [], []
for c in env.convs:
    names = {t["speaker"].lower() for t in c.turns}
    for t in c.turns:
        lines.append(count(f"{t['speaker']}: {t['text']}"))
        plain.append(count(f"{t['speaker']}: {without_pleasantries(t['text'], names)}"))

steps = {k: [] for k in ("latest", "embed", "search", "signals", "pack", "recall without embedding")}
for c in env.convs:
    for q in c.questions:
        started = time.perf_counter()
        window = store.latest("locomo", c.sample_id, R.SPEAKER_WINDOW)
        steps["latest"].append(time.perf_counter() - started)
        speakers = {t.role for t in window}
        terms, named = R.without_speakers(q.text, speakers), R.named_speaker(q.text, speakers)
        started = time.perf_counter()
        vector = memory.embed([terms])[0]
        steps["embed"].append(time.perf_counter() - started)
        searches = [Search(dense=vector), Search(text=terms)]
        searches += [Search(dense=vector, role=named), Search(text=terms, role=named)] if named else []
        started = time.perf_counter()
        store.search("locomo", c.sample_id, searches, config.candidates)
        steps["search"].append(time.perf_counter() - started)
        started = time.perf_counter()
        offer = R.default(store, config, "locomo", c.sample_id, q.text, lambda text: vector)
        steps["signals"].append(time.perf_counter() - started)
        started = time.perf_counter()
        memory.packer.pack(q.text, offer.recalled, offer.recent, "", offer.budget)
        steps["pack"].append(time.perf_counter() - started)
        result = memory.recall_only("locomo", c.sample_id, q.text)
        steps["recall without embedding"].append(result["timing_ms"]["recall"] / 1000)

report = {
    "commit": commit(),
    "evidence_share_of_the_named_speaker": {str(k): round(a / b, 3) for k, (a, b) in sorted(share.items())},
    "turn_line_tokens": {"mean": round(float(np.mean(lines)), 1), "p90": float(np.percentile(lines, 90))},
    "pleasantry_token_share": round(1 - sum(plain) / sum(lines), 3),
    "step_ms_p50": {k: round(float(np.percentile(v, 50)) * 1000, 2) for k, v in steps.items()},
}
print(json.dumps(report, indent=1))
with open(sys.argv[1], "w", encoding="utf-8") as file:
    json.dump(report, file, indent=1)
