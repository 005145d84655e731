"""Offline maintenance of the embedded store (imem store backup/restore/compact/reembed): every turn kept
as it was, deleted turns gone from the disk, and a store in use or in the way refused by name."""

from pathlib import Path

import pytest

from imem import maintenance
from imem.store import EdgeTurnStore, StoreUnavailable
from imem.turn import Turn

SECRET = "my bank PIN is 80417355"


def _files_containing(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.fixture
def data_dir(tmp_path, embedder):
    """A store with two conversations (one reply still without its vector) and a deleted one."""
    store = EdgeTurnStore(tmp_path / "data" / maintenance.SHARD, embedder.dim)
    for conversation in ("kept", "other"):
        texts = [f"{conversation}: my cat is called Biscuit", f"{conversation}: what a nice name"]
        store.add([Turn("t", conversation, 0, "user", texts[0], exchange=f"x-{conversation}"),
                   Turn("t", conversation, 0, "assistant", texts[1], exchange=f"x-{conversation}", reply_to=1)],
                  [embedder.embed(texts[:1])[0], None if conversation == "other" else embedder.embed(texts[1:])[0]])
    store.add([Turn("t", "gone", 0, "user", SECRET)], embedder.embed([SECRET]))
    store.delete("t", "gone")
    store.close()
    return tmp_path / "data"


def _contents(data_dir: Path, dim: int) -> dict:
    store = EdgeTurnStore(data_dir / maintenance.SHARD, dim, create=False)
    try:
        return {c: store.export("t", c) for c in ("kept", "other", "gone")} | {"missing": store.missing_vectors(10)}
    finally:
        store.close()


def test_compact_keeps_every_turn_and_leaves_deleted_text_off_the_disk(data_dir, embedder):
    before = _contents(data_dir, embedder.dim)
    assert before["gone"] == [] and _files_containing(data_dir, SECRET)  # deleted, but still in the files
    assert maintenance.compact(data_dir) == 4
    assert _contents(data_dir, embedder.dim) == before
    assert _files_containing(data_dir, SECRET) == []
    store = EdgeTurnStore(data_dir / maintenance.SHARD, embedder.dim, create=False)
    try:  # vectors travel with their turns: a reply's own text finds it at cosine 1
        query = embedder.embed(["kept: what a nice name"])[0]
        hit = store.similar("t", "kept", query, 1)[0]
        assert hit.turn.turn == 2 and hit.score == pytest.approx(1.0, abs=1e-5)
    finally:
        store.close()


def test_backup_and_restore_give_back_the_same_memory(data_dir, tmp_path, embedder):
    before = _contents(data_dir, embedder.dim)
    maintenance.backup(data_dir, tmp_path / "backup")
    with pytest.raises(StoreUnavailable, match="already holds a memory store"):
        maintenance.restore(tmp_path / "backup", data_dir)
    with pytest.raises(StoreUnavailable, match="already exists"):
        maintenance.backup(data_dir, tmp_path / "backup")
    assert maintenance.restore(tmp_path / "backup", tmp_path / "restored") == 4
    assert _contents(tmp_path / "restored", embedder.dim) == before


def test_reembed_gives_every_turn_a_vector_from_the_embedder(data_dir, embedder):
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return embedder.embed(texts)

    assert _contents(data_dir, embedder.dim)["missing"] != []
    assert maintenance.reembed(data_dir, embed) == 4 and sum(calls) == 4
    after = _contents(data_dir, embedder.dim)
    assert after["missing"] == [] and [t.text for t in after["kept"]] == ["kept: my cat is called Biscuit",
                                                                           "kept: what a nice name"]


def test_a_store_in_use_is_refused_and_left_as_it_was(data_dir, embedder):
    before = _contents(data_dir, embedder.dim)
    running = EdgeTurnStore(data_dir / maintenance.SHARD, embedder.dim, create=False)
    try:
        with pytest.raises(StoreUnavailable, match="already open in another process"):
            maintenance.compact(data_dir)
    finally:
        running.close()
    assert not (data_dir / f"{maintenance.SHARD}.new").exists()
    assert _contents(data_dir, embedder.dim) == before


def test_the_cli_names_what_it_did_or_why_it_refused(data_dir, tmp_path, capsys):
    from imem_cli.main import main

    assert main(["store", "compact", "--data-dir", str(data_dir)]) == 0
    assert capsys.readouterr().out.strip() == "compact: 4 turns"
    assert main(["store", "restore", str(tmp_path / "no-backup"), "--data-dir", str(tmp_path / "new")]) == 2
    assert f"no memory store at {tmp_path / 'no-backup'}" in capsys.readouterr().err


def test_prune_deletes_only_conversations_idle_for_longer_than_asked(tmp_path, embedder, monkeypatch, capsys):
    import time
    from types import SimpleNamespace

    import imem.store.base
    from imem_cli.main import main

    day, now = 86400, 1_800_000_000
    store = EdgeTurnStore(tmp_path / "data" / maintenance.SHARD, embedder.dim)
    # (conversation, when each of its turns was stored); 0: stored before turns kept their time
    for conversation, times in (("idle", [now - 40 * day]), ("revived", [now - 40 * day, now - day]),
                                ("recent", [now - 3 * day]), ("legacy", [0])):
        for stored_at in times:
            monkeypatch.setattr(imem.store.base, "time", SimpleNamespace(time=lambda t=stored_at: t,
                                                                      monotonic=time.monotonic, sleep=time.sleep))
            store.add([Turn("t", conversation, 0, "user", f"{conversation} said something")],
                      embedder.embed([f"{conversation} said something"]))
    monkeypatch.setattr(imem.store.base, "time", time)
    assert maintenance.prune(store, older_than_days=30, now=now) == (1, 1)
    assert store.export("t", "idle") == []
    assert [len(store.export("t", c)) for c in ("revived", "recent", "legacy")] == [2, 1, 1]
    store.close()
    assert main(["store", "prune", "--older-than-days", "30", "--data-dir", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip() == "prune: 0 conversations, 0 turns deleted"
