"""Prometheus metrics of our models, served on Triton's metrics port through its metric API.

METRICS is the one table of them: the models register their rows from it, and the deploy check and the
Grafana dashboard are checked against it. Every call of Triton's metric API is a round trip from the
model's stub process to the server, so the request path only records what happened (a deque append); a
background thread hands it to Triton once per `interval`, and refreshes the gauges.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

LATENCY_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]

# name: (model, kind, description, histogram buckets)
METRICS = {
    "imem_memory_recall_duration_ms": ("memory", "HISTOGRAM", "Recall time per chat request: selection and prompt "
                                       "packing, query embedding excluded (ms)", LATENCY_BUCKETS),
    "imem_memory_embed_duration_ms": ("memory", "HISTOGRAM", "Embedding of a chat message, in the memory process "
                                      "(ms)", LATENCY_BUCKETS),
    "imem_memory_turns_recalled": ("memory", "HISTOGRAM", "Past turns memory put in a prompt (recalled + recent)",
                                   [0, 1, 2, 4, 8, 16, 32]),
    "imem_memory_context_tokens": ("memory", "HISTOGRAM", "Tokens memory added to a prompt",
                                   [0, 64, 128, 256, 512, 1024, 2048]),
    "imem_memory_prompt_tokens": ("memory", "HISTOGRAM", "Tokens of the whole prompt sent to the model",
                                  [64, 128, 256, 512, 1024, 2048, 4096]),
    "imem_memory_turns_written_total": ("memory", "COUNTER", "Turns stored (chat messages, replies, ingested "
                                        "history)", None),
    "imem_memory_write_failures_total": ("memory", "COUNTER", "Requests memory could not serve for its own reasons "
                                         "(a full or failing store); the request got an error", None),
    "imem_memory_turns_stored": ("memory", "GAUGE", "Turns in the store, every tenant and conversation", None),
    "imem_memory_vectors_missing": ("memory", "GAUGE", "Stored turns still without their dense vector (replies "
                                    "waiting to be embedded in the background)", None),
    "imem_llm_requests_running": ("chat", "GAUGE", "Generations in progress (recalling, waiting for the engine or "
                                  "generating)", None),
    "imem_llm_requests_cancelled_total": ("chat", "COUNTER", "Generations stopped because the client cancelled "
                                          "(a chat's message stays stored, unanswered)", None),
    "imem_llm_requests_rejected_total": ("chat", "COUNTER", "Requests refused at once because IMEM_MAX_GENERATIONS "
                                         "generations were in flight, or the engine was restarting", None),
    "imem_llm_requests_failed_total": ("chat", "COUNTER", "Generations that ended with an error", None),
    "imem_llm_engine_restarts_total": ("chat", "COUNTER", "Engines started again after dying", None),
    "imem_llm_generated_tokens_total": ("chat", "COUNTER", "Tokens generated", None),
}


class Metrics:
    def __init__(self, pb_utils, model: str, gauges: Callable[[], dict] | None = None, interval: float = 5.0):
        """Registers `model`'s rows of METRICS. `gauges()` returns {gauge name without the model's prefix:
        value}, read every `interval` seconds."""
        self.pb_utils, self.gauges, self.interval = pb_utils, gauges, interval
        self.prefix = "imem_memory_" if model == "memory" else "imem_llm_"
        self.families, self.metrics = [], {}  # a family must outlive its metrics
        kinds = {"COUNTER": pb_utils.MetricFamily.COUNTER, "GAUGE": pb_utils.MetricFamily.GAUGE,
                 "HISTOGRAM": pb_utils.MetricFamily.HISTOGRAM}
        for name, (owner, kind, description, buckets) in METRICS.items():
            if owner != model:
                continue
            family = pb_utils.MetricFamily(name=name, description=description, kind=kinds[kind])
            self.families.append(family)
            self.metrics[name] = family.Metric(labels={}, buckets=buckets) if buckets else family.Metric(labels={})
        self.pending: deque[tuple[str, float]] = deque()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"{model}-metrics", daemon=True)
        self.thread.start()

    def record(self, name: str, value: float = 1.0) -> None:
        """Observes a histogram or adds to a counter, from the request path."""
        self.pending.append((name, value))

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        # The gauges are read before the records are taken and set after them: a gauge that shows the end of
        # some work (nothing running) never reaches Triton before the counts that work recorded.
        try:
            gauges = self.gauges() if self.gauges else {}
            while self.pending:
                name, value = self.pending.popleft()
                metric = self.metrics[name]
                if METRICS[name][1] == "HISTOGRAM":
                    metric.observe(value)
                else:
                    metric.increment(value)
            for key, value in gauges.items():
                self.metrics[self.prefix + key].set(value)
        except Exception as error:  # a metric is never worth failing for; try again next interval
            self.pb_utils.Logger.log_warn(f"metrics not updated: {error!r}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=self.interval + 1)
        # Metrics first, then their families: the other order crashes the stub at shutdown.
        self.metrics.clear()
        self.families.clear()
