"""The load test's pure parts: the summary of Locust's CSV, and the synthetic conversations its users hold."""

import random

import pytest

from imem_bench.loadtest import summarize, table
from imem_bench.synthetic import Conversation, history

HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%")


def row(kind, name, count, failures, average, content, rate, p50, p95, p99):
    return (f"{kind},{name},{count},{failures},{p50},{average},1,{p99},{content},{rate},0.0,"
            f"{p50},{p50},{p50},{p50},{p95},{p95},{p99},{p99},{p99},{p99},{p99}")


@pytest.fixture
def run(tmp_path):
    stats = tmp_path / "locust_stats.csv"
    stats.write_text("\n".join([
        HEADER,
        row("grpc", "grpc chat: first token", 40, 0, 95.5, 0.0, 2.0, 90, 180, 250),
        row("grpc", "grpc chat: full response", 40, 0, 300.2, 32.0, 2.0, 290, 500, 700),
        row("grpc", "grpc memory: fact recalled", 12, 0, 0.0, 0.75, 0.6, 0, 0, 0),
        row("http", "http chat: first token", 30, 2, 80.0, 0.0, 1.5, 70, 160, 240),
        row("http", "http chat: full response", 30, 2, 310.0, 30.0, 1.5, 300, 520, 800),
        row("", "Aggregated", 152, 4, 150.0, 20.0, 7.6, 100, 480, 700),
    ]) + "\n")
    failures = tmp_path / "locust_failures.csv"
    failures.write_text("Method,Name,Error,Occurrences\n"
                        "http,http chat: full response,RuntimeError('HTTP 400: bad'),2\n")
    return stats, failures


def test_summary_reads_turns_tokens_latency_and_failures_per_protocol(run):
    summary = summarize(*run)
    grpc, http = summary["protocols"]["grpc"], summary["protocols"]["http"]
    assert grpc["turns"] == 40 and grpc["failures"] == 0 and grpc["turns_per_s"] == 2.0
    assert grpc["tokens"] == 1280 and grpc["tokens_per_s"] == 64.0  # 2 turns/s x 32 tokens each
    assert grpc["time_to_first_token"] == {"p50_ms": 90.0, "p95_ms": 180.0, "p99_ms": 250.0, "mean_ms": 95.5}
    assert grpc["latency"]["p50_ms"] == 290.0 and grpc["latency"]["p99_ms"] == 700.0
    assert grpc["fact_recall_rate"] == 0.75 and grpc["fact_questions"] == 12
    assert "fact_recall_rate" not in http and http["tokens_per_s"] == 45.0
    # Totals add the protocols up; the "Aggregated" row (TTFT entries and checks mixed in) is not used.
    assert summary["turns"] == 70 and summary["failures"] == 2
    assert summary["turns_per_s"] == 3.5 and summary["tokens_per_s"] == 109.0
    assert summary["errors"] == [{"name": "http chat: full response", "error": "RuntimeError('HTTP 400: bad')",
                                  "occurrences": 2}]
    text = table(summary)
    assert "| grpc | 40 | 0 | 2.00 | 64.0 | 90 / 180 / 250 | 290 / 500 / 700 | 75% of 12 |" in text
    assert "70 turns, 2 failed" in text


def test_summary_of_a_run_without_requests_is_empty(tmp_path):
    stats = tmp_path / "s.csv"
    stats.write_text(HEADER + "\n" + row("", "Aggregated", 0, 0, 0, 0, 0, 0, 0, 0) + "\n")
    summary = summarize(stats, tmp_path / "missing.csv")
    assert summary["protocols"] == {} and summary["turns"] == 0 and summary["errors"] == []


def test_a_conversation_states_facts_first_and_asks_about_them_last():
    conversation = Conversation("c", random.Random(3), turns=10)
    messages = []
    while not conversation.done:
        messages.append(conversation.next_message())
    assert len(messages) == 10
    statements = [m for m, _ in messages[:3]]
    questions = messages[-3:]
    assert all(about is None for _, about in messages[:7])
    assert sorted(about for _, about in questions) == sorted(statements)
    assert len({m for m, _ in messages[3:7]}) == 4  # small talk does not repeat


def test_conversations_are_reproducible_and_short_ones_still_ask():
    one = Conversation("a", random.Random(7), turns=2)
    two = Conversation("a", random.Random(7), turns=2)
    assert one.script == two.script and one.script[1][1] == one.script[0][0]
    with pytest.raises(ValueError):
        Conversation("a", random.Random(7), turns=1)


def test_history_alternates_roles_and_varies():
    lines = history(random.Random(0), 200)
    assert [h["role"] for h in lines[:4]] == ["user", "assistant", "user", "assistant"]
    assert len({h["text"] for h in lines if h["role"] == "user"}) > 80
    assert history(random.Random(0), 10) == lines[:10]
