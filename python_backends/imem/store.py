"""The turn store: one small interface, two Qdrant implementations.

* EdgeTurnStore: Qdrant Edge, Qdrant's own engine in-process (the embedded default). One process owns
  the folder; an acknowledged upsert is in its write-ahead log and survives a crash.
* ServerTurnStore: qdrant-client against a Qdrant server or cluster (several Triton replicas can share
  it). Tests run it on qdrant-client's local mode.

Each turn is one point: a dense vector ("dense", cosine), a BM25 sparse vector ("sparse", IDF applied by
Qdrant) and the turn as payload. Every read and write filters on tenant and conversation_id.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import qdrant_edge as edge

from imem.config import MemoryConfig
from imem.turn import ScoredTurn, Turn

DENSE, SPARSE = "dense", "sparse"
# RRF's rank constant: small k lets a strong first hit of either retriever count for more.
RRF_K = 10
_bm25 = None


def bm25() -> edge.Bm25:
    """One BM25 encoder for both stores, so their sparse vectors are the same."""
    global _bm25
    if _bm25 is None:
        _bm25 = edge.Bm25(edge.Bm25Config(language="english", avg_len=24.0))
    return _bm25


class TurnStore(ABC):
    @abstractmethod
    def append(self, turns: Sequence[Turn], dense: np.ndarray) -> None:
        """Upserts turns by point id (a retry overwrites); durable when it returns."""

    @abstractmethod
    def similar(self, tenant: str, conversation_id: str, dense: np.ndarray, limit: int,
                threshold: float = 0.0) -> list[ScoredTurn]:
        """Dense cosine top-`limit` above `threshold`, best first."""

    @abstractmethod
    def hybrid(self, tenant: str, conversation_id: str, dense: np.ndarray, text: str, limit: int,
               prefetch: int = 20) -> list[ScoredTurn]:
        """Dense and BM25 candidates fused with reciprocal rank fusion inside Qdrant, best first."""

    @abstractmethod
    def latest(self, tenant: str, conversation_id: str, n: int) -> list[Turn]:
        """The last n turns, oldest first."""

    @abstractmethod
    def get(self, tenant: str, conversation_id: str, turn_numbers: Iterable[int]) -> list[Turn]:
        """Those of the given turns that exist, oldest first."""

    @abstractmethod
    def export(self, tenant: str, conversation_id: str) -> list[Turn]:
        """Every turn, oldest first."""

    @abstractmethod
    def delete(self, tenant: str, conversation_id: str) -> int:
        """Removes the conversation; returns how many turns it had."""

    @abstractmethod
    def close(self) -> None: ...

    def last_turn(self, tenant: str, conversation_id: str) -> int:
        latest = self.latest(tenant, conversation_id, 1)
        return latest[0].turn if latest else 0


def open_store(config: MemoryConfig, dim: int = 384) -> TurnStore:
    if config.qdrant_url:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=config.qdrant_url, api_key=config.qdrant_api_key or None)
        return ServerTurnStore(client, config.collection, dim)
    return EdgeTurnStore(Path(config.data_dir) / "edge-shard", dim)


# ---- Qdrant Edge (embedded) ---------------------------------------------------------------------------
class EdgeTurnStore(TurnStore):
    def __init__(self, path: Path, dim: int = 384):
        self.path = Path(path)
        try:
            if (self.path / "edge_config.json").exists() or any(self.path.glob("segments*")):
                self.shard = edge.EdgeShard.load(str(self.path))
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.shard = edge.EdgeShard.create(str(self.path), edge.EdgeConfig(
                    vectors={DENSE: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)},
                    sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
                ))
                for field in ("tenant", "conversation_id"):
                    self.shard.update(edge.UpdateOperation.create_field_index(field, edge.PayloadSchemaType.Keyword))
                self.shard.update(edge.UpdateOperation.create_field_index(
                    "turn", edge.IntegerIndexParams(lookup=True, range=True)))
        except Exception as error:
            raise RuntimeError(f"cannot open the memory store at {self.path} (only one process may own it): "
                               f"{error}") from error

    @staticmethod
    def _scope(tenant: str, conversation_id: str, *extra) -> edge.Filter:
        return edge.Filter(must=[
            edge.FieldCondition(key="tenant", match=edge.MatchValue(tenant)),
            edge.FieldCondition(key="conversation_id", match=edge.MatchValue(conversation_id)),
            *extra,
        ])

    def append(self, turns, dense):
        points = []
        for turn, vector in zip(turns, dense):
            sparse = bm25().embed_document(turn.text)
            points.append(edge.Point(turn.point_id, {DENSE: vector.tolist(), SPARSE: sparse}, turn.payload()))
        if points:
            self.shard.update(edge.UpdateOperation.upsert_points(points))

    def similar(self, tenant, conversation_id, dense, limit, threshold=0.0):
        hits = self.shard.query(edge.QueryRequest(
            limit=limit, query=edge.Query.Nearest(np.asarray(dense).tolist(), using=DENSE),
            filter=self._scope(tenant, conversation_id), score_threshold=threshold, with_payload=True))
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def hybrid(self, tenant, conversation_id, dense, text, limit, prefetch=20):
        scope = self._scope(tenant, conversation_id)
        prefetches = [edge.Prefetch(limit=prefetch, query=edge.Query.Nearest(np.asarray(dense).tolist(), using=DENSE),
                                    filter=scope)]
        sparse = bm25().embed_query(text)
        if len(sparse.indices):
            prefetches.append(edge.Prefetch(limit=prefetch, query=edge.Query.Nearest(sparse, using=SPARSE),
                                            filter=scope))
        hits = self.shard.query(edge.QueryRequest(limit=limit, prefetches=prefetches, query=edge.Fusion.Rrf(k=RRF_K),
                                                  filter=scope, with_payload=True))
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def latest(self, tenant, conversation_id, n):
        if n <= 0:
            return []
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=n, filter=self._scope(tenant, conversation_id), with_payload=True,
            order_by=edge.OrderBy("turn", direction=edge.Direction.Desc)))
        return sorted((Turn.from_payload(r.payload) for r in records), key=lambda t: t.turn)

    def get(self, tenant, conversation_id, turn_numbers):
        numbers = sorted(set(int(n) for n in turn_numbers))
        if not numbers:
            return []
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=len(numbers), with_payload=True,
            filter=self._scope(tenant, conversation_id, edge.FieldCondition(key="turn", match=edge.MatchAny(numbers)))))
        return sorted((Turn.from_payload(r.payload) for r in records), key=lambda t: t.turn)

    def export(self, tenant, conversation_id):
        turns, start = [], None
        while True:  # pages in turn order, resuming from the last turn number seen
            records, _ = self.shard.scroll(edge.ScrollRequest(
                limit=1000, filter=self._scope(tenant, conversation_id), with_payload=True,
                order_by=edge.OrderBy("turn", direction=edge.Direction.Asc, start_from=start)))
            page = [Turn.from_payload(r.payload) for r in records if start is None or r.payload["turn"] >= start]
            page = [t for t in page if not turns or t.turn > turns[-1].turn]
            if not page:
                return turns
            turns.extend(page)
            start = turns[-1].turn + 1

    def delete(self, tenant, conversation_id):
        count = self.shard.count(edge.CountRequest(filter=self._scope(tenant, conversation_id), exact=True))
        if count:
            self.shard.update(edge.UpdateOperation.delete_points_by_filter(self._scope(tenant, conversation_id)))
        return count

    def close(self):
        self.shard.flush()
        self.shard.close()


# ---- qdrant-client (a Qdrant server) ------------------------------------------------------------------
class ServerTurnStore(TurnStore):
    def __init__(self, client, collection: str = "turns", dim: int = 384):
        from qdrant_client import models

        self.client, self.collection, self.models = client, collection, models
        if not client.collection_exists(collection):
            client.create_collection(
                collection,
                vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            for field in ("tenant", "conversation_id"):
                client.create_payload_index(collection, field, models.PayloadSchemaType.KEYWORD)
            client.create_payload_index(collection, "turn", models.IntegerIndexParams(
                type=models.IntegerIndexType.INTEGER, lookup=True, range=True))

    def _scope(self, tenant, conversation_id, *extra):
        m = self.models
        return m.Filter(must=[m.FieldCondition(key="tenant", match=m.MatchValue(value=tenant)),
                              m.FieldCondition(key="conversation_id", match=m.MatchValue(value=conversation_id)),
                              *extra])

    def _sparse(self, vector):
        return self.models.SparseVector(indices=list(vector.indices), values=list(vector.values))

    def append(self, turns, dense):
        points = [self.models.PointStruct(
            id=turn.point_id, payload=turn.payload(),
            vector={DENSE: vector.tolist(), SPARSE: self._sparse(bm25().embed_document(turn.text))})
            for turn, vector in zip(turns, dense)]
        if points:
            self.client.upsert(self.collection, points, wait=True)

    def similar(self, tenant, conversation_id, dense, limit, threshold=0.0):
        hits = self.client.query_points(self.collection, query=np.asarray(dense).tolist(), using=DENSE, limit=limit,
                                        query_filter=self._scope(tenant, conversation_id), score_threshold=threshold,
                                        with_payload=True).points
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def hybrid(self, tenant, conversation_id, dense, text, limit, prefetch=20):
        m = self.models
        scope = self._scope(tenant, conversation_id)
        prefetches = [m.Prefetch(query=np.asarray(dense).tolist(), using=DENSE, limit=prefetch, filter=scope)]
        sparse = bm25().embed_query(text)
        if len(sparse.indices):
            prefetches.append(m.Prefetch(query=self._sparse(sparse), using=SPARSE, limit=prefetch, filter=scope))
        hits = self.client.query_points(self.collection, prefetch=prefetches, limit=limit, with_payload=True,
                                        query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)), query_filter=scope).points
        return [ScoredTurn(Turn.from_payload(h.payload), h.score) for h in hits]

    def latest(self, tenant, conversation_id, n):
        if n <= 0:
            return []
        records, _ = self.client.scroll(self.collection, scroll_filter=self._scope(tenant, conversation_id), limit=n,
                                        order_by=self.models.OrderBy(key="turn", direction=self.models.Direction.DESC),
                                        with_payload=True)
        return sorted((Turn.from_payload(r.payload) for r in records), key=lambda t: t.turn)

    def get(self, tenant, conversation_id, turn_numbers):
        numbers = sorted(set(int(n) for n in turn_numbers))
        if not numbers:
            return []
        m = self.models
        records, _ = self.client.scroll(self.collection, limit=len(numbers), with_payload=True, scroll_filter=self._scope(
            tenant, conversation_id, m.FieldCondition(key="turn", match=m.MatchAny(any=numbers))))
        return sorted((Turn.from_payload(r.payload) for r in records), key=lambda t: t.turn)

    def export(self, tenant, conversation_id):
        turns, offset = [], None
        while True:
            records, offset = self.client.scroll(self.collection, scroll_filter=self._scope(tenant, conversation_id),
                                                 limit=1000, offset=offset, with_payload=True)
            turns.extend(Turn.from_payload(r.payload) for r in records)
            if offset is None:
                return sorted(turns, key=lambda t: t.turn)

    def delete(self, tenant, conversation_id):
        scope = self._scope(tenant, conversation_id)
        count = self.client.count(self.collection, count_filter=scope, exact=True).count
        if count:
            self.client.delete(self.collection, points_selector=self.models.FilterSelector(filter=scope), wait=True)
        return count

    def close(self):
        self.client.close()
