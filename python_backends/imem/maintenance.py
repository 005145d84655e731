"""Maintenance of the memory store (`imem store ...`): backup, restore, compact and re-embed work on the
embedded store with the server stopped; prune works on either store (on a Qdrant server, while serving).

Every operation copies the shard point by point into a fresh folder. That is also what removes deleted
turns from disk: Qdrant Edge marks a deleted point in its segments and keeps the operation in its WAL, so
the text stays in the old files until they are rewritten; a copy never sees it. A Qdrant server does the
same with its own snapshots and optimizers (README "Operations").
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from imem.store import DENSE, EdgeTurnStore, StoreUnavailable, TurnStore
from imem.store.base import ANY_TURN
from imem.store.edge import dense_of
from imem.turn import Turn

SHARD = "edge-shard"
PAGE = 512


def shard_dim(shard: Path) -> int:
    """The dense vector size a shard was created with (its edge_config.json)."""
    try:
        return int(json.loads((shard / "edge_config.json").read_text())["vectors"][DENSE]["size"])
    except FileNotFoundError:
        raise StoreUnavailable(f"no memory store at {shard}") from None


def copy_shard(source: Path, target: Path, embed: Callable[[list[str]], np.ndarray] | None = None) -> int:
    """Copies every turn of `source` into a new shard at `target`; with `embed`, every turn gets a new dense
    vector from it (a change of embedding model). Returns the number of turns copied. Conversations'
    generations (imem/store/base.py) are not copied: they matter only to exchanges in flight, and the
    server is stopped."""
    if target.exists():
        raise StoreUnavailable(f"{target} already exists: refusing to write a store over it")
    old = EdgeTurnStore(source, shard_dim(source), create=False)
    new = None
    try:
        offset, copied = None, 0
        while True:
            records, offset = old._scroll(ANY_TURN, PAGE, offset=offset, vectors=embed is None)
            turns = [Turn.from_payload(r.payload) for r in records]
            dense: list[np.ndarray | None] | np.ndarray
            dim = old.dim
            if embed is not None:
                embedded = embed([t.text for t in turns]) if turns else np.zeros((0, 0), dtype=np.float32)
                dim = embedded.shape[1] if len(turns) else old.dim
                dense = embedded
            else:
                dense = [dense_of(r) for r in records]
            if new is None:
                new = EdgeTurnStore(target, dim, create=True)
            if turns:
                new._upsert(new._points(turns, dense), "insert")
                copied += len(turns)
            if offset is None:
                return copied
    finally:
        old.close()
        if new is not None:
            new.close()


def _replace(data_dir: Path, embed=None) -> int:
    """Rewrites data_dir's shard through copy_shard and swaps the copy in."""
    shard, fresh, previous = data_dir / SHARD, data_dir / f"{SHARD}.new", data_dir / f"{SHARD}.old"
    for leftover in (fresh, previous):
        if leftover.exists():
            raise StoreUnavailable(f"{leftover} is left from an interrupted maintenance run: check which folder "
                                   f"holds the store, name it {shard} and remove the other")
    copied = copy_shard(shard, fresh, embed)
    shard.rename(previous)
    fresh.rename(shard)
    shutil.rmtree(previous)
    return copied


def compact(data_dir: Path) -> int:
    return _replace(data_dir)


def reembed(data_dir: Path, embed: Callable[[list[str]], np.ndarray]) -> int:
    return _replace(data_dir, embed)


def backup(data_dir: Path, destination: Path) -> int:
    return copy_shard(data_dir / SHARD, destination / SHARD)


def restore(backup_dir: Path, data_dir: Path) -> int:
    if (data_dir / SHARD).exists():
        raise StoreUnavailable(f"{data_dir} already holds a memory store: move it away before restoring over it")
    return copy_shard(backup_dir / SHARD, data_dir / SHARD)


def prune(store: TurnStore, older_than_days: float, now: float | None = None) -> tuple[int, int]:
    """Deletes every conversation whose newest turn was stored more than `older_than_days` ago (turns stored
    before the store kept their time count as new: they are never pruned). Returns (conversations, turns)
    deleted. Their text leaves the disk of the embedded store at the next compact."""
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    conversations = turns = 0
    for (tenant, conversation_id), newest in store.last_written().items():
        if 0 < newest < cutoff:
            turns += store.delete(tenant, conversation_id)
            conversations += 1
    return conversations, turns
