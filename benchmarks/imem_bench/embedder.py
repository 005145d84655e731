"""`imem bench embedder`: sentences/s through Triton's `embedder` model, with and without dynamic batching, at 1
and 32 concurrent callers, next to sentence-transformers called directly in one process (the ceiling).

The bench starts its own tritonserver on a scratch repository holding only two embedder models: `embedder`
with model_repository/embedder/config.pbtxt as it is (dynamic batching) and `embedder_nobatch`, the same
config without its dynamic_batching block (so no vLLM is loaded). Each caller sends one short sentence per
request over gRPC, back to back, for --seconds. In-process: the same all-MiniLM-L6-v2 (imem.embedding) on
ONNX Runtime (the CPU default, as memory runs it) and on torch (sentence-transformers), each with 1 thread
(the server's IMEM_EMBEDDER_THREADS default) and with one per core, one sentence per call and 32 per call.

    imem bench embedder
    imem bench embedder --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from imem_bench import common
from imem_bench.synthetic import history

MODEL_REPOSITORY = common.REPO_ROOT / "model_repository"


def scratch_repository() -> Path:
    """A repository with `embedder` (our config) and `embedder_nobatch` (the same, no dynamic batching)."""
    root = Path(tempfile.mkdtemp(prefix="imem-embedder-repo-"))
    config = (MODEL_REPOSITORY / "embedder" / "config.pbtxt").read_text()
    without = re.sub(r"dynamic_batching\s*\{[^}]*\}\s*", "", config)
    if without == config:
        raise RuntimeError("model_repository/embedder/config.pbtxt has no dynamic_batching block to remove")
    without = re.sub(r'name:\s*"embedder"', 'name: "embedder_nobatch"', without)
    for name, text in (("embedder", config), ("embedder_nobatch", without)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    return root


def sentences(n: int = 512, seed: int = 0) -> list[str]:
    return [h["text"] for h in history(random.Random(seed), 2 * n) if h["role"] == "user"][:n]


async def through_triton(url: str, model: str, callers: int, seconds: float, texts: list[str]) -> dict:
    import numpy as np
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(url.split("://", 1)[-1])
    latencies: list[float] = []
    deadline = 0.0

    async def caller(index: int):
        i = index
        while time.perf_counter() < deadline:
            tensor = aio.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[texts[i % len(texts)].encode()]], dtype=np.object_))
            started = time.perf_counter()
            await client.infer(model, [tensor], outputs=[aio.InferRequestedOutput("embedding")])
            latencies.append((time.perf_counter() - started) * 1000)
            i += callers

    try:
        deadline = time.perf_counter() + min(2.0, seconds / 3)  # warm-up
        await asyncio.gather(*(caller(i) for i in range(callers)))
        latencies.clear()
        before = await common.model_stats(client, [model])
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.perf_counter() - started
        after = await common.model_stats(client, [model])
    finally:
        await client.close()
    executions = after[model]["executions"][0] - before[model]["executions"][0]
    return {"sentences_per_s": round(len(latencies) / elapsed, 1),
            "latency_p50_ms": round(common.percentile(latencies, 50), 2),
            "latency_p95_ms": round(common.percentile(latencies, 95), 2),
            "mean_batch": round(len(latencies) / executions, 2) if executions else None}


def in_process(runtime: str, threads: int, batch: int, seconds: float, texts: list[str]) -> dict:
    from dataclasses import replace

    import torch

    from imem.config import EmbedderConfig
    from imem.embedding import Embedder

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the torch runtime's; an ONNX session takes `threads` from its config
    try:
        embedder = Embedder(replace(EmbedderConfig(), runtime=runtime, threads=threads))
        for start in range(0, 64, batch):  # warm-up
            embedder.embed(texts[start:start + batch])
        done, i, started = 0, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
            embedder.embed(chunk)
            done, i = done + batch, i + batch
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return {"sentences_per_s": round(done / elapsed, 1), "ms_per_call": round(elapsed / (done / batch) * 1000, 2)}


def report(result: dict) -> str:
    rows = []
    for model, label in (("embedder", "Triton, dynamic batching"), ("embedder_nobatch", "Triton, no batching")):
        for callers, m in result["triton"][model].items():
            rows.append([label, f"{callers} caller(s)", m["sentences_per_s"], m["latency_p50_ms"], m["latency_p95_ms"],
                         m["mean_batch"]])
    for key, m in result["in_process"].items():
        rows.append([f"in-process, {key}", "1 (this process)", m["sentences_per_s"],
                     m["ms_per_call"], "-", key.split("batch ")[-1]])
    return common.md_table(["how", "concurrency", "sentences/s", "latency p50 ms", "latency p95 ms", "sentences/batch"],
                           rows)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for model, label in (("embedder", "Triton\nbatching"), ("embedder_nobatch", "Triton\nno batching")):
        for callers, m in result["triton"][model].items():
            labels.append(f"{label}\n{callers} caller(s)")
            values.append(m["sentences_per_s"])
    for key, m in result["in_process"].items():
        labels.append("in-process\n" + key.replace(", ", "\n"))
        values.append(m["sentences_per_s"])
    fig, axis = plt.subplots(figsize=(max(8, len(labels) * 1.2), 4))
    axis.bar(range(len(values)), values, color=["C0"] * 4 + ["C2"] * (len(values) - 4))
    axis.set_xticks(range(len(values)), labels, fontsize=8)
    axis.set(ylabel="sentences/s", title="all-MiniLM-L6-v2 embedding throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench embedder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", default="1,32", help="concurrent callers (default 1,32)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point (default 10)")
    parser.add_argument("--json", default=None, help="output JSON (default results/embedder.json; PNG beside it)")
    parser.add_argument("--quick", action="store_true", help="1.5 s per point")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 1.5
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    callers = [int(c) for c in args.callers.split(",")]
    texts = sentences()
    repository = scratch_repository()
    result: dict = {"triton": {}, "in_process": {}}
    try:
        with common.server(None, repository=str(repository)) as (grpc_url, _, _):
            for model in ("embedder", "embedder_nobatch"):
                result["triton"][model] = {}
                for n in callers:
                    m = common.run_async(through_triton(grpc_url, model, n, args.seconds, texts))
                    result["triton"][model][str(n)] = m
                    print(f"  {model:16s} {n:>3} caller(s): {m['sentences_per_s']:>7.1f} sentences/s, "
                          f"p50 {m['latency_p50_ms']} ms, mean batch {m['mean_batch']}", flush=True)
    finally:
        shutil.rmtree(repository, ignore_errors=True)
    for runtime in ("onnx", "torch"):
        for threads in sorted({1, os.cpu_count() or 1}):
            for batch in (1, 32):
                key = f"{runtime}, {threads} thread(s), batch {batch}"
                result["in_process"][key] = in_process(runtime, threads, batch, args.seconds, texts)
                print(f"  in-process {key}: {result['in_process'][key]['sentences_per_s']} sentences/s", flush=True)
    print()
    print(report(result))
    result = {"benchmark": "embedder", "machine": common.machine(),
              "settings": {**{k: v for k, v in vars(args).items() if k != "json"},
                           "server_threads": os.environ.get("IMEM_EMBEDDER_THREADS", "1")}, **result}
    path = common.write_results("embedder", result, args.json)
    plot(result, common.plot_path(path))
    return 0
