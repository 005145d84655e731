"""Recall policies: which stored turns memory offers for a message, best first. The packer then fills the
context token budget in that order (prompt.py).

`default` is the policy of every chat request and of the direct `recall` operation:
  1. the last `recent_turns` turns, always offered first: they carry the thread of the conversation;
  2. the query without the conversation's speaker names: in a history between named people the names
     are everywhere ("Thanks, Melanie!"), so "What did Melanie paint?" would otherwise match every turn
     addressed to Melanie rather than the one about painting. Speakers are the roles of the latest turns;
     the generic roles (user, assistant, system) are never removed;
  3. searches inside Qdrant, one batch: dense (all-MiniLM-L6-v2 cosine >= `threshold`) and BM25, `candidates`
     turns each; when the message names one of the speakers ("What did Melanie paint?"), the same two
     again over that speaker's turns only (store.search). On LoCoMo 97% of the evidence of such a question
     is in the named speaker's own words, and the other speaker's turns crowd them out otherwise;
  4. neighbours: the turns within `neighbours` of the best `top_k` hits on the same day are candidates too.
     The answer to a question often sits next to the turn that shares its words (a question and its
     reply, a statement and its follow-up);
  5. a priority per turn, the weighted sum of its signals (WEIGHTS: reciprocal rank in each search, the
     named speaker's turn, the best neighbouring hit), fused here rather than by Qdrant's RRF, which weighs
     every list alike (and a Qdrant server before 1.16 has no weights); ties go to the earlier turn;
  6. at most `top_k` turns, best first; the packer stops earlier when the context budget is full.

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
from imem.store import Search, TurnStore
from imem.turn import ScoredTurn, Turn

POLICIES = ("default", "recency", "dense", "none", "window", "full")
# A turn line costs at least this many tokens: enough latest turns to fill any prompt budget.
MIN_TURN_TOKENS = 4
# Roles that are not names: never removed from a query.
GENERIC_ROLES = frozenset({"user", "assistant", "system", "unknown"})
# How many of the latest turns name the speakers.
SPEAKER_WINDOW = 8

# A turn's priority in the default policy: the weighted sum of its signals (signals()): its reciprocal rank
# 1/(RRF_K + rank) in each search, 1 when the query names its speaker, and for a turn next to a hit, that
# hit's plain RRF score times `neighbour_weight` (MemoryConfig). The weights were fitted by logistic
# regression (evidence turn or not) on the LoCoMo dev split and hold leaving each conversation out
# (docs/recall-research.md): BM25 ranks count more than dense ones, and a named speaker's turns
# (searched on their own too) rank far above the other speakers'.
RRF_K = 2
WEIGHTS = {"dense": 0.68, "bm25": 1.0, "speaker dense": 0.73, "speaker bm25": 0.87, "speaker": 0.25}

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


def named_speaker(query: str, speakers: set[str]) -> str:
    """The one speaker (a name, not a generic role) the query names, or "" when it names none or several."""
    named = [s for s in speakers if s.strip() and s.strip().lower() not in GENERIC_ROLES
             and re.search(r"(?<!\w)" + re.escape(s.strip()) + r"(?!\w)", query, flags=re.IGNORECASE)]
    return named[0] if len(named) == 1 else ""


def signals(store: TurnStore, config: MemoryConfig, tenant: str, conversation_id: str, query: str,
            embed_query: EmbedQuery) -> tuple[list[Turn], str, dict[int, Turn], dict[int, dict[str, float]]]:
    """What the default policy knows of each candidate turn: its reciprocal rank 1/(RRF_K + rank) in each
    search, whether the query names its speaker, and the plain RRF score of the best hit next to it.
    Returns (recent turns, searched text, candidate turns, their signals)."""
    window = store.latest(tenant, conversation_id, max(config.recent_turns, SPEAKER_WINDOW))
    recent = window[-config.recent_turns:] if config.recent_turns > 0 else []
    speakers = {t.role for t in window}
    terms = without_speakers(query, speakers)
    named = named_speaker(query, speakers) if config.speaker_search else ""
    vector = embed_query(terms)
    searches = {"dense": Search(dense=vector, threshold=config.threshold), "bm25": Search(text=terms)}
    if named:
        searches |= {"speaker dense": Search(dense=vector, role=named, threshold=config.threshold),
                     "speaker bm25": Search(text=terms, role=named)}
    taken = {t.turn for t in recent}
    # Turns never recalled: the assistant's own replies, when the profile says so (MemoryConfig).
    unwanted = set() if config.recall_assistant else {"assistant"}
    turns: dict[int, Turn] = {}
    found: dict[int, dict[str, float]] = {}
    results = store.search(tenant, conversation_id, list(searches.values()), config.candidates)
    for name, hits in zip(searches, results, strict=True):
        for rank, hit in enumerate(hits):
            if hit.turn.turn not in taken and hit.turn.role not in unwanted:
                turns[hit.turn.turn] = hit.turn
                found.setdefault(hit.turn.turn, {})[name] = 1.0 / (RRF_K + rank)
    plain = {number: sum(ranks.values()) for number, ranks in found.items()}
    if config.neighbours > 0 and plain:
        sources = sorted(plain, key=lambda n: (-plain[n], n))[: config.top_k]
        around = range(-config.neighbours, config.neighbours + 1)
        wanted = {n + d for n in sources for d in around} - taken - turns.keys()
        turns.update((t.turn, t) for t in store.get(tenant, conversation_id, wanted) if t.role not in unwanted)
        for source in sources:
            day = date_label(turns[source].timestamp)
            for other in range(source - config.neighbours, source + config.neighbours + 1):
                if other != source and other in turns and date_label(turns[other].timestamp) == day:
                    ranks = found.setdefault(other, {})
                    ranks["neighbour"] = max(ranks.get("neighbour", 0.0), plain[source])
    for number, ranks in found.items():
        if named and turns[number].role == named:
            ranks["speaker"] = 1.0
    return recent, terms, turns, found


def default(store: TurnStore, config: MemoryConfig, tenant: str, conversation_id: str, query: str,
            embed_query: EmbedQuery) -> Offer:
    recent, terms, turns, found = signals(store, config, tenant, conversation_id, query, embed_query)
    weights = {**WEIGHTS, "neighbour": config.neighbour_weight}
    scored = [ScoredTurn(turns[n], sum(weights[k] * v for k, v in ranks.items())) for n, ranks in found.items()]
    # Best first; among equals the earlier turn, so that the same store always gives the same offer.
    scored.sort(key=lambda s: (-s.score, s.turn.turn))
    return Offer(scored[: config.top_k], recent, config.context_budget, terms)
