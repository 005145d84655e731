"""Conversations and tenants never see each other's turns."""

import pytest

from imem_client.client import ServiceError


def test_two_conversations_do_not_share_memory(client):
    client.chat("iso-a", "The secret password for the vault is pineapple-47.", sampling={"max_tokens": 4})
    client.chat("iso-b", "I like to watch old films on Sunday.", sampling={"max_tokens": 4})
    recall_b = client.recall("iso-b", "What is the secret password for the vault?")
    texts = [t["text"] for t in recall_b["recalled"] + recall_b["recent"]]
    assert texts and not any("pineapple" in t for t in texts)
    recall_a = client.recall("iso-a", "What is the secret password for the vault?")
    assert any("pineapple-47" in t["text"] for t in recall_a["recalled"] + recall_a["recent"])


def test_two_tenants_with_the_same_conversation_id_do_not_share_memory(client):
    client.chat("shared-id", "My favourite colour is ultramarine.", tenant="acme", sampling={"max_tokens": 4})
    client.chat("shared-id", "I collect antique clocks.", tenant="globex", sampling={"max_tokens": 4})
    acme = client.export("shared-id", tenant="acme")["turns"]
    globex = client.export("shared-id", tenant="globex")["turns"]
    assert [t["text"] for t in acme if t["role"] == "user"] == ["My favourite colour is ultramarine."]
    assert [t["text"] for t in globex if t["role"] == "user"] == ["I collect antique clocks."]
    reply = client.chat("shared-id", "What is my favourite colour?", tenant="globex", sampling={"max_tokens": 4})
    assert all("ultramarine" not in r["text"] for r in reply.recalled)
    with pytest.raises(ServiceError, match="unknown conversation"):
        client.export("shared-id", tenant="initech")
