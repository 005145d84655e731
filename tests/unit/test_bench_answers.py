"""`imem bench answers` without a server: its planted history, LoCoMo sample, tails and intervals."""

from pathlib import Path

import pytest

from imem_bench import answers, locomo

LOCOMO_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "locomo" / "locomo-dev.json"


def test_planted_history_holds_distinct_facts_at_each_distance():
    history, facts = answers.planted_history(7, [10, 100, 1000], 5)
    assert len(facts) == 15 and len({f.what for f in facts}) == 15 and len(answers.FACTS) >= 15
    for distance in (10, 100, 1000):
        assert sum(answers._bucket(f.distance, [10, 100, 1000]) == distance for f in facts) == 5
    for fact in facts:
        assert history[len(history) - fact.distance] == {"role": "user", "text": fact.statement}
    assert answers.planted_history(7, [10, 100, 1000], 5) == (history, facts)  # seeded
    with pytest.raises(ValueError):
        answers.planted_history(7, [10, 100, 1000], 8)


def test_intervals_contain_the_rate():
    figure = answers.rate([True] * 7 + [False] * 3)
    assert figure["rate"] == 0.7 and figure["n"] == 10 and figure["ci95"][0] < 0.7 < figure["ci95"][1]
    assert answers.rate([True] * 5)["ci95"] == [1.0, 1.0]


def test_tail_readers_get_every_turn_they_can_use():
    history = [{"role": "user", "text": f"turn {i} " + "word " * 10} for i in range(500)]
    settings = {"top_k": 3, "prompt_budget": 1024}
    assert answers.readable(history, "recency", settings, None) == history[-12:]
    tail = answers.readable(history, "window", settings, lambda text: len(text.split()))
    assert sum(len(t["text"].split()) for t in tail) >= 2 * 1024 and tail == history[-len(tail):]
    assert answers.readable(history, "window", settings, None) == history[-256:]


@pytest.mark.skipif(not LOCOMO_DEV.exists(), reason="no LoCoMo dev file")
def test_locomo_questions_are_stratified_by_category():
    chosen = answers.stratified(locomo.load(str(LOCOMO_DEV)), 25, 7)
    assert len(chosen) == 100
    assert {c: sum(q.category == c for _, q in chosen) for c in locomo.CATEGORIES} == {1: 25, 2: 25, 3: 25, 4: 25}
    assert all(q.answer for _, q in chosen)
