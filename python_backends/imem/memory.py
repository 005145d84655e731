"""Conversation memory: recall before generation, commit after it, and the direct operations
(ingest of existing history, export, delete). The only code that reads or writes the store.

Every operation is scoped by (tenant, conversation). Input is validated before anything is written, so a
rejected request leaves memory exactly as it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from imem import handle
from imem import recall as recall_policy
from imem.config import MemoryConfig
from imem.errors import BadRequest, NotFound
from imem.prompt import PackedPrompt, PromptPacker, PromptTooLong
from imem.store import TurnStore
from imem.turn import ScoredTurn, Turn

Embed = Callable[[list[str]], np.ndarray]
# Turns embedded and stored per round of an ingest.
INGEST_CHUNK = 256


@dataclass
class Recall:
    tenant: str
    conversation_id: str
    query: str
    prompt: PackedPrompt
    # What the policy offered before packing; `prompt.recalled` / `prompt.recent` is what fitted.
    candidates: list[ScoredTurn]
    policy: str = "default"
    searched: str = ""  # the text the policy searched for (the message without the speakers' names)
    recall_ms: float = 0.0  # selection and packing, embedding excluded
    embed_ms: float = 0.0  # embedding done during recall (none when the message's vector was given)
    message_vector: np.ndarray | None = None  # the message's own vector, when it was given or embedded

    def summary(self) -> dict:
        return {
            "conversation_id": self.conversation_id,
            "tenant": self.tenant,
            "policy": self.policy,
            "prompt_tokens": self.prompt.tokens,
            "context_tokens": self.prompt.context_tokens,
            "recalled": [scored_json(s) for s in sorted(self.prompt.recalled, key=lambda s: -s.score)],
            "recent": [turn_json(t) for t in self.prompt.recent],
            "searched": self.searched,
            "timing_ms": {"recall": round(self.recall_ms, 3), "embed": round(self.embed_ms, 3)},
        }


def turn_json(turn: Turn) -> dict:
    return {"turn": turn.turn, "role": turn.role, "text": turn.text, "timestamp": turn.timestamp}


def export_json(turn: Turn, answered: set[str]) -> dict:
    """A stored turn as export shows it: a chat reply names the turn it answers (`reply_to`); a chat user
    turn says whether its reply was stored (`answered`: false when the generation was interrupted)."""
    item = {**turn_json(turn), "metadata": turn.metadata}
    if turn.reply_to:
        item["reply_to"] = turn.reply_to
    elif turn.exchange:
        item["answered"] = turn.exchange in answered
    return item


def scored_json(scored: ScoredTurn) -> dict:
    return {**turn_json(scored.turn), "score": round(float(scored.score), 4)}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Memory:
    def __init__(self, config: MemoryConfig, store: TurnStore, tokenizer, embed: Embed):
        self.config = config
        self.store = store
        self.embed = embed
        self.tokenizer = tokenizer
        self.packer = PromptPacker(tokenizer, config.prompt_budget, config.pleasantries, config.memory_last,
                                   config.memory_header)

    # ---- validation -------------------------------------------------------------------------------
    def check_ids(self, tenant: str, conversation_id: str) -> None:
        for name, value in (("tenant", tenant), ("conversation_id", conversation_id)):
            if not value.strip():
                raise BadRequest(f"'{name}' must not be empty")
            if len(value.encode("utf-8")) > self.config.max_id_bytes:
                raise BadRequest(f"'{name}' is longer than {self.config.max_id_bytes} bytes")

    def check_message(self, message: str, name: str = "message") -> None:
        if not message.strip():
            raise BadRequest(f"'{name}' must not be empty")
        if len(message.encode("utf-8")) > self.config.max_message_bytes:
            raise BadRequest(f"'{name}' is {len(message.encode('utf-8'))} bytes; "
                             f"the limit is {self.config.max_message_bytes} (IMEM_MAX_MESSAGE_BYTES)")
        tokens = self.packer.count(message)
        if tokens > self.config.max_message_tokens:
            raise BadRequest(f"'{name}' is {tokens} tokens; the limit is {self.config.max_message_tokens} "
                             "(IMEM_MAX_MESSAGE_TOKENS)")

    def require_known(self, tenant: str, conversation_id: str) -> int:
        last = self.store.last_turn(tenant, conversation_id)
        if last == 0:
            raise NotFound(f"unknown conversation '{conversation_id}' (tenant '{tenant}'): it has no turns")
        return last

    def _unless_deleted(self, tenant: str, conversation_id: str, generation: int, written: list[list[Turn]]) -> None:
        """A delete wins over the writes of anything sent before it: once the conversation's generation has
        moved on since `generation` was read, the turns just written (each list one add()) are removed
        again. Checked after writing, because the delete bumps the generation before it deletes: a write
        that lands before the delete is deleted by it, one that lands after sees the new generation."""
        if self.store.generation(tenant, conversation_id) == generation:
            return
        for turns in written:
            self.store.remove_write(turns)
        raise NotFound(f"conversation '{conversation_id}' (tenant '{tenant}') was deleted while this request was "
                       "in flight; nothing of it was stored")

    # ---- the chat path ----------------------------------------------------------------------------
    def recall(self, tenant: str, conversation_id: str, message: str, query_vector: np.ndarray | None,
               system: str = "", policy: str = "default") -> Recall:
        """The turns worth putting in front of the model for `message`, packed into a prompt. Chat always
        uses the default policy; the others are reference points for benchmarks (imem/recall.py).

        `query_vector` is the message's embedding when the caller has it (the chat ensemble's embedder
        step); the policy embeds what else it searches for (or everything, when it is None)."""
        self.check_ids(tenant, conversation_id)
        self.check_message(message)
        vectors: dict[str, np.ndarray] = {} if query_vector is None else {message: query_vector}
        embed_ms = 0.0

        def embed_query(text: str) -> np.ndarray:
            nonlocal embed_ms
            if text not in vectors:
                started = time.perf_counter()
                vectors[text] = self.embed([text])[0]
                embed_ms += (time.perf_counter() - started) * 1000
            return vectors[text]

        started = time.perf_counter()
        try:
            offer = recall_policy.select(policy, self.store, self.config, tenant, conversation_id, message,
                                         embed_query)
        except ValueError as error:
            raise BadRequest(str(error)) from None
        try:
            if offer.unlimited:
                packed = self.packer.measure(message, [s.turn for s in offer.recalled] + offer.recent, system)
            else:
                packed = self.packer.pack(message, offer.recalled, offer.recent, system, offer.budget)
        except PromptTooLong as error:
            raise BadRequest(f"'message' does not fit: {error}") from None
        elapsed = (time.perf_counter() - started) * 1000
        return Recall(tenant, conversation_id, message, packed, offer.recalled, policy, offer.query,
                      elapsed - embed_ms, embed_ms, vectors.get(message))

    def message_vector(self, recall: Recall) -> np.ndarray:
        """The vector stored with the message's turn: the one recall searched with when it searched for the
        message itself, else embedded now (a policy that searched for other words, or not at all)."""
        if recall.message_vector is None:
            started = time.perf_counter()
            recall.message_vector = self.embed([recall.query])[0]
            recall.embed_ms += (time.perf_counter() - started) * 1000
        return recall.message_vector

    def exchange_handle(self, recall: Recall) -> str:
        """The handle of the chat exchange `recall` began (imem/handle.py)."""
        return encode_handle(recall, self.message_vector(recall), self.store.generation(recall.tenant,
                                                                                       recall.conversation_id))

    def recall_only(self, tenant: str, conversation_id: str, query: str, policy: str = "default") -> dict:
        self.check_ids(tenant, conversation_id)
        if policy not in recall_policy.POLICIES:
            raise BadRequest(f"'policy' must be one of {', '.join(recall_policy.POLICIES)}, got {policy!r}")
        self.require_known(tenant, conversation_id)
        self.check_message(query, "query")
        summary = self.recall(tenant, conversation_id, query, None, policy=policy).summary()
        summary["config"] = self.recall_config()
        return summary

    def recall_config(self) -> dict:
        c = self.config
        return {"policy": "default", "top_k": c.top_k, "threshold": c.threshold, "recent_turns": c.recent_turns,
                "context_budget": c.context_budget, "prompt_budget": c.prompt_budget, "candidates": c.candidates,
                "neighbours": c.neighbours, "neighbour_weight": c.neighbour_weight,
                "speaker_search": c.speaker_search, "pleasantries": c.pleasantries, "profile": c.profile,
                "memory_last": c.memory_last, "recall_assistant": c.recall_assistant,
                "store": "qdrant-server" if c.qdrant_url else "qdrant-edge"}

    def store_message(self, handle: dict) -> Turn:
        """Stores the user turn of a chat exchange. Called when the model's first response is ready and
        before it is sent, so a message is in memory as soon as the client sees its answer begin. NotFound
        when the conversation was deleted since recall (nothing stored)."""
        user = Turn(handle["tenant"], handle["conversation_id"], 0, "user", handle["message"], now(),
                    exchange=handle["exchange"])
        stored = self.store.add([user], [handle["vector"]])
        self._unless_deleted(handle["tenant"], handle["conversation_id"], handle["generation"], [stored])
        return stored[0]

    def store_reply(self, handle: dict, text: str, finish_reason: str,
                    completion_tokens: int) -> tuple[Turn, Turn, int]:
        """Stores the finished reply (and its user turn, if the model answered in one response). Durable
        when it returns: only then is the reply acknowledged. An interrupted reply is never stored, so a
        stored reply is always a whole one; its user turn then stays without a reply.

        The reply's dense vector is its message's (imem/recovery.py says why): embedding a reply of 128
        tokens would cost more CPU than the rest of the exchange. Returns the user turn, the reply and how
        many turns it wrote (2 when it stored the message too)."""
        tenant, conversation_id = handle["tenant"], handle["conversation_id"]
        stored = self.store.exchange(tenant, conversation_id, handle["exchange"])
        user = next((t for t in stored if t.role == "user"), None)
        written_message = user is None
        if user is None:
            user = self.store_message(handle)
        reply = Turn(tenant, conversation_id, 0, "assistant", text, now(),
                     {"finish_reason": finish_reason, "completion_tokens": completion_tokens},
                     exchange=handle["exchange"], reply_to=user.turn)
        written = self.store.add([reply], [handle["vector"]])
        self._unless_deleted(tenant, conversation_id, handle["generation"], [written])
        return user, written[0], 2 if written_message else 1

    # ---- direct operations ------------------------------------------------------------------------
    def ingest(self, tenant: str, conversation_id: str, lines: str) -> dict:
        """Imports existing history: JSON lines of {"role" or "speaker", "text", optional "timestamp"}."""
        self.check_ids(tenant, conversation_id)
        records = parse_history(lines, self.config.max_message_bytes)
        turns = [Turn(tenant, conversation_id, 0, role, text, timestamp, metadata)
                 for role, text, timestamp, metadata in records]
        generation = self.store.generation(tenant, conversation_id)
        writes: list[list[Turn]] = []
        for start in range(0, len(turns), INGEST_CHUNK):
            chunk = turns[start:start + INGEST_CHUNK]
            writes.append(self.store.add(chunk, self.embed([t.text for t in chunk])))
        self._unless_deleted(tenant, conversation_id, generation, writes)
        stored = [turn for write in writes for turn in write]
        return {"conversation_id": conversation_id, "tenant": tenant, "ingested": len(stored),
                "first_turn": stored[0].turn, "last_turn": stored[-1].turn}

    def export(self, tenant: str, conversation_id: str) -> dict:
        self.check_ids(tenant, conversation_id)
        self.require_known(tenant, conversation_id)
        turns = self.store.export(tenant, conversation_id)
        answered = {t.exchange for t in turns if t.reply_to}
        return {"conversation_id": conversation_id, "tenant": tenant,
                "turns": [export_json(t, answered) for t in turns],
                "vectors_missing": self.store.vectors_missing(tenant, conversation_id)}

    def delete(self, tenant: str, conversation_id: str) -> dict:
        self.check_ids(tenant, conversation_id)
        self.require_known(tenant, conversation_id)
        return {"conversation_id": conversation_id, "tenant": tenant,
                "deleted": self.store.delete(tenant, conversation_id)}


def parse_history(lines: str, max_text_bytes: int) -> list[tuple[str, str, str, dict]]:
    records = []
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadRequest(f"history line {number} is not valid JSON: {error.msg}") from None
        if not isinstance(item, dict):
            raise BadRequest(f"history line {number} must be a JSON object")
        role = item.get("role", item.get("speaker"))
        text = item.get("text", item.get("content"))
        if not isinstance(role, str) or not role.strip():
            raise BadRequest(f"history line {number} needs a 'role' or 'speaker' string")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f"history line {number} needs a non-empty 'text' string")
        if len(text.encode("utf-8")) > max_text_bytes:
            raise BadRequest(f"history line {number}: 'text' is longer than {max_text_bytes} bytes")
        timestamp = item.get("timestamp", "")
        if not isinstance(timestamp, str):
            raise BadRequest(f"history line {number}: 'timestamp' must be a string")
        metadata = item.get("metadata", {})
        if not isinstance(metadata, dict):
            raise BadRequest(f"history line {number}: 'metadata' must be an object")
        records.append((role.strip(), text, timestamp, metadata))
    if not records:
        raise BadRequest("history is empty: send JSON lines of {\"role\", \"text\"}")
    return records


def encode_handle(recall: Recall, query_vector: np.ndarray, generation: int) -> str:
    """The handle of one chat exchange (imem/handle.py): what its commits need to store its turns, and the
    conversation's generation when it was recalled (a delete since then wins over them)."""
    return handle.encode(handle.new_exchange(), {
        "tenant": recall.tenant,
        "conversation_id": recall.conversation_id,
        "message": recall.query,
        "generation": generation,
    }, query_vector)
