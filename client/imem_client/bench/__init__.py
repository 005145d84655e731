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
}


def run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"imem_client.bench.{name.replace('-', '_')}")
    return module.main(argv)
