"""One contract for both stores: Qdrant Edge (embedded) and qdrant-client (here on its local mode)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from qdrant_client import QdrantClient

from imem.store import EdgeTurnStore, ServerTurnStore
from imem.turn import Turn

TEXTS = [
    "I adopted a grey cat named Biscuit last spring.",
    "The quarterly report is due on Friday.",
    "My grandmother taught me to bake sourdough bread.",
    "We are planning a hiking trip to the Dolomites in July.",
    "Zephyrine Okonkwo-Lindqvist is my new project manager.",
    "I prefer tea over coffee in the mornings.",
]


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = EdgeTurnStore(tmp_path / "edge") if request.param == "edge" else ServerTurnStore(QdrantClient(":memory:"))
    yield s
    s.close()


def turns(texts, tenant="t", conversation="c", start=1):
    return [Turn(tenant, conversation, start + i, "user" if i % 2 == 0 else "assistant", text)
            for i, text in enumerate(texts)]


def fill(store, embedder, texts=TEXTS, **kw):
    items = turns(texts, **kw)
    store.append(items, embedder.embed([t.text for t in items]))
    return items


def test_latest_returns_the_last_turns_oldest_first(store, embedder):
    fill(store, embedder)
    assert [t.turn for t in store.latest("t", "c", 3)] == [4, 5, 6]
    assert store.last_turn("t", "c") == 6
    assert store.last_turn("t", "unknown") == 0 and store.latest("t", "unknown", 3) == []


def test_similar_ranks_the_closest_turn_first_within_limit_and_threshold(store, embedder):
    fill(store, embedder)
    hits = store.similar("t", "c", embedder.embed(["What is the name of my cat?"])[0], limit=2)
    assert len(hits) == 2 and hits[0].turn.text == TEXTS[0] and hits[0].score >= hits[1].score
    strict = store.similar("t", "c", embedder.embed(["What is the name of my cat?"])[0], limit=6, threshold=0.5)
    assert all(h.score >= 0.5 for h in strict) and TEXTS[0] in [h.turn.text for h in strict]


def test_hybrid_finds_a_rare_exact_name_that_dense_ranks_low(store, embedder):
    fill(store, embedder)
    query = "Lindqvist"
    hybrid = store.hybrid("t", "c", embedder.embed([query])[0], query, limit=2)
    assert hybrid[0].turn.text == TEXTS[4]


def test_tenants_and_conversations_never_see_each_other(store, embedder):
    fill(store, embedder, TEXTS[:3], tenant="acme", conversation="shared")
    fill(store, embedder, TEXTS[3:], tenant="globex", conversation="shared")
    fill(store, embedder, ["A private note in another conversation."], tenant="acme", conversation="other")
    vector = embedder.embed(["cat"])[0]
    for tenant, conversation, allowed in [("acme", "shared", TEXTS[:3]), ("globex", "shared", TEXTS[3:]),
                                          ("acme", "other", ["A private note in another conversation."])]:
        seen = [h.turn.text for h in store.similar(tenant, conversation, vector, limit=10)]
        seen += [h.turn.text for h in store.hybrid(tenant, conversation, vector, "cat note trip", limit=10)]
        seen += [t.text for t in store.latest(tenant, conversation, 10) + store.export(tenant, conversation)]
        seen += [t.text for t in store.get(tenant, conversation, range(1, 10))]
        assert set(seen) == set(allowed)


def test_delete_removes_one_conversation_only(store, embedder):
    fill(store, embedder, conversation="a")
    fill(store, embedder, conversation="b")
    assert store.delete("t", "a") == len(TEXTS)
    assert store.export("t", "a") == [] and store.similar("t", "a", embedder.embed(["cat"])[0], 5) == []
    assert len(store.export("t", "b")) == len(TEXTS)


def test_export_pages_through_long_conversations_in_order(store):
    n = 2345
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    store.append(turns([f"turn {i}" for i in range(n)]), vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    exported = store.export("t", "c")
    assert [t.turn for t in exported] == list(range(1, n + 1))
    assert [t.turn for t in store.get("t", "c", [5, 2000, n + 10])] == [5, 2000]


def test_append_is_idempotent_per_turn_number(store, embedder):
    fill(store, embedder)
    fill(store, embedder, ["I adopted a grey cat named Biscuit last spring. (edited)"])
    exported = store.export("t", "c")
    assert len(exported) == len(TEXTS) and exported[0].text.endswith("(edited)")


def test_edge_store_keeps_its_turns_across_reopen(tmp_path, embedder):
    store = EdgeTurnStore(tmp_path / "edge")
    fill(store, embedder)
    store.close()
    reopened = EdgeTurnStore(tmp_path / "edge")
    assert [t.text for t in reopened.export("t", "c")] == TEXTS
    reopened.close()


def test_edge_store_loses_no_acknowledged_turn_on_sigkill(tmp_path):
    """A child appends 300 turns one by one, reports each, then is SIGKILLed without flush or close."""
    child = textwrap.dedent(f"""
        import numpy as np, sys
        from imem.store import EdgeTurnStore
        from imem.turn import Turn
        store = EdgeTurnStore({str(tmp_path / 'edge')!r})
        for i in range(1, 301):
            v = np.zeros((1, 384), dtype=np.float32); v[0, i % 384] = 1
            store.append([Turn("t", "c", i, "user", f"turn {{i}}")], v)
            print(i, flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    acknowledged = 0
    for line in process.stdout:
        acknowledged = int(line)
        if acknowledged == 300:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    store = EdgeTurnStore(tmp_path / "edge")
    assert [t.turn for t in store.export("t", "c")] == list(range(1, acknowledged + 1))
    store.close()


def test_a_second_process_cannot_open_an_owned_edge_folder(tmp_path):
    store = EdgeTurnStore(tmp_path / "edge")
    code = f"from imem.store import EdgeTurnStore; EdgeTurnStore({str(tmp_path / 'edge')!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "only one process may own it" in result.stderr
    store.close()
