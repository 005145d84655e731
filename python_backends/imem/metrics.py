"""Prometheus metrics of the memory model, served on Triton's metrics port through its metric API.

Every call of Triton's metric API is a round trip from the model's stub process to the server, so the
request path only records what happened (a deque append); a background thread hands it to Triton once
per `interval`, and refreshes the gauges read from the store (its size, turns waiting for a vector).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

# name: (kind, description, histogram buckets)
MEMORY_METRICS = {
    "imem_memory_recall_duration_ms": ("HISTOGRAM", "Recall time per chat request: selection and prompt packing, "
                                       "query embedding excluded (ms)", [1, 2, 4, 8, 16, 32, 64, 128]),
    "imem_memory_embed_duration_ms": ("HISTOGRAM", "Embedding of a chat message, in the memory process (ms)",
                                      [1, 2, 4, 8, 16, 32, 64, 128]),
    "imem_memory_turns_recalled": ("HISTOGRAM", "Past turns memory put in a prompt (recalled + recent)",
                                   [0, 1, 2, 4, 8, 16, 32]),
    "imem_memory_context_tokens": ("HISTOGRAM", "Tokens memory added to a prompt", [0, 64, 128, 256, 512, 1024, 2048]),
    "imem_memory_prompt_tokens": ("HISTOGRAM", "Tokens of the whole prompt sent to the model",
                                  [64, 128, 256, 512, 1024, 2048, 4096]),
    "imem_memory_turns_written_total": ("COUNTER", "Turns stored (chat messages, replies, ingested history)", None),
    "imem_memory_write_failures_total": ("COUNTER", "Writes to the store that failed (the request got an error)",
                                         None),
    "imem_memory_chats_cancelled_total": ("COUNTER", "Chats whose client went away while llm generated (memory "
                                          "asked llm to stop; the message stays stored, unanswered)", None),
    "imem_memory_turns_stored": ("GAUGE", "Turns in the store, every tenant and conversation", None),
    "imem_memory_vectors_missing": ("GAUGE", "Stored turns still without their dense vector (replies waiting to be "
                                    "embedded in the background)", None),
}


class MemoryMetrics:
    def __init__(self, pb_utils, stats: Callable[[], dict], interval: float = 5.0):
        """`stats()` returns the store's gauges: {"turns_stored": n, "vectors_missing": n}."""
        self.pb_utils, self.stats, self.interval = pb_utils, stats, interval
        self.families, self.metrics = [], {}  # a family must outlive its metrics
        kinds = {"COUNTER": pb_utils.MetricFamily.COUNTER, "GAUGE": pb_utils.MetricFamily.GAUGE,
                 "HISTOGRAM": pb_utils.MetricFamily.HISTOGRAM}
        for name, (kind, description, buckets) in MEMORY_METRICS.items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=kinds[kind])
            self.families.append(family)
            self.metrics[name] = family.Metric(labels={}, buckets=buckets) if buckets else family.Metric(labels={})
        self.pending: deque[tuple[str, float]] = deque()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="memory-metrics", daemon=True)
        self.thread.start()

    def record(self, name: str, value: float = 1.0) -> None:
        """Observes a histogram or adds to a counter, from the request path."""
        self.pending.append((name, value))

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        try:
            while self.pending:
                name, value = self.pending.popleft()
                metric = self.metrics[name]
                if MEMORY_METRICS[name][0] == "HISTOGRAM":
                    metric.observe(value)
                else:
                    metric.increment(value)
            for key, value in self.stats().items():
                self.metrics[f"imem_memory_{key}"].set(value)
        except Exception as error:  # a metric is never worth failing for; try again next interval
            self.pb_utils.Logger.log_warn(f"memory metrics not updated: {error!r}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=self.interval + 1)
        # Metrics first, then their families: the other order crashes the stub at shutdown.
        self.metrics.clear()
        self.families.clear()
