"""Memory's metrics on Triton's /metrics (Triton's metric API): one chat moves each by what it did."""

import time
import uuid

NAMES = ("imem_memory_recall_duration_ms_count", "imem_memory_turns_recalled_count", "imem_memory_turns_recalled_sum",
         "imem_memory_prompt_tokens_sum", "imem_memory_context_tokens_count", "imem_memory_turns_written_total",
         "imem_memory_turns_stored", "imem_llm_requests_running")


def test_one_chat_moves_the_memory_metrics_by_what_it_did(service, client):
    conversation = f"metrics-{uuid.uuid4().hex[:8]}"
    client.chat(conversation, "My bicycle is green.", sampling={"max_tokens": 4})
    time.sleep(1.5)  # the memory model hands its figures to Triton every IMEM_METRICS_INTERVAL_S (0.5 s here)
    before = {name: service.metric(name) for name in NAMES}
    reply = client.chat(conversation, "What colour is my bicycle?", sampling={"max_tokens": 4})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and service.metric("imem_memory_turns_written_total") < before[
            "imem_memory_turns_written_total"] + 2:
        time.sleep(0.2)
    time.sleep(1.0)  # the gauges are refreshed on the same tick
    after = {name: service.metric(name) for name in NAMES}
    delta = {name: after[name] - before[name] for name in NAMES}
    assert delta["imem_memory_recall_duration_ms_count"] == 1
    assert delta["imem_memory_context_tokens_count"] == 1
    # The first exchange was offered as recent turns (2 of them) and counted in the histogram's sum.
    assert delta["imem_memory_turns_recalled_count"] == 1 and delta["imem_memory_turns_recalled_sum"] >= 2
    assert delta["imem_memory_prompt_tokens_sum"] == reply.prompt_tokens
    assert delta["imem_memory_turns_written_total"] == 2 and delta["imem_memory_turns_stored"] == 2
    assert after["imem_llm_requests_running"] == 0
