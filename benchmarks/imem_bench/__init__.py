"""`imem bench NAME ...`: each benchmark is a module here with `main(argv) -> int`; it prints a table and
writes JSON (--json OUT)."""

import importlib

BENCHMARKS = {
    "locomo": "retrieval quality on LoCoMo through the running server's memory model",
    "overhead": "chat (with memory) versus the bare llm model, same prompts and load",
    "scale": "recall latency and ingest rate as the store grows",
    "prompt-cost": "prompt tokens versus conversation length, next to the full history",
    "embedder": "embedder throughput through Triton versus sentence-transformers in-process",
    "loadtest": "a headless Locust run of loadtest/locustfile.py, summarised (make loadtest)",
    "crash": "kill the server at random moments under load, restart it, check every acknowledged turn (make crash)",
    "durability": "write latency with and without a disk sync per write (IMEM_FLUSH_EACH_WRITE)",
    "soak": "a steady Locust load for a long while: errors, latency drift, RSS growth of every process (make soak)",
    "backpressure": "calm, flood beyond capacity, calm again: refusals, latency, memory, recovery (make backpressure)",
}


def run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"imem_bench.{name.replace('-', '_')}")
    return module.main(argv)
