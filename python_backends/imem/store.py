"""The turn store: one small interface, two Qdrant implementations.

* EdgeTurnStore: Qdrant Edge, Qdrant's engine in-process (the embedded default). One process owns the
  folder; an acknowledged upsert is in its write-ahead log and survives the process being killed. The WAL is
  memory-mapped and synced to disk by flush() (and close()), so a power loss can still take the latest turns.
* ServerTurnStore: qdrant-client against a Qdrant server or cluster, which several Triton replicas can
  share. Tests run it on qdrant-client's local mode.

Each turn is one point: a dense vector ("dense", cosine), a BM25 sparse vector ("sparse", IDF applied by
Qdrant) and the turn as payload. Every read and write is filtered on tenant and conversation_id.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import qdrant_edge as edge
from qdrant_client import QdrantClient, models

from imem.config import MemoryConfig
from imem.turn import ScoredTurn, Turn, point_id

DENSE, SPARSE = "dense", "sparse"
# Qdrant's default RRF constant. Spelled out for Edge, which requires it; the server store relies on the
# default because a parametrised RRF query needs Qdrant >= 1.16 and docker/compose.yaml runs 1.15.
RRF_K = 2
EXPORT_PAGE = 1000
# A writer that keeps losing numbers to others gives up after this many rounds (each round wins at least
# one number unless every one it tried was taken).
CLAIM_ATTEMPTS = 100


class StoreBusy(RuntimeError):
    """Too many writers at once on one conversation."""


@functools.cache
def bm25() -> edge.Bm25:
    """One BM25 encoder for both stores, so that they hold the same sparse vectors."""
    # Turns are short: an average length near a chat message keeps BM25's length normalisation sensible.
    return edge.Bm25(edge.Bm25Config(language="english", avg_len=24.0))


def _by_turn(payloads: Iterable[dict]) -> list[Turn]:
    return sorted((Turn.from_payload(p) for p in payloads), key=lambda t: t.turn)


def _newest(newest: dict, payloads: Iterable[dict]) -> None:
    for p in payloads:
        key = (p["tenant"], p["conversation_id"])
        newest[key] = max(newest.get(key, 0), int(p.get("stored_at") or 0))


def _vectors(dense: np.ndarray | None, sparse) -> dict:
    """A point's named vectors; without "dense" when its dense vector is still to come (set_vector)."""
    return {SPARSE: sparse} if dense is None else {DENSE: dense.tolist(), SPARSE: sparse}


class TurnStore(ABC):
    """Turns of conversations; tenant and conversation_id scope every call."""

    dim: int

    def add(self, turns: Sequence[Turn], dense: np.ndarray | Sequence[np.ndarray | None]) -> list[Turn]:
        """Stores `turns` (all of one conversation; their numbers are ignored) as the conversation's next
        turns, in the order given, and returns them numbered. Durable when it returns.

        A number is claimed, never overwritten: each point goes in only if its id is still free
        (insert-only), then the points are read back, and a number another writer took first is left to
        that writer. Several writers on one conversation (memory instances, Triton replicas on one Qdrant)
        thus get unique numbers, without gaps, in the order their writes landed. A None row of `dense`
        stores its turn without a dense vector (found by BM25 and order, not by similarity) until
        set_vector()."""
        if not turns:
            return []
        scopes = {(t.tenant, t.conversation_id) for t in turns}
        if len(scopes) != 1:
            raise ValueError(f"add() takes the turns of one conversation, got {len(scopes)}")
        (tenant, conversation_id), = scopes
        dense = list(self._checked(turns, dense))
        write_id = uuid.uuid4().hex
        now = int(time.time())  # whole seconds: a float would not come back bit for bit from every store
        pending = [replace(t, write_id=write_id, stored_at=now) for t in turns]
        stored: list[Turn] = []
        for _ in range(CLAIM_ATTEMPTS):
            start = self.last_turn(tenant, conversation_id) + 1
            tried = [replace(t, turn=start + i) for i, t in enumerate(pending)]
            self._insert_new(tried, dense)
            writers = self._writers(tenant, conversation_id, [t.turn for t in tried])
            won = [t.turn for t in tried if writers.get(t.turn) == write_id]
            # Ours keep their order: the first len(won) pending turns take the numbers won. Where another
            # writer took a number in the middle, the turns after it move up (rewritten in place).
            placed = [replace(t, turn=number) for t, number in zip(pending, won)]
            moved = [k for k, turn in enumerate(placed) if turn.turn != tried[k].turn]
            if moved:
                self._rewrite([placed[k] for k in moved], [dense[k] for k in moved])
            stored += placed
            pending, dense = pending[len(won):], dense[len(won):]
            if not pending:
                return stored
        raise StoreBusy(f"could not claim turn numbers in conversation {conversation_id!r} after "
                        f"{CLAIM_ATTEMPTS} attempts: too many concurrent writers")

    @abstractmethod
    def _insert_new(self, turns: Sequence[Turn], dense: Sequence[np.ndarray | None]) -> None:
        """Inserts the points whose ids are free; leaves every existing point untouched."""

    @abstractmethod
    def _writers(self, tenant: str, conversation_id: str, numbers: Sequence[int]) -> dict[int, str]:
        """turn number -> write_id of the stored point, for those of `numbers` that exist."""

    @abstractmethod
    def _rewrite(self, turns: Sequence[Turn], dense: Sequence[np.ndarray | None]) -> None:
        """Overwrites points that this write claimed (same write_id), and no other."""

    @abstractmethod
    def set_vector(self, turn: Turn, dense: np.ndarray) -> bool:
        """Sets the dense vector of a stored turn, provided it still holds `turn.text` (so a vector never
        lands on a turn it was not computed from). False when the turn is no longer stored."""

    @abstractmethod
    def missing_vectors(self, limit: int) -> list[Turn]:
        """Up to `limit` stored turns, of any conversation, that have no dense vector yet."""

    @abstractmethod
    def similar(self, tenant: str, conversation_id: str, dense: np.ndarray, limit: int,
                threshold: float = 0.0) -> list[ScoredTurn]:
        """Dense cosine top-`limit` with score >= `threshold`, best first."""

    @abstractmethod
    def hybrid(self, tenant: str, conversation_id: str, dense: np.ndarray, text: str, limit: int,
               prefetch: int = 20, threshold: float = 0.0) -> list[ScoredTurn]:
        """Dense (cosine >= `threshold`) and BM25 candidates, `prefetch` of each, fused with reciprocal rank
        fusion inside Qdrant, best first."""

    @abstractmethod
    def get(self, tenant: str, conversation_id: str, turn_numbers: Iterable[int]) -> list[Turn]:
        """Those of the given turns that exist, oldest first."""

    @abstractmethod
    def exchange(self, tenant: str, conversation_id: str, exchange: str) -> list[Turn]:
        """The stored turns of one chat exchange (its user turn, and its reply once stored)."""

    @abstractmethod
    def last_written(self) -> dict[tuple[str, str], int]:
        """(tenant, conversation_id) -> stored_at of its newest turn, for every conversation (a full scan)."""

    @abstractmethod
    def delete(self, tenant: str, conversation_id: str) -> int:
        """Removes the conversation; returns how many turns it had."""

    def check_writable(self) -> None:
        """Raises StoreUnavailable when a write would fail for want of room (checked before a chat starts)."""

    @abstractmethod
    def stats(self) -> dict:
        """{"turns_stored": every turn of every conversation, "vectors_missing": turns without a dense vector}."""

    @abstractmethod
    def close(self) -> None: ...

    def latest(self, tenant: str, conversation_id: str, n: int) -> list[Turn]:
        """The last n turns, oldest first."""
        return self._ordered(tenant, conversation_id, n, descending=True) if n > 0 else []

    def last_turn(self, tenant: str, conversation_id: str) -> int:
        """The highest turn number, 0 for an empty or unknown conversation."""
        latest = self.latest(tenant, conversation_id, 1)
        return latest[0].turn if latest else 0

    def export(self, tenant: str, conversation_id: str) -> list[Turn]:
        """Every turn, oldest first."""
        # An order_by scroll returns no next-page offset: page on the turn number, unique in a conversation.
        turns: list[Turn] = []
        while page := self._ordered(tenant, conversation_id, EXPORT_PAGE, descending=False,
                                    start_from=turns[-1].turn + 1 if turns else None):
            turns.extend(page)
        return turns

    @abstractmethod
    def _ordered(self, tenant: str, conversation_id: str, limit: int, descending: bool,
                 start_from: int | None = None) -> list[Turn]:
        """Up to `limit` turns read in turn order (order_by on the indexed `turn`), returned oldest first."""

    def _checked(self, turns: Sequence[Turn], dense) -> list[np.ndarray | None] | np.ndarray:
        if any(v is None for v in dense):  # some turns stored without a dense vector (see add)
            if len(dense) != len(turns):
                raise ValueError(f"expected {len(turns)} dense vectors (or None), got {len(dense)}")
            return [None if v is None else self._checked([t], [v])[0] for t, v in zip(turns, dense)]
        dense = np.asarray(dense, dtype=np.float32)
        if dense.shape != (len(turns), self.dim):
            raise ValueError(f"expected {len(turns)} x {self.dim} dense vectors, got {dense.shape}")
        return dense


def open_store(config: MemoryConfig, dim: int = 384) -> TurnStore:
    if config.qdrant_url:
        client = QdrantClient(url=config.qdrant_url, api_key=config.qdrant_api_key or None)
        return ServerTurnStore(client, config.collection, dim)
    data_dir = Path(config.data_dir)
    # A store is created where nothing was (a first start), never in place of one that went missing:
    # an existing data folder without its shard is an unmounted volume or a deleted store.
    create = config.create_store == "yes" or (config.create_store == "auto" and not data_dir.exists())
    return EdgeTurnStore(data_dir / "edge-shard", dim, create=create, lock_wait=config.store_lock_wait_s,
                         flush_each_write=config.flush_each_write, min_free_bytes=config.min_free_disk_mb * 2**20)


class StoreUnavailable(RuntimeError):
    """The store cannot be opened; the message says why and what to do."""


# ---- Qdrant Edge (embedded) ---------------------------------------------------------------------------
class EdgeTurnStore(TurnStore):
    def __init__(self, path: str | Path, dim: int = 384, create: bool = True, lock_wait: float = 0.0,
                 flush_each_write: bool = False, min_free_bytes: int = 0):
        """`create`: make a new shard if `path` holds none (else that is an error). `lock_wait`: seconds to
        wait for another process to let go of the folder (a previous server still exiting) before giving
        up. `flush_each_write`: sync the WAL to disk before every write returns (survives power loss).
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
        # and order_by refuses a field without a range index.
        indexes = {"tenant": edge.PayloadSchemaType.Keyword, "conversation_id": edge.PayloadSchemaType.Keyword,
                   "exchange": edge.PayloadSchemaType.Keyword, "turn": edge.IntegerIndexParams(lookup=True, range=True)}
        existing = self.shard.info().payload_schema
        for field, schema in indexes.items():
            if field not in existing:
                self.shard.update(edge.UpdateOperation.create_field_index(field, schema))

    @staticmethod
    def _scope(tenant: str, conversation_id: str, *extra) -> edge.Filter:
        return edge.Filter(must=[edge.FieldCondition(key="tenant", match=edge.MatchValue(tenant)),
                                 edge.FieldCondition(key="conversation_id", match=edge.MatchValue(conversation_id)),
                                 *extra])

    def _ordered(self, tenant, conversation_id, limit, descending, start_from=None):
        direction = edge.Direction.Desc if descending else edge.Direction.Asc
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=limit, filter=self._scope(tenant, conversation_id), with_payload=True,
            order_by=edge.OrderBy("turn", direction=direction, start_from=start_from)))
        return _by_turn(r.payload for r in records)

    @staticmethod
    def _points(turns, dense):
        return [edge.Point(t.point_id, _vectors(v, bm25().embed_document(t.text)), t.payload())
                for t, v in zip(turns, dense)]

    def _insert_new(self, turns, dense):
        # Returns once the operation is in the WAL (see flush_each_write for power loss).
        self._update(edge.UpdateOperation.upsert_points(self._points(turns, dense), update_mode=edge.UpdateMode.InsertOnly))

    def _writers(self, tenant, conversation_id, numbers):
        records = self.shard.retrieve([point_id(tenant, conversation_id, n) for n in numbers], True, False)
        return {int(r.payload["turn"]): r.payload.get("write_id", "") for r in records}

    def _rewrite(self, turns, dense):
        ours = edge.Filter(must=[edge.FieldCondition(key="write_id", match=edge.MatchValue(turns[0].write_id))])
        self._update(edge.UpdateOperation.upsert_points(self._points(turns, dense), ours, edge.UpdateMode.UpdateOnly))

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
        self.check_writable()
        self.shard.update(operation)
        if self.flush_each_write:
            self.shard.flush()

    def set_vector(self, turn, dense):
        vector = self._checked([turn], [dense])[0]
        same_text = edge.Filter(must=[edge.FieldCondition(key="text", match=edge.MatchValue(turn.text))])
        try:
            self.shard.update(edge.UpdateOperation.update_vectors(
                [edge.PointVectors(turn.point_id, {DENSE: vector.tolist()})], same_text))
        except Exception:
            if not self.shard.retrieve([turn.point_id], False, False):
                return False  # deleted meanwhile
            raise
        return True

    def missing_vectors(self, limit):
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=limit, filter=edge.Filter(must_not=[edge.HasVectorCondition(DENSE)]), with_payload=True))
        return _by_turn(r.payload for r in records)

    def similar(self, tenant, conversation_id, dense, limit, threshold=0.0):
        hits = self.shard.query(edge.QueryRequest(
            limit=limit, query=edge.Query.Nearest(np.asarray(dense, dtype=np.float32).tolist(), using=DENSE),
            filter=self._scope(tenant, conversation_id), score_threshold=threshold, with_payload=True))
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def hybrid(self, tenant, conversation_id, dense, text, limit, prefetch=20, threshold=0.0):
        scope = self._scope(tenant, conversation_id)
        dense_query = edge.Query.Nearest(np.asarray(dense, dtype=np.float32).tolist(), using=DENSE)
        prefetches = [edge.Prefetch(limit=prefetch, query=dense_query, filter=scope, score_threshold=threshold or None)]
        sparse = bm25().embed_query(text)
        if sparse.indices:  # a query of stopwords only has no sparse vector
            prefetches.append(edge.Prefetch(limit=prefetch, query=edge.Query.Nearest(sparse, using=SPARSE),
                                            filter=scope))
        hits = self.shard.query(edge.QueryRequest(limit=limit, prefetches=prefetches, query=edge.Fusion.Rrf(k=RRF_K),
                                                  filter=scope, with_payload=True))
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def get(self, tenant, conversation_id, turn_numbers):
        numbers = sorted({int(n) for n in turn_numbers})
        if not numbers:
            return []
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=len(numbers), with_payload=True,
            filter=self._scope(tenant, conversation_id, edge.FieldCondition(key="turn", match=edge.MatchAny(numbers)))))
        return _by_turn(r.payload for r in records)

    def exchange(self, tenant, conversation_id, exchange):
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=2, with_payload=True,
            filter=self._scope(tenant, conversation_id, edge.FieldCondition(key="exchange", match=edge.MatchValue(exchange)))))
        return _by_turn(r.payload for r in records)

    def delete(self, tenant, conversation_id):
        scope = self._scope(tenant, conversation_id)
        count = self.shard.count(edge.CountRequest(filter=scope, exact=True))
        if count:
            self._update(edge.UpdateOperation.delete_points_by_filter(scope))
        return count

    def last_written(self):
        newest, offset = {}, None
        while True:
            records, offset = self.shard.scroll(edge.ScrollRequest(
                offset=offset, limit=EXPORT_PAGE, with_payload=["tenant", "conversation_id", "stored_at"]))
            _newest(newest, (r.payload for r in records))
            if offset is None:
                return newest

    def stats(self):
        return {"turns_stored": self.shard.count(edge.CountRequest(exact=True)),
                "vectors_missing": self.shard.count(edge.CountRequest(
                    filter=edge.Filter(must_not=[edge.HasVectorCondition(DENSE)]), exact=True))}

    def close(self):
        self.shard.flush()
        self.shard.close()


# ---- qdrant-client (a Qdrant server) ------------------------------------------------------------------
class ServerTurnStore(TurnStore):
    def __init__(self, client: QdrantClient, collection: str = "turns", dim: int = 384):
        self.client, self.collection, self.dim = client, collection, dim
        if not client.collection_exists(collection):
            try:
                client.create_collection(
                    collection,
                    vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            except Exception:
                if not client.collection_exists(collection):  # else another replica created it first
                    raise
        size = client.get_collection(collection).config.params.vectors[DENSE].size
        if size != dim:
            raise RuntimeError(f"collection {collection!r} holds {size}-dimensional vectors, not {dim}")
        # Idempotent on a server, so a replica that died half-way through creating them is repaired.
        for field in ("tenant", "conversation_id", "exchange"):
            client.create_payload_index(collection, field, models.PayloadSchemaType.KEYWORD)
        client.create_payload_index(collection, "turn", models.IntegerIndexParams(
            type=models.IntegerIndexType.INTEGER, lookup=True, range=True))

    @staticmethod
    def _scope(tenant, conversation_id, *extra) -> models.Filter:
        return models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
                                   models.FieldCondition(key="conversation_id",
                                                         match=models.MatchValue(value=conversation_id)),
                                   *extra])

    @staticmethod
    def _sparse(vector: edge.SparseVector) -> models.SparseVector:
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))

    def _ordered(self, tenant, conversation_id, limit, descending, start_from=None):
        direction = models.Direction.DESC if descending else models.Direction.ASC
        records, _ = self.client.scroll(
            self.collection, scroll_filter=self._scope(tenant, conversation_id), limit=limit, with_payload=True,
            order_by=models.OrderBy(key="turn", direction=direction, start_from=start_from))
        return _by_turn(r.payload for r in records)

    def _points(self, turns, dense):
        return [models.PointStruct(id=t.point_id, payload=t.payload(),
                                   vector=_vectors(v, self._sparse(bm25().embed_document(t.text))))
                for t, v in zip(turns, dense)]

    # On a cluster, claims must be applied in one order on every replica (strong ordering: through the
    # shard's leader) and read back from all of them, or two replicas could each see their own claim win.
    def _insert_new(self, turns, dense):
        self.client.upsert(self.collection, self._points(turns, dense), wait=True,
                           update_mode=models.UpdateMode.INSERT_ONLY, ordering=models.WriteOrdering.STRONG)

    def _writers(self, tenant, conversation_id, numbers):
        records = self.client.retrieve(self.collection, [point_id(tenant, conversation_id, n) for n in numbers],
                                       with_payload=True, with_vectors=False,
                                       consistency=models.ReadConsistencyType.ALL)
        return {int(r.payload["turn"]): r.payload.get("write_id", "") for r in records}

    def _rewrite(self, turns, dense):
        ours = models.Filter(must=[models.FieldCondition(key="write_id",
                                                         match=models.MatchValue(value=turns[0].write_id))])
        self.client.upsert(self.collection, self._points(turns, dense), wait=True, update_filter=ours,
                           update_mode=models.UpdateMode.UPDATE_ONLY, ordering=models.WriteOrdering.STRONG)

    def set_vector(self, turn, dense):
        vector = self._checked([turn], [dense])[0]
        same_text = models.Filter(must=[models.FieldCondition(key="text", match=models.MatchValue(value=turn.text))])
        try:
            self.client.update_vectors(self.collection, [models.PointVectors(id=turn.point_id,
                                                                            vector={DENSE: vector.tolist()})],
                                       update_filter=same_text, wait=True)
        except Exception:
            if not self.client.retrieve(self.collection, [turn.point_id], with_payload=False, with_vectors=False):
                return False  # deleted meanwhile
            raise
        return True

    def missing_vectors(self, limit):
        records, _ = self.client.scroll(
            self.collection, limit=limit, with_payload=True,
            scroll_filter=models.Filter(must_not=[models.HasVectorCondition(has_vector=DENSE)]))
        return _by_turn(r.payload for r in records)

    def similar(self, tenant, conversation_id, dense, limit, threshold=0.0):
        hits = self.client.query_points(
            self.collection, query=np.asarray(dense, dtype=np.float32).tolist(), using=DENSE, limit=limit,
            query_filter=self._scope(tenant, conversation_id), score_threshold=threshold, with_payload=True).points
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def hybrid(self, tenant, conversation_id, dense, text, limit, prefetch=20, threshold=0.0):
        scope = self._scope(tenant, conversation_id)
        prefetches = [models.Prefetch(query=np.asarray(dense, dtype=np.float32).tolist(), using=DENSE,
                                      limit=prefetch, filter=scope, score_threshold=threshold or None)]
        sparse = bm25().embed_query(text)
        if sparse.indices:
            prefetches.append(models.Prefetch(query=self._sparse(sparse), using=SPARSE, limit=prefetch, filter=scope))
        hits = self.client.query_points(self.collection, prefetch=prefetches, limit=limit, with_payload=True,
                                        query=models.FusionQuery(fusion=models.Fusion.RRF), query_filter=scope).points
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def get(self, tenant, conversation_id, turn_numbers):
        numbers = sorted({int(n) for n in turn_numbers})
        if not numbers:
            return []
        records, _ = self.client.scroll(
            self.collection, limit=len(numbers), with_payload=True, scroll_filter=self._scope(
                tenant, conversation_id, models.FieldCondition(key="turn", match=models.MatchAny(any=numbers))))
        return _by_turn(r.payload for r in records)

    def exchange(self, tenant, conversation_id, exchange):
        records, _ = self.client.scroll(
            self.collection, limit=2, with_payload=True, scroll_filter=self._scope(
                tenant, conversation_id, models.FieldCondition(key="exchange", match=models.MatchValue(value=exchange))))
        return _by_turn(r.payload for r in records)

    def delete(self, tenant, conversation_id):
        scope = self._scope(tenant, conversation_id)
        count = self.client.count(self.collection, count_filter=scope, exact=True).count
        if count:
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=scope), wait=True)
        return count

    def last_written(self):
        newest, offset = {}, None
        while True:
            records, offset = self.client.scroll(self.collection, offset=offset, limit=EXPORT_PAGE,
                                                 with_payload=["tenant", "conversation_id", "stored_at"])
            _newest(newest, (r.payload for r in records))
            if offset is None:
                return newest

    def stats(self):
        missing = models.Filter(must_not=[models.HasVectorCondition(has_vector=DENSE)])
        return {"turns_stored": self.client.count(self.collection, exact=True).count,
                "vectors_missing": self.client.count(self.collection, count_filter=missing, exact=True).count}

    def close(self):
        self.client.close()
