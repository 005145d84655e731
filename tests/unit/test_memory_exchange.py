"""What memory stores for a chat exchange (imem/memory.py), on a real Qdrant Edge store with the real
embedder and tokenizer: recall writes nothing, the user turn is stored when the answer begins, the reply
when it is whole (with its message's vector), an interrupted exchange leaves its user turn marked
unanswered, exchanges that overlap in one conversation keep unique, contiguous numbers, and a delete wins
over an exchange or an ingest that began before it."""

import numpy as np
import pytest

from imem.config import MemoryConfig
from imem.errors import NotFound
from imem.handle import decode as decode_handle
from imem.handle import exchange_of
from imem.memory import Memory
from imem.store import EdgeTurnStore


@pytest.fixture
def memory(tmp_path, tokenizer, embedder):
    store = EdgeTurnStore(tmp_path / "edge")
    yield Memory(MemoryConfig(), store, tokenizer, embedder.embed)
    store.close()


def begin(memory, embedder, message, conversation="c"):
    """What recall hands the chat model: the exchange's handle, as its commits send it back."""
    raw = memory.exchange_handle(memory.recall("t", conversation, message, None))
    assert exchange_of(raw) == decode_handle(raw)["exchange"]
    handle = decode_handle(raw)
    np.testing.assert_allclose(handle["vector"], embedder.embed([message])[0], atol=1e-6)
    return handle


def exported(memory, conversation="c"):
    return memory.export("t", conversation)["turns"]


def test_recall_stores_nothing_and_a_whole_exchange_stores_both_turns_linked(memory, embedder):
    handle = begin(memory, embedder, "My locker code is 4417.")
    assert memory.store.last_turn("t", "c") == 0  # a request refused after recall leaves no trace
    user = memory.store_message(handle)
    user_again, reply, written = memory.store_reply(handle, "Noted: 4417.", "stop", 5)
    assert (user.turn, reply.turn, written) == (1, 2, 1) and user_again == user
    # Found by similarity through the message it answers: it has the message's vector.
    assert {s.turn.turn for s in memory.store.similar("t", "c", handle["vector"], 2, threshold=0.99)} == {1, 2}
    turns = exported(memory)
    assert [(t["turn"], t["role"], t["text"]) for t in turns] == [(1, "user", "My locker code is 4417."),
                                                                   (2, "assistant", "Noted: 4417.")]
    assert turns[0]["answered"] is True and turns[1]["reply_to"] == 1
    assert turns[1]["metadata"] == {"finish_reason": "stop", "completion_tokens": 5}


def test_a_reply_in_one_response_stores_its_message_first(memory, embedder):
    user, reply, written = memory.store_reply(begin(memory, embedder, "Hello there"), "Hi!", "stop", 2)
    assert (user.turn, user.text, reply.turn, reply.reply_to, written) == (1, "Hello there", 2, 1, 2)


def test_an_interrupted_exchange_keeps_its_message_marked_unanswered(memory, embedder):
    memory.store_message(begin(memory, embedder, "Tell me a very long story."))  # then the client went away
    memory.store_reply(begin(memory, embedder, "Never mind. What is 2 + 2?"), "4", "stop", 1)
    turns = exported(memory)
    assert [(t["turn"], t["role"], t.get("answered"), t.get("reply_to")) for t in turns] == [
        (1, "user", False, None), (2, "user", True, None), (3, "assistant", None, 2)]
    # The unanswered message is remembered: the next recall offers it as a recent turn.
    recent = memory.recall_only("t", "c", "What did I ask for?")["recent"]
    assert "Tell me a very long story." in [t["text"] for t in recent]


def test_overlapping_exchanges_in_one_conversation_keep_unique_contiguous_numbers(memory, embedder):
    first, second = begin(memory, embedder, "First question?"), begin(memory, embedder, "Second question?")
    memory.store_message(first)
    memory.store_message(second)
    _, second_reply, _ = memory.store_reply(second, "Second answer.", "stop", 2)
    _, first_reply, _ = memory.store_reply(first, "First answer.", "length", 2)
    turns = exported(memory)
    assert [t["turn"] for t in turns] == [1, 2, 3, 4]
    assert [(t["text"], t.get("reply_to")) for t in turns] == [
        ("First question?", None), ("Second question?", None), ("Second answer.", 2), ("First answer.", 1)]
    assert (first_reply.turn, second_reply.turn) == (4, 3)


def test_ingest_continues_the_numbering_after_chat_turns(memory, embedder):
    memory.store_reply(begin(memory, embedder, "Hi"), "Hello!", "stop", 2)
    result = memory.ingest("t", "c", '{"role": "user", "text": "old line one"}\n{"role": "assistant", "text": "two"}')
    assert (result["first_turn"], result["last_turn"], result["ingested"]) == (3, 4, 2)
    assert [t["turn"] for t in exported(memory)] == [1, 2, 3, 4]


def test_a_delete_wins_over_an_exchange_that_recalled_before_it(memory, embedder):
    memory.store_reply(begin(memory, embedder, "Hi"), "Hello!", "stop", 2)
    before = begin(memory, embedder, "My locker code is 4417.")  # recalled, not yet stored
    begun = begin(memory, embedder, "Tell me a story.")
    memory.store_message(begun)  # stored, its reply still generating
    assert memory.delete("t", "c")["deleted"] == 3
    with pytest.raises(NotFound, match="was deleted while this request was in flight"):
        memory.store_message(before)
    with pytest.raises(NotFound, match="was deleted while this request was in flight"):
        memory.store_reply(begun, "Once upon a time.", "stop", 5)
    assert memory.store.last_turn("t", "c") == 0  # nothing came back
    # A conversation deleted can start again: an exchange that recalls after the delete is stored.
    user, reply, _ = memory.store_reply(begin(memory, embedder, "Hello again"), "Hi!", "stop", 2)
    assert (user.turn, reply.turn) == (1, 2)


def test_a_delete_wins_over_an_ingest_that_began_before_it(memory, embedder, monkeypatch):
    memory.ingest("t", "c", '{"role": "user", "text": "first"}')
    add = memory.store.add

    def add_then_delete(turns, dense):  # the delete lands while the ingest writes
        stored = add(turns, dense)
        monkeypatch.setattr(memory.store, "add", add)
        memory.delete("t", "c")
        return stored

    monkeypatch.setattr(memory.store, "add", add_then_delete)
    with pytest.raises(NotFound):
        memory.ingest("t", "c", '{"role": "user", "text": "second"}')
    assert memory.store.last_turn("t", "c") == 0
