"""The memory model called directly: ingest existing history, recall without generating, export, delete."""

import pytest

from imem_client.client import ServiceError

HISTORY = [
    {"speaker": "Caroline", "text": "I went to an LGBTQ support group yesterday.", "timestamp": "8 May 2023"},
    {"speaker": "Melanie", "text": "That sounds powerful. How did it go?", "timestamp": "8 May 2023"},
    {"speaker": "Caroline", "text": "Great! I am also researching adoption agencies.", "timestamp": "8 May 2023"},
    {"speaker": "Melanie", "text": "I painted a sunrise over the lake last week.", "timestamp": "25 May 2023"},
]


def test_ingested_history_is_recalled_exported_and_deleted(client):
    result = client.ingest("ingest-1", HISTORY)
    assert result["ingested"] == 4 and result["first_turn"] == 1 and result["last_turn"] == 4
    recall = client.recall("ingest-1", "Which agencies is Caroline researching?")
    context = {t["turn"]: t for t in recall["recalled"] + recall["recent"]}
    assert 3 in context and context[3]["role"] == "Caroline" and context[3]["timestamp"] == "8 May 2023"
    assert recall["prompt_tokens"] > 0
    exported = client.export("ingest-1")["turns"]
    assert [(t["role"], t["text"]) for t in exported] == [(h["speaker"], h["text"]) for h in HISTORY]
    assert client.delete("ingest-1")["deleted"] == 4
    with pytest.raises(ServiceError, match="unknown conversation"):
        client.recall("ingest-1", "Which agencies is Caroline researching?")


def test_chat_continues_an_ingested_conversation(client):
    client.ingest("ingest-2", HISTORY)
    reply = client.chat("ingest-2", "What did Melanie paint?", sampling={"max_tokens": 4})
    assert reply.turn == 5
    turns = client.export("ingest-2")["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3, 4, 5, 6]
    assert turns[4]["role"] == "user" and turns[4]["text"] == "What did Melanie paint?"
    assert turns[5]["role"] == "assistant" and turns[5]["text"] == reply.text
