"""Recall policies: which stored turns memory offers for a message, best first. The packer then fills the
context token budget in that order (prompt.py).

`default` is the policy of every chat request and of the direct `recall` operation:
  1. the last `recent_turns` turns, always offered first: they carry the thread of the conversation;
  2. the query without the conversation's speaker names: in a history between named people the names
     are everywhere ("Thanks, Melanie!"), so "What did Melanie paint?" would otherwise match every turn
     addressed to Melanie rather than the one about painting. Speakers are the roles of the latest turns;
     the generic roles (user, assistant, system) are never removed;
  3. hybrid retrieval inside Qdrant: dense (all-MiniLM-L6-v2 cosine) and BM25 candidates, `candidates` of
     each, fused with reciprocal rank fusion (store.hybrid);
  4. neighbours: a turn's priority is its own fused score plus `neighbour_weight` times that of the turns
     right before and after it on the same day, and those neighbours are offered too. The answer to a
     question often sits next to the turn that shares its words (a question and its reply, a statement
     and its follow-up);
  5. at most `top_k` turns, best first; the packer stops earlier when the context budget is full.

The other policies are reference points for the benchmarks (`imem bench locomo`, `imem bench answers`),
chosen per request (the direct recall's payload, the chat's `recall_policy`): `recency` (the latest turns
only, at the same context budget), `dense` (the last turns, then plain dense top-k on the raw query),
`none` (no memory at all), `window` (the latest turns that fit the whole prompt budget: what a model
without memory sees of a long conversation) and `full` (the whole history with no budget: what "send
everything" costs; direct recall only, as no model's window holds it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from imem.config import MemoryConfig
from imem.prompt import date_label
from imem.store import TurnStore  # noqa: F401
from imem.turn import ScoredTurn, Turn

POLICIES = ("default", "recency", "dense", "none", "window", "full")
# A turn line costs at least this many tokens: enough latest turns to fill any prompt budget.
MIN_TURN_TOKENS = 4
# Roles that are not names: never removed from a query.
GENERIC_ROLES = frozenset({"user", "assistant", "system", "unknown"})
# How many of the latest turns name the speakers.
SPEAKER_WINDOW = 8

# text -> its query vector (the one given with the message, or embedded now)
EmbedQuery = Callable[[str], np.ndarray]


@dataclass
class Offer:
    recalled: list[ScoredTurn]  # priority order, best first
    recent: list[Turn]  # oldest first
    budget: int | None  # context tokens for the packer; None: all of the prompt budget (window)
    query: str = ""  # the text that was searched for
    unlimited: bool = False  # no budget at all (full)


def select(policy: str, store: TurnStore, config: MemoryConfig, tenant: str, conversation_id: str, query: str,
           embed_query: EmbedQuery) -> Offer:
    if policy == "default":
        return default(store, config, tenant, conversation_id, query, embed_query)
    if policy == "recency":
        return Offer([], store.latest(tenant, conversation_id, max(config.top_k, 1) * 4), config.context_budget, query)
    if policy == "dense":
        recent = store.latest(tenant, conversation_id, config.recent_turns)
        hits = store.similar(tenant, conversation_id, embed_query(query), limit=config.top_k + len(recent),
                             threshold=config.threshold)
        known = {t.turn for t in recent}
        return Offer([h for h in hits if h.turn.turn not in known][: config.top_k], recent, config.context_budget,
                     query)
    if policy == "none":
        return Offer([], [], 0, query)
    if policy == "window":
        return Offer([], store.latest(tenant, conversation_id, config.prompt_budget // MIN_TURN_TOKENS), None, query)
    if policy == "full":
        return Offer([ScoredTurn(t, 0.0) for t in store.export(tenant, conversation_id)], [], None, query,
                     unlimited=True)
    raise ValueError(f"unknown recall policy {policy!r}: one of {', '.join(POLICIES)}")


def without_speakers(query: str, speakers: set[str]) -> str:
    """The query with the speakers' names (and their possessive 's) removed; the query itself when nothing
    but names, spaces and punctuation would be left."""
    names = sorted((s for s in speakers if s.strip() and s.strip().lower() not in GENERIC_ROLES), key=len,
                   reverse=True)
    if not names:
        return query
    pattern = r"(?<!\w)(?:" + "|".join(re.escape(n.strip()) for n in names) + r")(?:['’]s)?(?!\w)"
    stripped = re.sub(r"\s{2,}", " ", re.sub(pattern, " ", query, flags=re.IGNORECASE)).strip()
    return stripped if re.search(r"\w", stripped) else query


def default(store: TurnStore, config: MemoryConfig, tenant: str, conversation_id: str, query: str,
            embed_query: EmbedQuery) -> Offer:
    window = store.latest(tenant, conversation_id, max(config.recent_turns, SPEAKER_WINDOW))
    recent = window[-config.recent_turns:] if config.recent_turns > 0 else []
    terms = without_speakers(query, {t.role for t in window})
    taken = {t.turn for t in recent}
    hits = [h for h in store.hybrid(tenant, conversation_id, embed_query(terms), terms, limit=config.candidates,
                                    prefetch=config.candidates, threshold=config.threshold)
            if h.turn.turn not in taken]
    own = {h.turn.turn: h.score for h in hits}
    turns = {h.turn.turn: h.turn for h in hits}
    if config.neighbours > 0 and hits:
        wanted = {n + d for n in own for d in range(-config.neighbours, config.neighbours + 1)} - taken - own.keys()
        turns.update((t.turn, t) for t in store.get(tenant, conversation_id, wanted))
    scored = []
    for number, turn in turns.items():
        day = date_label(turn.timestamp)
        score = own.get(number, 0.0)
        for distance in range(1, config.neighbours + 1):
            for other in (number - distance, number + distance):
                if other in own and date_label(turns[other].timestamp) == day:
                    score += own[other] * config.neighbour_weight ** distance
        scored.append(ScoredTurn(turn, score))
    # Best first; among equals, the one retrieved directly, then the earlier one.
    scored.sort(key=lambda s: (-s.score, s.turn.turn not in own, s.turn.turn))
    return Offer(scored[: config.top_k], recent, config.context_budget, terms)
