"""The turn store's interface, and everything both implementations share.

Each turn is one point: a dense vector ("dense", cosine), a BM25 sparse vector ("sparse", IDF applied by
Qdrant) and the turn as payload. Every read and write of turns is filtered on tenant and conversation_id.
A conversation's generation (bumped by every delete) is one more point, outside every turn filter.

The logic (claiming turn numbers, ordered reads, batched searches, deletion) is written here once, over a
few primitives that each implementation speaks in its own client's types: Qdrant Edge's (edge.py) or
qdrant-client's (server.py).
"""

from __future__ import annotations

import functools
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import qdrant_edge as edge

from imem.errors import Unavailable
from imem.turn import ScoredTurn, Turn

DENSE, SPARSE = "dense", "sparse"
EXPORT_PAGE = 1000
# A writer that keeps losing numbers to others gives up after this many rounds (each round wins at least
# one number unless every one it tried was taken).
CLAIM_ATTEMPTS = 100
# Payload indexes: the scope of every read, the exchange of a chat turn, the speaker (a search restricted to
# one speaker's turns, recall.py) and the turn number (ordered reads).
KEYWORD_FIELDS = ("tenant", "conversation_id", "exchange", "role")
ORDER_FIELD = "turn"
_GENERATION_NAMESPACE = uuid.UUID("1b7c3e9a-2f4d-4c61-8e0b-5d9a6f3c2e17")


class StoreBusy(Unavailable):
    """Too many writers at once on one conversation."""


class StoreUnavailable(Unavailable):
    """The store cannot be opened or written; the message says why and what to do."""


@functools.cache
def bm25() -> edge.Bm25:
    """One BM25 encoder for both stores, so that they hold the same sparse vectors."""
    # Turns are short: an average length near a chat message keeps BM25's length normalisation sensible.
    return edge.Bm25(edge.Bm25Config(language="english", avg_len=24.0))


# ---- the primitives' vocabulary -------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    key: str
    value: Any


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple


@dataclass(frozen=True)
class AtLeast:
    key: str
    value: int


@dataclass(frozen=True)
class HasVector:
    name: str


Condition = Match | MatchAny | AtLeast | HasVector


@dataclass(frozen=True)
class Where:
    """A filter: every `must` condition holds and no `must_not` one does."""
    must: tuple = ()
    must_not: tuple = ()


# Every stored turn has a number from 1; a conversation's generation point has none.
IS_TURN = AtLeast(ORDER_FIELD, 1)
ANY_TURN = Where(must=(IS_TURN,))


def scope(tenant: str, conversation_id: str, *extra: Condition) -> Where:
    return Where(must=(Match("tenant", tenant), Match("conversation_id", conversation_id), *extra))


class Record(NamedTuple):
    id: str
    payload: dict  # empty when not asked for
    dense: list | None  # the dense vector, when asked for and set


def named_dense(vectors: object) -> list | None:
    """The dense vector among a point's named vectors as Qdrant returns them; None when the point has none
    (stored without one, or vectors not asked for)."""
    if not vectors:
        return None
    if not isinstance(vectors, dict):
        raise TypeError(f"expected a point's named vectors, got {type(vectors).__name__}")
    dense = vectors.get(DENSE)
    if dense is not None and not isinstance(dense, list):
        raise TypeError(f"the {DENSE!r} vector is a {type(dense).__name__}, not a list")
    return dense


class Point(NamedTuple):
    id: str
    dense: np.ndarray | None  # None: stored without one until set_vector
    sparse: edge.SparseVector | None
    payload: dict


class Search(NamedTuple):
    """One ranked list of a conversation's turns: those nearest a dense vector (cosine >= `threshold`), or the
    best BM25 matches of `text`; only `role`'s turns when it is given."""
    dense: np.ndarray | None = None
    text: str = ""
    role: str = ""
    threshold: float = 0.0


class Request(NamedTuple):
    """A Search as the primitive takes it: the named vector to search, the query vector, the filter."""
    using: str
    vector: Any  # a list of floats (dense) or an edge.SparseVector
    where: Where
    limit: int
    threshold: float | None


def _by_turn(payloads: Iterable[dict]) -> list[Turn]:
    return sorted((Turn.from_payload(p) for p in payloads), key=lambda t: t.turn)


def _generation_id(tenant: str, conversation_id: str) -> str:
    return str(uuid.uuid5(_GENERATION_NAMESPACE, f"{tenant}\x1f{conversation_id}"))


class TurnStore(ABC):
    """Turns of conversations; tenant and conversation_id scope every call."""

    dim: int

    # ---- primitives: each implementation's own client calls -----------------------------------------
    @abstractmethod
    def _scroll(self, where: Where | None, limit: int, *, order: tuple[str, bool, int | None] | None = None,
                offset: Any = None, payload: bool | list[str] = True, vectors: bool = False
                ) -> tuple[list[Record], Any]:
        """Points matching `where`; `order` is (field, descending, start_from). Returns (records, next offset:
        None at the end; an ordered scroll has none)."""

    @abstractmethod
    def _retrieve(self, ids: Sequence[str], *, payload: bool = True, consistent: bool = False) -> list[Record]:
        """The points of those ids that exist; `consistent`: read from every replica of a cluster."""

    @abstractmethod
    def _count(self, where: Where | None) -> int: ...

    @abstractmethod
    def _upsert(self, points: Sequence[Point], mode: str, condition: Where | None = None) -> None:
        """Writes points; `mode` "insert" leaves existing ids untouched, "update" writes only existing ids
        that match `condition`, "upsert" writes all. Durable when it returns."""

    @abstractmethod
    def _set_dense(self, id_: str, vector: np.ndarray, condition: Where) -> None:
        """Sets a point's dense vector if it matches `condition`; raises if the point does not exist."""

    @abstractmethod
    def _delete(self, where: Where) -> None: ...

    @abstractmethod
    def _nearest(self, dense: np.ndarray, where: Where, limit: int, threshold: float) -> list[tuple[dict, float]]:
        """(payload, cosine) of the dense top-`limit` with cosine >= `threshold`, best first."""

    @abstractmethod
    def _search_batch(self, requests: Sequence[Request]) -> list[list[tuple[dict, float]]]:
        """(payload, score) lists, best first, one per request, from one round trip."""

    @abstractmethod
    def close(self) -> None: ...

    def check_writable(self) -> None:  # noqa: B027 - a hook: a store with nothing to check keeps it
        """Raises StoreUnavailable when a write would fail for want of room (checked before a chat starts)."""

    # ---- writing turns ---------------------------------------------------------------------------------
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
        vectors = list(self._checked(turns, dense))
        write_id = uuid.uuid4().hex
        now = int(time.time())  # whole seconds: a float would not come back bit for bit from every store
        pending = [replace(t, write_id=write_id, stored_at=now) for t in turns]
        stored: list[Turn] = []
        for _ in range(CLAIM_ATTEMPTS):
            start = self.last_turn(tenant, conversation_id) + 1
            tried = [replace(t, turn=start + i) for i, t in enumerate(pending)]
            self._upsert(self._points(tried, vectors), "insert")
            records = self._retrieve([t.point_id for t in tried], consistent=True)
            writers = {int(r.payload["turn"]): r.payload.get("write_id", "") for r in records}
            won = [t.turn for t in tried if writers.get(t.turn) == write_id]
            # Ours keep their order: the first len(won) pending turns take the numbers won. Where another
            # writer took a number in the middle, the turns after it move up (rewritten in place).
            placed = [replace(t, turn=number) for t, number in zip(pending, won, strict=False)]  # won: a prefix
            moved = [k for k, turn in enumerate(placed) if turn.turn != tried[k].turn]
            if moved:
                self._upsert(self._points([placed[k] for k in moved], [vectors[k] for k in moved]), "update",
                             Where(must=(Match("write_id", write_id),)))
            stored += placed
            pending, vectors = pending[len(won):], vectors[len(won):]
            if not pending:
                return stored
        raise StoreBusy(f"could not claim turn numbers in conversation {conversation_id!r} after "
                        f"{CLAIM_ATTEMPTS} attempts: too many concurrent writers")

    def remove_write(self, turns: Sequence[Turn]) -> None:
        """Deletes turns that one add() call stored (their write_id), and no other writer's."""
        if turns:
            first = turns[0]
            self._delete(scope(first.tenant, first.conversation_id, Match("write_id", first.write_id)))

    def set_vector(self, turn: Turn, dense: np.ndarray) -> bool:
        """Sets the dense vector of a stored turn, provided it still holds `turn.text` (so a vector never
        lands on a turn it was not computed from). False when the turn is no longer stored."""
        vector = self._checked_dense([turn], [dense])[0]
        try:
            self._set_dense(turn.point_id, vector, Where(must=(Match("text", turn.text),)))
        except Exception:
            if not self._retrieve([turn.point_id], payload=False):
                return False  # deleted meanwhile
            raise
        return True

    def delete(self, tenant: str, conversation_id: str) -> int:
        """Removes the conversation and returns how many turns it had. Its generation goes up first, so an
        exchange that recalled before the delete and writes after it finds out (generation())."""
        where = scope(tenant, conversation_id)
        count = self._count(where)
        if count:
            generation = self.generation(tenant, conversation_id) + 1
            self._upsert([Point(_generation_id(tenant, conversation_id), None, None,
                                {"generation_of": [tenant, conversation_id], "generation": generation})], "upsert")
            self._delete(where)
        return count

    def generation(self, tenant: str, conversation_id: str) -> int:
        """How many times the conversation has been deleted (0: never)."""
        records = self._retrieve([_generation_id(tenant, conversation_id)], consistent=True)
        return int(records[0].payload["generation"]) if records else 0

    # ---- reading turns ---------------------------------------------------------------------------------
    def latest(self, tenant: str, conversation_id: str, n: int) -> list[Turn]:
        """The last n turns, oldest first."""
        return self._ordered(tenant, conversation_id, n, descending=True) if n > 0 else []

    def last_turn(self, tenant: str, conversation_id: str) -> int:
        """The highest turn number, 0 for an empty or unknown conversation."""
        latest = self.latest(tenant, conversation_id, 1)
        return latest[0].turn if latest else 0

    def export(self, tenant: str, conversation_id: str) -> list[Turn]:
        """Every turn, oldest first."""
        # An ordered scroll returns no next-page offset: page on the turn number, unique in a conversation.
        turns: list[Turn] = []
        while page := self._ordered(tenant, conversation_id, EXPORT_PAGE, descending=False,
                                    start_from=turns[-1].turn + 1 if turns else None):
            turns.extend(page)
        return turns

    def get(self, tenant: str, conversation_id: str, turn_numbers: Iterable[int]) -> list[Turn]:
        """Those of the given turns that exist, oldest first."""
        numbers = tuple(sorted({int(n) for n in turn_numbers}))
        if not numbers:
            return []
        records, _ = self._scroll(scope(tenant, conversation_id, MatchAny(ORDER_FIELD, numbers)), len(numbers))
        return _by_turn(r.payload for r in records)

    def exchange(self, tenant: str, conversation_id: str, exchange: str) -> list[Turn]:
        """The stored turns of one chat exchange (its user turn, and its reply once stored)."""
        records, _ = self._scroll(scope(tenant, conversation_id, Match("exchange", exchange)), 2)
        return _by_turn(r.payload for r in records)

    def similar(self, tenant: str, conversation_id: str, dense: np.ndarray, limit: int,
                threshold: float = 0.0) -> list[ScoredTurn]:
        """Dense cosine top-`limit` with score >= `threshold`, best first."""
        hits = self._nearest(np.asarray(dense, dtype=np.float32), scope(tenant, conversation_id), limit, threshold)
        return [ScoredTurn(Turn.from_payload(p), score) for p, score in hits]

    def search(self, tenant: str, conversation_id: str, searches: Sequence[Search],
               limit: int) -> list[list[ScoredTurn]]:
        """Each search's top-`limit` turns, best first, all in one batch. A text search of stopwords only
        (no BM25 terms) finds nothing."""
        requests, asked, sparse = [], [], {}
        for s in searches:
            where = scope(tenant, conversation_id, *((Match("role", s.role),) if s.role else ()))
            if s.dense is not None:
                requests.append(Request(DENSE, np.asarray(s.dense, dtype=np.float32).tolist(), where, limit,
                                        s.threshold or None))
            else:
                if s.text not in sparse:  # the same text searched twice (all turns, one speaker's) is encoded once
                    sparse[s.text] = bm25().embed_query(s.text)
                vector = sparse[s.text]
                if not vector.indices:
                    asked.append(False)
                    continue
                requests.append(Request(SPARSE, vector, where, limit, None))
            asked.append(True)
        found = iter(self._search_batch(requests) if requests else [])
        turns: dict[int, Turn] = {}  # a turn found by several searches is read once

        def turn(payload: dict) -> Turn:
            number = int(payload["turn"])
            return turns[number] if number in turns else turns.setdefault(number, Turn.from_payload(payload))

        return [[ScoredTurn(turn(p), score) for p, score in next(found)] if a else [] for a in asked]

    def missing_vectors(self, limit: int) -> list[Turn]:
        """Up to `limit` stored turns, of any conversation, that have no dense vector yet."""
        records, _ = self._scroll(Where(must=(IS_TURN,), must_not=(HasVector(DENSE),)), limit)
        return _by_turn(r.payload for r in records)

    def vectors_missing(self, tenant: str, conversation_id: str) -> int:
        """How many of the conversation's turns have no dense vector (0 once every one is searchable)."""
        return self._count(Where(must=scope(tenant, conversation_id).must, must_not=(HasVector(DENSE),)))

    def last_written(self) -> dict[tuple[str, str], int]:
        """(tenant, conversation_id) -> stored_at of its newest turn, for every conversation (a full scan)."""
        newest: dict[tuple[str, str], int] = {}
        offset = None
        while True:
            records, offset = self._scroll(ANY_TURN, EXPORT_PAGE, offset=offset,
                                           payload=["tenant", "conversation_id", "stored_at"])
            for r in records:
                key = (r.payload["tenant"], r.payload["conversation_id"])
                newest[key] = max(newest.get(key, 0), int(r.payload.get("stored_at") or 0))
            if offset is None:
                return newest

    def stats(self) -> dict:
        """{"turns_stored": every turn of every conversation, "vectors_missing": turns without a dense vector}."""
        return {"turns_stored": self._count(ANY_TURN),
                "vectors_missing": self._count(Where(must=(IS_TURN,), must_not=(HasVector(DENSE),)))}

    # ---- shared helpers --------------------------------------------------------------------------------
    def _ordered(self, tenant: str, conversation_id: str, limit: int, descending: bool,
                 start_from: int | None = None) -> list[Turn]:
        """Up to `limit` turns read in turn order (order_by on the indexed `turn`), returned oldest first."""
        records, _ = self._scroll(scope(tenant, conversation_id), limit, order=(ORDER_FIELD, descending, start_from))
        return _by_turn(r.payload for r in records)

    @staticmethod
    def _points(turns: Sequence[Turn], dense: Sequence[np.ndarray | None] | np.ndarray) -> list[Point]:
        return [Point(t.point_id, v, bm25().embed_document(t.text), t.payload())
                for t, v in zip(turns, dense, strict=True)]

    def _checked(self, turns: Sequence[Turn], dense) -> list[np.ndarray | None] | np.ndarray:
        if any(v is None for v in dense):  # some turns stored without a dense vector (see add)
            if len(dense) != len(turns):
                raise ValueError(f"expected {len(turns)} dense vectors (or None), got {len(dense)}")
            return [None if v is None else self._checked_dense([t], [v])[0]
                    for t, v in zip(turns, dense, strict=True)]
        return self._checked_dense(turns, dense)

    def _checked_dense(self, turns: Sequence[Turn], dense) -> np.ndarray:
        """`dense` as a float32 array of one vector per turn (none missing)."""
        dense = np.asarray(dense, dtype=np.float32)
        if dense.shape != (len(turns), self.dim):
            raise ValueError(f"expected {len(turns)} x {self.dim} dense vectors, got {dense.shape}")
        return dense
