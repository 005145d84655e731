"""A turn: one message of a conversation, the unit that memory stores and recalls."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# Fixed namespace so that the same (tenant, conversation, turn) always maps to the same point id: the
# store claims a turn number by inserting that point only if it is free (store.TurnStore.add).
_POINT_NAMESPACE = uuid.UUID("6f1d3b52-5a0e-4f5e-9a51-3c2b9f0e7d11")


@dataclass(frozen=True)
class Turn:
    tenant: str
    conversation_id: str
    turn: int  # 1-based position in the conversation, given by the store when it is added (0 until then)
    role: str  # "user", "assistant", or a speaker's name for ingested history
    text: str
    timestamp: str = ""  # when it was said, as given (ISO-8601 or a session date); may be empty
    metadata: dict = field(default_factory=dict)
    # A chat exchange's id, on its user turn and on its reply; empty for ingested history. A user turn
    # whose exchange has no reply stored was interrupted before the reply was complete.
    exchange: str = ""
    reply_to: int = 0  # on a reply: the number of the user turn it answers
    write_id: str = ""  # the store write that claimed this number (store.TurnStore.add)
    stored_at: int = 0  # whole seconds since the epoch when the store wrote it (0: stored before this was kept)

    @property
    def point_id(self) -> str:
        return point_id(self.tenant, self.conversation_id, self.turn)

    def payload(self) -> dict:
        return {
            "tenant": self.tenant,
            "conversation_id": self.conversation_id,
            "turn": self.turn,
            "role": self.role,
            "text": self.text,
            "timestamp": self.timestamp,
            "metadata": self.metadata,
            "exchange": self.exchange,
            "reply_to": self.reply_to,
            "write_id": self.write_id,
            "stored_at": self.stored_at,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> "Turn":
        return cls(
            tenant=payload["tenant"],
            conversation_id=payload["conversation_id"],
            turn=int(payload["turn"]),
            role=payload["role"],
            text=payload["text"],
            timestamp=payload.get("timestamp") or "",
            metadata=payload.get("metadata") or {},
            exchange=payload.get("exchange") or "",
            reply_to=int(payload.get("reply_to") or 0),
            write_id=payload.get("write_id") or "",
            stored_at=int(payload.get("stored_at") or 0),
        )


@dataclass(frozen=True)
class ScoredTurn:
    turn: Turn
    score: float


def point_id(tenant: str, conversation_id: str, turn: int) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant}\x1f{conversation_id}\x1f{turn}"))
