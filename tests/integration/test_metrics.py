"""Memory's metrics on Triton's /metrics (Triton's metric API): one chat moves each by what it did."""

import time
import uuid

NAMES = ("imem_memory_recall_duration_ms_count", "imem_memory_turns_recalled_count", "imem_memory_turns_recalled_sum",
         "imem_memory_prompt_tokens_sum", "imem_memory_context_tokens_count", "imem_memory_turns_written_total",
         "imem_memory_turns_stored", "imem_llm_requests_running")


# Memory hands its figures to Triton every IMEM_METRICS_INTERVAL_S (0.5 s here), the store's gauges last.
COUNTED = ("imem_memory_turns_written_total", "imem_memory_turns_stored")


def snapshot_when_quiet(service, seconds: float = 60) -> dict:
    """The metrics once two readings a second apart agree: what earlier tests wrote has been handed over."""
    deadline = time.monotonic() + seconds
    previous = None
    while time.monotonic() < deadline:
        current = {name: service.metric(name) for name in NAMES}
        if current == previous:
            return current
        previous = current
        time.sleep(1.0)
    raise AssertionError(f"memory's metrics kept changing for {seconds} s")


def snapshot_after(service, written: dict, seconds: float = 60) -> dict:
    """The metrics once the two turns of a chat are counted in both `COUNTED` figures."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(service.metric(name) < written[name] + 2 for name in COUNTED):
        time.sleep(0.1)
    return {name: service.metric(name) for name in NAMES}


def test_one_chat_moves_the_memory_metrics_by_what_it_did(service, client):
    conversation = f"metrics-{uuid.uuid4().hex[:8]}"
    start = snapshot_when_quiet(service)
    client.chat(conversation, "My bicycle is green.", sampling={"max_tokens": 4})
    before = snapshot_after(service, start)
    reply = client.chat(conversation, "What colour is my bicycle?", sampling={"max_tokens": 4})
    after = snapshot_after(service, before)
    delta = {name: after[name] - before[name] for name in NAMES}
    assert delta["imem_memory_recall_duration_ms_count"] == 1
    assert delta["imem_memory_context_tokens_count"] == 1
    # The first exchange was offered as recent turns (2 of them) and counted in the histogram's sum.
    assert delta["imem_memory_turns_recalled_count"] == 1 and delta["imem_memory_turns_recalled_sum"] >= 2
    assert delta["imem_memory_prompt_tokens_sum"] == reply.prompt_tokens
    assert delta["imem_memory_turns_written_total"] == 2 and delta["imem_memory_turns_stored"] == 2
    assert service.idle()  # the chat model's gauge, settled: it lags by its own flush interval
