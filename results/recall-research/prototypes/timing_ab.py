"""Recall latency of the old and the new default policy, interleaved question by question in one process on
one store (the machine's load hits both alike): selection + packing, and with the query embedding.
old_recall.py is imem/recall.py as of commit aeb09b4 (the old default, Qdrant's RRF inside the store).

    PYTHONPATH=... python results/recall-research/prototypes/timing_ab.py OUT.json [NAME=VALUE ...]
"""
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import old_recall  # noqa: E402
from harness import Env  # noqa: E402
from imem import recall as R  # noqa: E402
from imem_bench.locomo import commit  # noqa: E402

settings = dict(item.split("=", 1) for item in sys.argv[2:])
env = Env(settings)
memory = env.memory
new_default = R.default
old_config = dataclasses.replace(memory.config, threshold=0.3, neighbour_weight=0.5, pleasantries=True)
times = {"old": {"recall": [], "with_embedding": []}, "new": {"recall": [], "with_embedding": []}}
for repeat in range(2):
    for c in env.convs:
        for q in c.questions:
            for name in ("old", "new") if repeat == 0 else ("new", "old"):
                if name == "old":
                    R.default, memory.config = old_recall.default, old_config
                else:
                    R.default, memory.config = new_default, env.ip.config
                memory.packer.pleasantries = memory.config.pleasantries
                timing = memory.recall_only("locomo", c.sample_id, q.text)["timing_ms"]
                times[name]["recall"].append(timing["recall"])
                times[name]["with_embedding"].append(timing["recall"] + timing["embed"])
report = {"commit": commit(), "settings": settings, "recalls_each": len(times["new"]["recall"])}
for name, series in times.items():
    for kind, values in series.items():
        report[f"{name}_{kind}_ms_p50"] = round(float(np.percentile(values, 50)), 3)
        report[f"{name}_{kind}_ms_p95"] = round(float(np.percentile(values, 95)), 3)
print(json.dumps(report, indent=1))
with open(sys.argv[1], "w", encoding="utf-8") as file:
    json.dump(report, file, indent=1)
