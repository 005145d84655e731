"""qdrant-client against a Qdrant server or cluster: the store several Triton replicas can share. The tests
run it on qdrant-client's local mode."""

from __future__ import annotations

from typing import overload

from qdrant_client import QdrantClient, models

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
    TurnStore,
    Where,
    named_dense,
)

MODES = {"insert": models.UpdateMode.INSERT_ONLY, "update": models.UpdateMode.UPDATE_ONLY, "upsert": None}


def _condition(condition):
    if isinstance(condition, Match):
        return models.FieldCondition(key=condition.key, match=models.MatchValue(value=condition.value))
    if isinstance(condition, MatchAny):
        return models.FieldCondition(key=condition.key, match=models.MatchAny(any=list(condition.values)))
    if isinstance(condition, AtLeast):
        return models.FieldCondition(key=condition.key, range=models.Range(gte=condition.value))
    if isinstance(condition, HasVector):
        return models.HasVectorCondition(has_vector=condition.name)
    raise TypeError(f"no qdrant-client condition for {condition!r}")


@overload
def _filter(where: Where) -> models.Filter: ...
@overload
def _filter(where: None) -> None: ...
def _filter(where: Where | None) -> models.Filter | None:
    if where is None:
        return None
    return models.Filter(must=[_condition(c) for c in where.must] or None,
                         must_not=[_condition(c) for c in where.must_not] or None)


def _sparse(vector) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


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
        vectors = client.get_collection(collection).config.params.vectors
        if not isinstance(vectors, dict) or DENSE not in vectors:
            raise RuntimeError(f"collection {collection!r} has no named vector {DENSE!r}")
        size = vectors[DENSE].size
        if size != dim:
            raise RuntimeError(f"collection {collection!r} holds {size}-dimensional vectors, not {dim}")
        # Idempotent on a server, so a replica that died half-way through creating them is repaired.
        for name in KEYWORD_FIELDS:
            client.create_payload_index(collection, name, models.PayloadSchemaType.KEYWORD)
        client.create_payload_index(collection, ORDER_FIELD, models.IntegerIndexParams(
            type=models.IntegerIndexType.INTEGER, lookup=True, range=True))

    def _scroll(self, where, limit, *, order=None, offset=None, payload=True, vectors=False):
        order_by = None
        if order is not None:
            key, descending, start_from = order
            order_by = models.OrderBy(key=key, direction=models.Direction.DESC if descending else models.Direction.ASC,
                                      start_from=start_from)
        records, next_offset = self.client.scroll(self.collection, scroll_filter=_filter(where), limit=limit,
                                                  offset=offset, with_payload=payload,
                                                  with_vectors=[DENSE] if vectors else False, order_by=order_by)
        return [Record(str(r.id), r.payload or {}, named_dense(r.vector) if vectors else None)
                for r in records], next_offset

    # On a cluster, claims must be applied in one order on every replica (strong ordering: through the
    # shard's leader) and read back from all of them, or two replicas could each see their own claim win.
    def _retrieve(self, ids, *, payload=True, consistent=False):
        records = self.client.retrieve(self.collection, list(ids), with_payload=payload, with_vectors=False,
                                       consistency=models.ReadConsistencyType.ALL if consistent else None)
        return [Record(str(r.id), r.payload or {}, None) for r in records]

    def _count(self, where):
        return self.client.count(self.collection, count_filter=_filter(where), exact=True).count

    def _upsert(self, points, mode, condition=None):
        rows = [models.PointStruct(id=p.id, payload=p.payload,
                                   vector={**({} if p.dense is None else {DENSE: p.dense.tolist()}),
                                           **({} if p.sparse is None else {SPARSE: _sparse(p.sparse)})})
                for p in points]
        self.client.upsert(self.collection, rows, wait=True, update_filter=_filter(condition),
                           update_mode=MODES[mode], ordering=models.WriteOrdering.STRONG)

    def _set_dense(self, id_, vector, condition):
        self.client.update_vectors(self.collection, [models.PointVectors(id=id_, vector={DENSE: vector.tolist()})],
                                   update_filter=_filter(condition), wait=True)

    def _delete(self, where):
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=_filter(where)), wait=True)

    def _nearest(self, dense, where, limit, threshold):
        hits = self.client.query_points(self.collection, query=dense.tolist(), using=DENSE, limit=limit,
                                        query_filter=_filter(where), score_threshold=threshold,
                                        with_payload=True).points
        return [(h.payload, h.score) for h in hits]

    def _search_batch(self, requests):
        batch = self.client.query_batch_points(self.collection, [
            models.QueryRequest(query=_sparse(r.vector) if r.using == SPARSE else r.vector, using=r.using,
                                filter=_filter(r.where), limit=r.limit, score_threshold=r.threshold, with_payload=True)
            for r in requests])
        return [[(h.payload, h.score) for h in response.points] for response in batch]

    def close(self):
        self.client.close()
