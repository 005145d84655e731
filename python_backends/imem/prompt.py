"""Prompt packing: the new message plus the turns memory offers, rendered with the model's own chat
template, inside a token budget that is never exceeded.

Everything goes into one user message. Instruct templates such as Mistral's demand strict user/assistant
alternation and have no system role, while remembered turns come from any speakers in any order; one
message with a labelled memory block renders under every template.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from imem.turn import ScoredTurn, Turn

MEMORY_HEADER = "Memory of this conversation (earlier turns, oldest first; use them when relevant):"
RECENT_HEADER = "Most recent turns:"
MESSAGE_HEADER = "Current message:"
# Below this many tokens a truncated turn says too little to be worth its place.
MIN_TRUNCATED_TOKENS = 16


@dataclass
class PackedPrompt:
    text: str
    tokens: int
    recalled: list[ScoredTurn] = field(default_factory=list)
    recent: list[Turn] = field(default_factory=list)


class PromptTooLong(ValueError):
    pass


def turn_line(turn: Turn) -> str:
    label = f"turn {turn.turn} · {turn.role}"
    if turn.timestamp:
        label += f" · {turn.timestamp}"
    return f"[{label}] {turn.text}"


class PromptPacker:
    def __init__(self, tokenizer, budget: int):
        self.tokenizer = tokenizer
        self.budget = budget

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, message: str, recalled: list[ScoredTurn], recent: list[Turn], system: str = "") -> str:
        parts = [system.strip()] if system.strip() else []
        if recalled:
            ordered = sorted(recalled, key=lambda s: s.turn.turn)
            parts.append("\n".join([MEMORY_HEADER, *(turn_line(s.turn) for s in ordered)]))
        if recent:
            parts.append("\n".join([RECENT_HEADER, *(turn_line(t) for t in recent)]))
        if parts:
            parts.append(f"{MESSAGE_HEADER}\n{message}")
            content = "\n\n".join(parts)
        else:
            content = message
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    def pack(self, message: str, recalled: list[ScoredTurn], recent: list[Turn], system: str = "") -> PackedPrompt:
        """Fits as much memory as the budget allows: recent turns newest first, then recalled turns by
        score. A turn too long for the space left is cut rather than dropped when enough room remains."""
        bare = self.render(message, [], [], system)
        bare_tokens = self.count(bare)
        if bare_tokens > self.budget:
            raise PromptTooLong(f"the message alone needs {bare_tokens} prompt tokens; the budget is {self.budget}")
        # Headers and the message label cost a few tokens once any memory is present.
        used = bare_tokens + self.count("\n\n".join([MEMORY_HEADER, RECENT_HEADER, MESSAGE_HEADER])) + 4
        chosen_recent: list[Turn] = []
        chosen_recalled: list[ScoredTurn] = []
        candidates = [("recent", t) for t in reversed(recent)] + [("recalled", s) for s in recalled]
        for kind, item in candidates:
            turn = item if kind == "recent" else item.turn
            cost = self.count(turn_line(turn)) + 1
            if used + cost > self.budget:
                room = self.budget - used - self.count(turn_line(replace(turn, text=""))) - 2
                if room < MIN_TRUNCATED_TOKENS:
                    continue
                turn = replace(turn, text=self._truncate(turn.text, room))
                item = turn if kind == "recent" else ScoredTurn(turn, item.score)
                cost = self.count(turn_line(turn)) + 1
            used += cost
            (chosen_recent if kind == "recent" else chosen_recalled).append(item)
        chosen_recent.sort(key=lambda t: t.turn)
        # The per-line counts are an estimate (tokens merge across line breaks); the rendered prompt is
        # the truth. Drop the lowest-priority turn until it fits.
        while True:
            text = self.render(message, chosen_recalled, chosen_recent, system)
            tokens = self.count(text)
            if tokens <= self.budget:
                return PackedPrompt(text, tokens, chosen_recalled, chosen_recent)
            if chosen_recalled:
                chosen_recalled.pop()
            else:
                chosen_recent.pop(0)

    def _truncate(self, text: str, tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max(tokens - 1, 0)]
        return self.tokenizer.decode(ids).rstrip() + "…"

