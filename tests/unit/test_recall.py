"""The recall policy (imem/recall.py) on a real Qdrant Edge store with the real embedder: what the default
policy offers, within which budgets, and that chat and the direct recall share it."""

import dataclasses

import pytest

from imem.config import MemoryConfig
from imem.errors import BadRequest
from imem.memory import Memory
from imem.recall import named_speaker, without_speakers
from imem.store import EdgeTurnStore
from imem.turn import Turn

DAY1, DAY2 = "1:56 pm on 8 May, 2023", "10:37 am on 27 June, 2023"
# A history between two named people who address each other by name, as ingested histories do.
SMALL_TALK = [
    ("Caroline", "Hey Melanie! Good to see you, how have you been?"),
    ("Melanie", "Hi Caroline! Busy with the kids, but good. And you, Caroline?"),
    ("Caroline", "Melanie, you always know how to cheer me up."),
    ("Melanie", "Thanks Caroline, that means a lot to me."),
    ("Caroline", "Melanie, we should grab coffee next week."),
    ("Melanie", "Sure Caroline, Thursday works for me."),
]
HISTORY = (
    [(role, text, DAY1) for role, text in SMALL_TALK]
    + [("Caroline", "What did you get up to at the weekend?", DAY1),
       ("Melanie", "I painted a sunrise over the lake with watercolours.", DAY1),
       ("Caroline", "Wow, that sounds beautiful!", DAY1)]
    + [(role, text, DAY2) for role, text in SMALL_TALK]
    + [("Caroline", "Did the kids like the trip to the coast?", DAY2),
       ("Melanie", "They loved it, although the drive was long.", DAY2)]
    + [(role, text, DAY2) for role, text in SMALL_TALK]
)


@pytest.fixture
def store(tmp_path):
    s = EdgeTurnStore(tmp_path / "edge")
    yield s
    s.close()


def fill(store, embedder, history=HISTORY, conversation="c", tenant="t"):
    turns = [Turn(tenant, conversation, 0, role, text, when) for role, text, when in history]
    return store.add(turns, embedder.embed([t.text for t in turns]))


def memory(store, tokenizer, embedder, **settings):
    return Memory(dataclasses.replace(MemoryConfig(), **settings), store, tokenizer, embedder.embed)


def context_of(result: dict) -> dict[int, dict]:
    return {t["turn"]: t for t in result["recalled"] + result["recent"]}


def test_the_speakers_names_are_left_out_of_the_search():
    speakers = {"Melanie", "Caroline", "user", "assistant"}
    assert without_speakers("What did Melanie paint?", speakers) == "What did paint?"
    assert without_speakers("Where is Caroline's new flat, Melanie?", speakers) == "Where is new flat, ?"
    assert without_speakers("Which user settings did the assistant change?", speakers) == \
        "Which user settings did the assistant change?"
    assert without_speakers("Melanie?", speakers) == "Melanie?"  # nothing left: searched as it is
    assert without_speakers("Did Melanies cousin call?", {"Melanie"}) == "Did Melanies cousin call?"


def test_the_one_speaker_a_query_names_is_found_by_whole_word():
    speakers = {"Melanie", "Caroline", "user"}
    assert named_speaker("What did Melanie paint?", speakers) == "Melanie"
    assert named_speaker("Where is melanie's new flat?", speakers) == "Melanie"
    assert named_speaker("Did Caroline and Melanie meet?", speakers) == ""  # two: neither is preferred
    assert named_speaker("Did Melanies cousin call?", speakers) == ""
    assert named_speaker("What did the user ask?", speakers) == ""  # a generic role is not a name


def test_a_question_naming_a_speaker_finds_that_speakers_own_words(store, tokenizer, embedder):
    # Caroline talks about painting at length; Melanie said what she painted in few words.
    history = [("Caroline", "I love painting, I paint portraits and painting relaxes me.", DAY1),
               ("Melanie", "Nice! I finished a watercolour of the lake.", DAY1)]
    turns = fill(store, embedder, history + [(role, text, DAY2) for role, text in SMALL_TALK * 2])
    portraits, lake = turns[0].turn, turns[1].turn
    query = "What did Melanie paint?"
    named = memory(store, tokenizer, embedder, top_k=1, neighbours=0).recall_only("t", "c", query)
    assert [t["turn"] for t in named["recalled"]] == [lake]
    plain = memory(store, tokenizer, embedder, top_k=1, neighbours=0, speaker_search=False).recall_only("t", "c", query)
    assert [t["turn"] for t in plain["recalled"]] == [portraits]


def test_a_fact_is_found_among_turns_that_only_share_the_speakers_name(store, tokenizer, embedder):
    turns = fill(store, embedder)
    result = memory(store, tokenizer, embedder, top_k=3, neighbours=0).recall_only("t", "c", "What did Melanie paint?")
    painted = next(t.turn for t in turns if "painted" in t.text)
    assert result["searched"] == "What did paint?"
    assert painted in context_of(result)
    assert result["recalled"][0]["turn"] == painted


def test_the_turns_around_a_hit_come_with_it_the_same_day_only(store, tokenizer, embedder):
    turns = fill(store, embedder)
    question = next(t.turn for t in turns if t.text.startswith("Did the kids like the trip"))
    query = "Did the kids enjoy the trip to the coast?"
    alone = memory(store, tokenizer, embedder, top_k=2, neighbours=0, recent_turns=0).recall_only("t", "c", query)
    assert question in context_of(alone) and question + 1 not in context_of(alone)
    result = memory(store, tokenizer, embedder, top_k=2, neighbours=1, recent_turns=0).recall_only("t", "c", query)
    context = context_of(result)
    assert set(context) == {question, question + 1}  # the reply, which shares no word with the query
    assert context[question + 1]["text"].startswith("They loved it")
    first_of_day2 = next(t.turn for t in turns if t.timestamp == DAY2)
    greeting = memory(store, tokenizer, embedder, top_k=12, neighbours=2).recall_only(
        "t", "c", "Hey Melanie! Good to see you, how have you been?")
    recalled = {t["turn"] for t in greeting["recalled"]}
    assert {first_of_day2, first_of_day2 + 1} <= recalled
    assert first_of_day2 - 1 not in recalled  # the turn before it was said on another day


def test_budgets_hold_and_the_latest_turns_are_always_there(store, tokenizer, embedder):
    long_history = [(("Ana", "Ben")[i % 2], f"Entry {i}: we talked about the garden, the {i}th rose bed and the "
                                             f"weather in Porto that week, which was mild.", f"{i % 28 + 1} May 2024")
                    for i in range(300)]
    fill(store, embedder, long_history)
    mem = memory(store, tokenizer, embedder, context_budget=250, top_k=40, recent_turns=3)
    result = mem.recall_only("t", "c", "What did we say about the rose bed?")
    assert result["context_tokens"] <= 250
    assert [t["turn"] for t in result["recent"]] == [298, 299, 300]
    assert 0 < len(result["recalled"]) < 40
    capped = memory(store, tokenizer, embedder, context_budget=2000, top_k=5).recall_only("t", "c", "rose bed")
    assert len(capped["recalled"]) == 5 and capped["context_tokens"] <= 2000
    assert capped["prompt_tokens"] <= MemoryConfig().prompt_budget


def test_chat_and_the_direct_recall_take_the_same_path(store, tokenizer, embedder):
    fill(store, embedder)
    mem = memory(store, tokenizer, embedder)
    message = "What did Melanie paint?"
    direct = mem.recall_only("t", "c", message)
    chat = mem.recall("t", "c", message, embedder.embed([message])[0]).summary()  # as the ensemble calls it
    assert [t["turn"] for t in chat["recalled"]] == [t["turn"] for t in direct["recalled"]]
    assert chat["context_tokens"] == direct["context_tokens"]
    assert direct["config"]["top_k"] == MemoryConfig().top_k and direct["config"]["store"] == "qdrant-edge"


def test_reference_policies(store, tokenizer, embedder):
    turns = fill(store, embedder)
    mem = memory(store, tokenizer, embedder, context_budget=120)
    recency = mem.recall_only("t", "c", "What did Melanie paint?", policy="recency")
    assert recency["recalled"] == [] and recency["recent"][-1]["turn"] == len(turns)
    assert recency["context_tokens"] <= 120
    dense = mem.recall_only("t", "c", "What did Melanie paint?", policy="dense")
    assert dense["context_tokens"] <= 120 and dense["searched"] == "What did Melanie paint?"
    full = mem.recall_only("t", "c", "What did Melanie paint?", policy="full")
    assert len(full["recalled"]) == len(turns) and full["context_tokens"] > 120
    none = mem.recall_only("t", "c", "What did Melanie paint?", policy="none")
    assert none["recalled"] == [] and none["recent"] == [] and none["context_tokens"] == 0
    # window: the latest turns up to the whole prompt budget, beyond the context budget
    window = memory(store, tokenizer, embedder, context_budget=120, prompt_budget=300).recall_only(
        "t", "c", "What did Melanie paint?", policy="window")
    assert window["recalled"] == [] and window["recent"][-1]["turn"] == len(turns)
    assert [t["turn"] for t in window["recent"]] == list(range(len(turns) - len(window["recent"]) + 1, len(turns) + 1))
    assert 120 < window["context_tokens"] and window["prompt_tokens"] <= 300
    with pytest.raises(BadRequest, match="'policy' must be one of"):
        mem.recall_only("t", "c", "What did Melanie paint?", policy="oracle")


def test_nothing_crosses_conversations(store, tokenizer, embedder):
    fill(store, embedder)
    fill(store, embedder, [("Ana", "My locker code is 4471.", DAY1)], conversation="other")
    result = memory(store, tokenizer, embedder).recall_only("t", "c", "What is the locker code?")
    assert all("4471" not in t["text"] for t in result["recalled"] + result["recent"])
