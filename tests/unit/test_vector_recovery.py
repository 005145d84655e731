"""Turns stored without a dense vector (by an earlier version, which embedded replies later): the store's
side (add without a vector, set_vector, missing_vectors) on both stores, and VectorRecovery at start."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import imem
from imem.recovery import VectorRecovery
from imem.store import EdgeTurnStore
from imem.store.server import ServerTurnStore
from imem.turn import Turn

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

DIM = 384
CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(imem.__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def embed(embedder):
    return embedder.embed


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path, local_qdrant):
    s = EdgeTurnStore(tmp_path / "edge", DIM) if request.param == "edge" else \
        ServerTurnStore(local_qdrant(":memory:"), "turns", DIM)
    yield s
    s.close()


def exchange(conversation="c", reply="The cat is called Biscuit."):
    return [Turn("t", conversation, 0, "user", "What is my cat called?"),
            Turn("t", conversation, 0, "assistant", reply)]


def add_exchange(store, embed, conversation="c", reply="The cat is called Biscuit."):
    """Stores a question with its vector and a reply without one; returns both as stored."""
    return store.add(exchange(conversation, reply), [embed(["What is my cat called?"])[0], None])


def test_a_turn_stored_without_its_vector_is_kept_but_not_yet_similar(store, embed):
    user, reply = add_exchange(store, embed)
    assert [t.text for t in store.export("t", "c")] == [user.text, reply.text]
    assert [t.turn for t in store.latest("t", "c", 5)] == [1, 2]
    assert store.missing_vectors(10) == [reply]
    query = embed([reply.text])[0]
    assert [h.turn.turn for h in store.similar("t", "c", query, 5, threshold=-1)] == [1]

    assert store.set_vector(reply, embed([reply.text])[0])
    assert store.missing_vectors(10) == []
    hits = store.similar("t", "c", query, 5, threshold=-1)
    assert hits[0].turn == reply and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_set_vector_never_lands_on_a_turn_whose_text_changed_or_that_is_gone(store, embed):
    user, reply = add_exchange(store, embed)
    stale = Turn("t", "c", 2, "assistant", "an older text for the same turn")
    store.set_vector(stale, embed([stale.text])[0])
    assert store.missing_vectors(10) == [reply]  # untouched: the stored text is not the one embedded
    store.delete("t", "c")
    assert store.set_vector(reply, embed([reply.text])[0]) is False
    assert store.missing_vectors(10) == []


def test_add_checks_vector_rows_even_with_missing_ones(store):
    with pytest.raises(ValueError):
        store.add(exchange(), [np.zeros(DIM + 1, dtype=np.float32), None])
    with pytest.raises(ValueError):
        store.add(exchange(), [None])


def test_recovery_embeds_what_a_previous_process_left_without_a_vector(store, embed):
    for i in range(3):
        add_exchange(store, embed, conversation=f"c{i}")
    assert len(store.missing_vectors(10)) == 3
    recovery = VectorRecovery(store, embed, log=lambda m: None, batch_size=2)
    assert recovery.wait(10) and store.missing_vectors(10) == [] and recovery.recovered == 3


def test_recovery_retries_until_the_embedder_answers(store, embed):
    """On start the embedder may not answer yet (Triton refuses calls until the models are loaded)."""
    for i in range(3):
        add_exchange(store, embed, conversation=f"c{i}")
    calls = []

    def late(texts):
        calls.append(len(texts))
        if len(calls) <= 2:
            raise RuntimeError("BLS is only supported during the 'execute' function.")
        return embed(texts)

    messages = []
    recovery = VectorRecovery(store, late, log=messages.append, retry_seconds=0.05)
    assert recovery.wait(10) and store.missing_vectors(10) == [] and len(calls) == 3
    assert any("retrying" in m for m in messages)


def test_close_gives_up_in_time_and_leaves_the_rest_for_the_next_start(store, embed):
    blocked = threading.Event()

    def stuck(texts):
        blocked.wait(5)
        raise RuntimeError("embedder gone")

    user, reply = add_exchange(store, embed)
    recovery = VectorRecovery(store, stuck, log=lambda m: None, retry_seconds=0.05)
    assert recovery.close(timeout=0.2) is False
    blocked.set()
    assert recovery.wait(10)
    assert store.missing_vectors(10) == [reply]


def test_a_reply_stored_without_its_vector_survives_sigkill_and_is_recovered(tmp_path, embed):
    child = textwrap.dedent(f"""
        import numpy as np
        from imem.store import EdgeTurnStore
        from imem.turn import Turn
        store = EdgeTurnStore({str(tmp_path / 'edge')!r}, {DIM})
        v = np.ones({DIM}, dtype=np.float32) / np.sqrt({DIM})
        store.add([Turn("t", "c", 0, "user", "hi"), Turn("t", "c", 0, "assistant", "hello there")], [v, None])
        print("acknowledged", flush=True)
        import time; time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
    assert process.stdout.readline().strip() == "acknowledged"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    store = EdgeTurnStore(tmp_path / "edge", DIM)
    assert [t.text for t in store.export("t", "c")] == ["hi", "hello there"]
    assert [t.turn for t in store.missing_vectors(10)] == [2]
    assert VectorRecovery(store, embed, log=lambda m: None).wait(10) and store.missing_vectors(10) == []
    store.close()
