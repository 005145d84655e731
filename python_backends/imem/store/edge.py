"""Qdrant Edge: Qdrant's engine in-process, the embedded default store.

One process owns the folder (its write-ahead log's file lock). An acknowledged write is in the WAL, a
memory-mapped file, so it survives the process being killed; the WAL is synced to disk by flush() (and
close()), so a power loss can still take the latest turns unless every write is flushed.

Opening a shard replays the WAL written since its last flush and appends what it replays to the segment
again, whether or not it was there already. So the store flushes as soon as it is open (else a process
killed before its first flush leaves the same WAL to be replayed, and appended, once more at every start:
the store then grows with the square of the crashes) and every `flush_interval_s` (what a kill leaves to
replay).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import overload

import numpy as np
import qdrant_edge as edge

from imem.store.base import (
    DENSE,
    KEYWORD_FIELDS,
    ORDER_FIELD,
    SPARSE,
    AtLeast,
    HasVector,
    Match,
    MatchAny,
    Record,
    StoreUnavailable,
    TurnStore,
    Where,
    named_dense,
)

MODES = {"insert": edge.UpdateMode.InsertOnly, "update": edge.UpdateMode.UpdateOnly, "upsert": None}


def _condition(condition):
    if isinstance(condition, Match):
        return edge.FieldCondition(key=condition.key, match=edge.MatchValue(condition.value))
    if isinstance(condition, MatchAny):
        return edge.FieldCondition(key=condition.key, match=edge.MatchAny(list(condition.values)))
    if isinstance(condition, AtLeast):
        return edge.FieldCondition(key=condition.key, range=edge.RangeFloat(gte=float(condition.value)))
    if isinstance(condition, HasVector):
        return edge.HasVectorCondition(condition.name)
    raise TypeError(f"no Qdrant Edge condition for {condition!r}")


@overload
def _filter(where: Where) -> edge.Filter: ...
@overload
def _filter(where: None) -> None: ...
def _filter(where: Where | None) -> edge.Filter | None:
    if where is None:
        return None
    return edge.Filter(must=[_condition(c) for c in where.must] or None,
                       must_not=[_condition(c) for c in where.must_not] or None)


class EdgeTurnStore(TurnStore):
    def __init__(self, path: str | Path, dim: int = 384, create: bool = True, lock_wait: float = 0.0,
                 flush_each_write: bool = False, flush_interval_s: float = 0.0, min_free_bytes: int = 0):
        """`create`: make a new shard if `path` holds none (else that is an error). `lock_wait`: seconds to
        wait for another process to let go of the folder (a previous server still exiting) before giving
        up. `flush_each_write`: sync the WAL to disk before every write returns (survives power loss).
        `flush_interval_s`: flush every so many seconds on a thread of its own (0: only on close).
        `min_free_bytes`: refuse writes (StoreUnavailable) when the disk has less room than this: Qdrant
        writes through memory-mapped files, and a write that finds the disk full kills the process (SIGBUS)
        instead of failing."""
        self.path, self.dim, self.flush_each_write = Path(path), dim, flush_each_write
        self.min_free_bytes = min_free_bytes
        config = edge.EdgeConfig(
            vectors={DENSE: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)},
            sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
        )
        exists = (self.path / "edge_config.json").exists()
        if exists or create:
            self.path.mkdir(parents=True, exist_ok=True)
            self.check_writable()
        if not exists and not create:
            raise StoreUnavailable(
                f"no memory store at {self.path}: its data folder exists but holds no store (an unmounted volume, "
                f"or a deleted store?). Refusing to start on an empty memory. To start a new store there, set "
                f"IMEM_CREATE_STORE=yes once (or point IMEM_DATA_DIR at a folder that does not exist yet).")
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                # load() with a config also checks that the folder holds vectors of this size.
                self.shard = (edge.EdgeShard.load if exists else edge.EdgeShard.create)(str(self.path), config)
                break
            except Exception as error:
                if "WouldBlock" not in str(error):
                    raise StoreUnavailable(f"cannot open the memory store at {self.path} (damaged or not a memory "
                                           f"store?): {error}") from error
                # The WAL's file lock: another process has the folder open.
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"the memory store folder {self.path} is already open in another process (only one "
                        f"process may own it; waited {lock_wait:.0f} s for it to let go)") from error
                time.sleep(0.2)
        # Checked on every open, not only on create: a crash right after create would leave them missing,
        # and an ordered scroll refuses a field without a range index.
        indexes: dict[str, edge.PayloadSchemaType | edge.PayloadSchemaParams] = {
            **{name: edge.PayloadSchemaType.Keyword for name in KEYWORD_FIELDS},
            ORDER_FIELD: edge.IntegerIndexParams(lookup=True, range=True)}
        existing = self.shard.info().payload_schema
        for name, schema in indexes.items():
            if name not in existing:
                self.shard.update(edge.UpdateOperation.create_field_index(name, schema))
        self.shard.flush()  # what the open replayed is in the segment now: never replayed again
        self._closing = threading.Event()
        self._flusher = None
        self.timed_flushes = 0
        if flush_interval_s > 0:
            self._flusher = threading.Thread(target=self._flush_every, args=(flush_interval_s,), name="store-flush",
                                             daemon=True)
            self._flusher.start()

    def _flush_every(self, seconds: float) -> None:
        while not self._closing.wait(seconds):
            try:
                self.shard.flush()
                self.timed_flushes += 1
            except Exception as error:  # a full or read-only disk: writes say so; the next flush tries again
                print(f"flushing the memory store failed: {error!r}", flush=True)

    # ---- primitives ------------------------------------------------------------------------------------
    def _scroll(self, where, limit, *, order=None, offset=None, payload=True, vectors=False):
        order_by = None
        if order is not None:
            key, descending, start_from = order
            order_by = edge.OrderBy(key, direction=edge.Direction.Desc if descending else edge.Direction.Asc,
                                    start_from=start_from)
        records, next_offset = self.shard.scroll(edge.ScrollRequest(
            limit=limit, filter=_filter(where), with_payload=payload, with_vector=vectors, offset=offset,
            order_by=order_by))
        return [Record(str(r.id), r.payload or {}, named_dense(r.vector) if vectors else None)
                for r in records], next_offset

    def _retrieve(self, ids, *, payload=True, consistent=False):
        return [Record(str(r.id), r.payload or {}, None) for r in self.shard.retrieve(list(ids), payload, False)]

    def _count(self, where):
        return self.shard.count(edge.CountRequest(filter=_filter(where), exact=True))

    def _upsert(self, points, mode, condition=None):
        rows = [edge.Point(p.id, {**({} if p.dense is None else {DENSE: p.dense.tolist()}),
                                  **({} if p.sparse is None else {SPARSE: p.sparse})}, p.payload) for p in points]
        self._update(edge.UpdateOperation.upsert_points(rows, _filter(condition), MODES[mode]))

    def _set_dense(self, id_, vector, condition):
        self.shard.update(edge.UpdateOperation.update_vectors([edge.PointVectors(id_, {DENSE: vector.tolist()})],
                                                              _filter(condition)))

    def _delete(self, where):
        self._update(edge.UpdateOperation.delete_points_by_filter(_filter(where)))

    def _nearest(self, dense, where, limit, threshold):
        hits = self.shard.query(edge.QueryRequest(
            limit=limit, query=edge.Query.Nearest(dense.tolist(), using=DENSE), filter=_filter(where),
            score_threshold=threshold, with_payload=True))
        return [(h.payload, h.score) for h in hits]

    def _search_batch(self, requests):
        batch = self.shard.query_batch(edge.QueryBatchRequest([
            edge.QueryRequest(limit=r.limit, query=edge.Query.Nearest(r.vector, using=r.using), filter=_filter(r.where),
                              score_threshold=r.threshold, with_payload=True) for r in requests]))
        return [[(h.payload, h.score) for h in hits] for hits in batch]

    def close(self):
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join()
        self.shard.flush()
        self.shard.close()

    # ---- writes go through here ------------------------------------------------------------------------
    def check_writable(self):
        if os.statvfs(self.path).f_flag & os.ST_RDONLY:
            raise StoreUnavailable(f"the disk of the memory store {self.path} is read-only; memory can still be "
                                   f"read by a server that has it open, but nothing new can be stored")
        room = shutil.disk_usage(self.path).free
        if room < self.min_free_bytes:
            raise StoreUnavailable(f"the disk of the memory store {self.path} is full: {room / 2**20:.0f} MiB free, "
                                   f"writes need at least {self.min_free_bytes / 2**20:.0f} MiB "
                                   f"(IMEM_MIN_FREE_DISK_MB); memory can still be read")

    def _update(self, operation) -> None:
        """Returns once the operation is in the WAL (and synced to disk, with flush_each_write)."""
        self.check_writable()
        self.shard.update(operation)
        if self.flush_each_write:
            self.shard.flush()


def dense_of(record: Record) -> np.ndarray | None:
    return None if record.dense is None else np.asarray(record.dense, dtype=np.float32)
