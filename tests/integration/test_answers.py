"""The served default model (SmolLM2-135M-Instruct) answers planted facts through `chat` with memory, and
memory beats the recency window at the same context budget: the small version of `imem bench answers`."""

import pytest

from imem_bench.answers import run_facts


@pytest.fixture(scope="module")
def default_model_service(new_service, default_model_path):
    running = new_service(env={"IMEM_MODEL": str(default_model_path)})
    yield running
    running.server.stop()


def test_memory_answers_facts_that_the_recency_window_has_lost(default_model_service):
    report = run_facts(default_model_service.client(), seed=7, distances=[10, 100, 300], per_distance=2,
                       policies=("memory", "recency"))
    correct = {policy: sum(a["correct"] for a in report["answers"] if a["policy"] == policy)
               for policy in ("memory", "recency")}
    print({policy: report["accuracy_by_distance"][policy] for policy in correct})
    for answer in report["answers"]:
        print(answer["policy"], answer["distance"], answer["value"], "->", answer["answer"][:80])
    assert correct["memory"] > correct["recency"], correct
    # What memory recalls reaches the model: facts far beyond the recency window are answered.
    assert any(a["correct"] and a["distance"] >= 100 for a in report["answers"] if a["policy"] == "memory")
