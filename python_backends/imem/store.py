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
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import qdrant_edge as edge
from qdrant_client import QdrantClient, models

from imem.config import MemoryConfig
from imem.turn import ScoredTurn, Turn

DENSE, SPARSE = "dense", "sparse"
# Qdrant's default RRF constant. Spelled out for Edge, which requires it; the server store relies on the
# default because a parametrised RRF query needs Qdrant >= 1.16 and docker/compose.yaml runs 1.15.
RRF_K = 2
EXPORT_PAGE = 1000


@functools.cache
def bm25() -> edge.Bm25:
    """One BM25 encoder for both stores, so that they hold the same sparse vectors."""
    # Turns are short: an average length near a chat message keeps BM25's length normalisation sensible.
    return edge.Bm25(edge.Bm25Config(language="english", avg_len=24.0))


def _by_turn(payloads: Iterable[dict]) -> list[Turn]:
    return sorted((Turn.from_payload(p) for p in payloads), key=lambda t: t.turn)


def _vectors(dense: np.ndarray | None, sparse) -> dict:
    """A point's named vectors; without "dense" when its dense vector is still to come (set_vector)."""
    return {SPARSE: sparse} if dense is None else {DENSE: dense.tolist(), SPARSE: sparse}


class TurnStore(ABC):
    """Turns of conversations; tenant and conversation_id scope every call."""

    dim: int

    @abstractmethod
    def append(self, turns: Sequence[Turn], dense: np.ndarray | Sequence[np.ndarray | None]) -> None:
        """Upserts turns by point id (a retry overwrites); durable when it returns. A None row stores its
        turn without a dense vector (searchable by BM25 and order, not by similarity) until set_vector()."""

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
    def delete(self, tenant: str, conversation_id: str) -> int:
        """Removes the conversation; returns how many turns it had."""

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
        if any(v is None for v in dense):  # some turns stored without a dense vector (see append)
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
    return EdgeTurnStore(Path(config.data_dir) / "edge-shard", dim)


# ---- Qdrant Edge (embedded) ---------------------------------------------------------------------------
class EdgeTurnStore(TurnStore):
    def __init__(self, path: str | Path, dim: int = 384):
        self.path, self.dim = Path(path), dim
        config = edge.EdgeConfig(
            vectors={DENSE: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)},
            sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
        )
        try:
            # load() with a config also checks that the folder holds vectors of this size.
            if (self.path / "edge_config.json").exists():
                self.shard = edge.EdgeShard.load(str(self.path), config)
            else:
                self.shard = edge.EdgeShard.create(str(self.path), config)
        except Exception as error:
            if "WouldBlock" in str(error):  # the WAL's file lock: another EdgeShard has the folder open
                raise RuntimeError(f"the memory store folder {self.path} is already open in another process "
                                   f"(only one process may own it)") from error
            raise RuntimeError(f"cannot open the memory store folder {self.path}: {error}") from error
        # Checked on every open, not only on create: a crash right after create would leave them missing,
        # and order_by refuses a field without a range index.
        indexes = {"tenant": edge.PayloadSchemaType.Keyword, "conversation_id": edge.PayloadSchemaType.Keyword,
                   "turn": edge.IntegerIndexParams(lookup=True, range=True)}
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

    def append(self, turns, dense):
        if not turns:
            return
        dense = self._checked(turns, dense)
        points = [edge.Point(t.point_id, _vectors(v, bm25().embed_document(t.text)), t.payload())
                  for t, v in zip(turns, dense)]
        self.shard.update(edge.UpdateOperation.upsert_points(points))  # returns once the operation is in the WAL

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

    def delete(self, tenant, conversation_id):
        scope = self._scope(tenant, conversation_id)
        count = self.shard.count(edge.CountRequest(filter=scope, exact=True))
        if count:
            self.shard.update(edge.UpdateOperation.delete_points_by_filter(scope))
        return count

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
        for field in ("tenant", "conversation_id"):
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

    def append(self, turns, dense):
        if not turns:
            return
        dense = self._checked(turns, dense)
        points = [models.PointStruct(id=t.point_id, payload=t.payload(),
                                     vector=_vectors(v, self._sparse(bm25().embed_document(t.text))))
                  for t, v in zip(turns, dense)]
        self.client.upsert(self.collection, points, wait=True)

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

    def delete(self, tenant, conversation_id):
        scope = self._scope(tenant, conversation_id)
        count = self.client.count(self.collection, count_filter=scope, exact=True).count
        if count:
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=scope), wait=True)
        return count

    def close(self):
        self.client.close()
