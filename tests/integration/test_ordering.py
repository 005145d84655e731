"""Many writers at once: turn numbers stay unique and contiguous, every acknowledged turn is stored once
with its own text and reply link, and nothing crosses conversations or tenants, whatever the interleaving.
"""

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imem_client.wire import Code, ServiceError


def chat_many(service, targets: list[tuple[str, str]]) -> list:
    """One streamed chat per (tenant, conversation), all at once, each on its own client."""

    def one(index_target):
        index, (tenant, conversation) = index_target
        client = service.client("grpc" if index % 2 else "http")
        try:
            message = f"[{tenant}/{conversation}] message {index}"
            return message, client.chat(conversation, message, tenant=tenant, sampling={"max_tokens": 6})
        finally:
            client.close()

    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(one, enumerate(targets)))


def assert_consistent(turns: list[dict], tag: str) -> None:
    assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1)), "numbers are not exactly 1..N"
    for t in turns:
        if t["role"] == "user":
            assert t["text"].startswith(tag), f"a turn of another conversation: {t['text']!r}"


def test_32_concurrent_streams_into_one_conversation(service, client):
    conversation = f"crowded-{uuid.uuid4().hex[:8]}"
    results = chat_many(service, [("default", conversation)] * 32)
    turns = client.export(conversation)["turns"]
    assert len(turns) == 64
    assert_consistent(turns, f"[default/{conversation}]")
    by_number = {t["turn"]: t for t in turns}
    for message, reply in results:
        assert by_number[reply.turn]["text"] == message and by_number[reply.turn]["answered"]
        assert by_number[reply.reply_turn]["text"] == reply.text
        assert by_number[reply.reply_turn]["reply_to"] == reply.turn
    assert len({t["text"] for t in turns if t["role"] == "user"}) == 32


def test_32_concurrent_streams_into_many_conversations_and_tenants(service, client):
    run = uuid.uuid4().hex[:8]
    targets = [(tenant, f"many-{run}-{i}") for i in range(16) for tenant in ("acme", "globex")]
    results = dict(zip(targets, chat_many(service, targets), strict=True))
    for (tenant, conversation), (message, reply) in results.items():
        turns = client.export(conversation, tenant=tenant)["turns"]
        assert [(t["turn"], t["text"]) for t in turns] == [(1, message), (2, reply.text)]
        recalled = client.recall(conversation, "message", tenant=tenant)
        assert {t["text"] for t in recalled["recalled"] + recalled["recent"]} <= {message, reply.text}


# ---- a property over random interleavings ---------------------------------------------------------------
SCOPES = [("acme", "p-1"), ("acme", "p-2"), ("globex", "p-1")]  # one conversation id under two tenants
operation = st.tuples(st.sampled_from(["chat", "chat", "chat", "ingest", "export", "delete"]),
                      st.integers(0, len(SCOPES) - 1), st.integers(1, 3))


@settings(max_examples=int(os.environ.get("IMEM_PROPERTY_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(programs=st.lists(st.lists(operation, min_size=1, max_size=6), min_size=2, max_size=4))
def test_random_interleavings_of_chat_ingest_delete_and_export_keep_memory_consistent(service, programs):
    """Each list is one client's program; the clients run at once. In every export taken meanwhile and at
    the end, each conversation's numbers are exactly 1..N and hold only its own turns, none twice. A write
    that began after every delete of its conversation had finished is there; one acknowledged before a
    delete began is gone. A delete wins over a write in flight: the write is refused (NOT_FOUND, naming the
    deletion), only while a delete of its conversation ran, and nothing of it is stored."""
    run = uuid.uuid4().hex[:8]
    conversations = [(tenant, f"{conversation}-{run}") for tenant, conversation in SCOPES]
    lock = threading.Lock()
    clock = iter(range(10**9))
    writes, deletes, problems = [], [], []  # writes: (scope, texts, start, ack); deletes: (scope, start, done)
    refused = []  # writes a delete won over: (scope, texts, start, end)

    def now():
        with lock:
            return next(clock)

    def run_program(index, program):
        client = service.client("grpc")
        try:
            for step, (kind, which, size) in enumerate(program):
                scope = conversations[which]
                tenant, conversation = scope
                tag = f"[{tenant}/{conversation}]"
                started = now()
                if kind in ("chat", "ingest"):
                    texts = [f"{tag} c{index}.{step}"] if kind == "chat" else \
                        [f"{tag} i{index}.{step}.{k}" for k in range(size)]
                    try:
                        if kind == "chat":
                            client.chat(conversation, texts[0], tenant=tenant, sampling={"max_tokens": size})
                        else:
                            client.ingest(conversation, [{"role": "user", "text": t} for t in texts], tenant=tenant)
                        writes.append((scope, texts, started, now()))
                    except ServiceError as error:  # a delete of the conversation won over this write
                        assert error.code == Code.NOT_FOUND and "was deleted while" in str(error), error
                        refused.append((scope, texts, started, now()))
                elif kind == "delete":
                    try:
                        client.delete(conversation, tenant=tenant)
                    except ServiceError as error:  # nothing stored: an unknown conversation is named
                        assert error.code == Code.NOT_FOUND and "unknown conversation" in str(error), error
                    deletes.append((scope, started, now()))
                else:
                    try:
                        assert_consistent(client.export(conversation, tenant=tenant)["turns"], tag)
                    except ServiceError as error:
                        assert error.code == Code.NOT_FOUND and "unknown conversation" in str(error), error
                    except AssertionError as error:
                        problems.append(f"export of {tag} during the run: {error}")
        finally:
            client.close()

    with ThreadPoolExecutor(len(programs)) as pool:
        for future in [pool.submit(run_program, i, p) for i, p in enumerate(programs)]:
            future.result()
    assert problems == []
    client = service.client("grpc")
    for scope in conversations:
        tenant, conversation = scope
        try:
            turns = client.export(conversation, tenant=tenant)["turns"]
        except ServiceError as error:  # every turn deleted: the conversation is unknown
            assert error.code == Code.NOT_FOUND and "unknown conversation" in str(error), error
            turns = []
        assert_consistent(turns, f"[{tenant}/{conversation}]")
        stored = [t["text"] for t in turns if t["role"] == "user"]
        assert len(stored) == len(set(stored)), "a turn stored twice"
        mine = [d for d in deletes if d[0] == scope]
        for _, texts, started, acknowledged in (w for w in writes if w[0] == scope):
            if all(done < started for _, _, done in mine):
                assert set(texts) <= set(stored), f"{texts} began after every delete and is missing"
            if any(begun > acknowledged for _, begun, _ in mine):
                assert not set(texts) & set(stored), f"{texts} was acknowledged before a delete and survived it"
        for _, texts, started, ended in (r for r in refused if r[0] == scope):
            assert any(begun < ended and done > started for _, begun, done in mine), \
                f"{texts} was refused as deleted while no delete of its conversation ran"
            assert not set(texts) & set(stored), f"{texts} was refused but stored"
    client.close()
