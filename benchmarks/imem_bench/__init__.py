"""`imem bench NAME ...`: each benchmark is a module here with `main(argv) -> int`; it prints a table and
writes JSON (--json OUT)."""

import importlib
import os

BENCHMARKS = {
    "locomo": "retrieval quality on LoCoMo through the running server's memory model (or --in-process)",
    "locomo-fit": "fits the default recall policy's weights on LoCoMo and checks them on held-out conversations",
    "overhead": "chat (with memory) versus the bare llm model, same prompts and load",
    "scale": "recall latency and ingest rate as the store grows",
    "prompt-cost": "prompt tokens versus conversation length, next to the full history",
    "embedder": "embedder throughput through Triton versus sentence-transformers in-process",
    "ingest": "how fast `imem memory ingest` imports a long history (turns/s)",
    "loadtest": "a headless Locust run of loadtest/locustfile.py, summarised (make loadtest)",
    "crash": "kill the server at random moments under load, restart it, check every acknowledged turn (make crash)",
    "durability": "write latency with and without a disk sync per write (IMEM_FLUSH_EACH_WRITE)",
    "soak": "a steady Locust load for a long while: errors, latency drift, RSS growth of every process (make soak)",
    "answers": "answer accuracy of the served model through chat: planted facts and LoCoMo, per context policy",
    "backpressure": "calm, flood beyond capacity, calm again: refusals, latency, memory, recovery (make backpressure)",
}


# What memory costs is measured against the dev model (fast, Mistral's tokenizer, as in the README's
# figures) unless IMEM_MODEL names another; `answers` judges answers, so it runs the served default model.
MODEL_BENCHMARKS = {"answers"}


def run(name: str, argv: list[str]) -> int:
    if name not in MODEL_BENCHMARKS:
        from imem.dev_model import DEV_MODEL

        os.environ.setdefault("IMEM_MODEL", str(DEV_MODEL))
    module = importlib.import_module(f"imem_bench.{name.replace('-', '_')}")
    return module.main(argv)
