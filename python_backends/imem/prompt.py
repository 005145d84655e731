"""Prompt packing: the new message plus the turns memory offers, rendered with the model's own chat
template, inside a token budget that is never exceeded.

Remembered turns come from any speakers in any order, so they are never replayed as chat messages: they go
into one labelled memory block. Where the template has a system role (ChatML: SmolLM2, Qwen, ...) the block
is the system message and the user's message stays alone in its turn; small models read it far better so
(SmolLM2-135M answered "What is my locker code?" from a system block, and from the same block inside the
user message talked about something else). There its lines are bulleted under a header in the second
person: with bare `user: ...` lines SmolLM2 went on writing such lines instead of answering (5 of 8 planted
facts answered with both changes, 1-2 of 8 with either alone). Templates without a system role (Mistral's:
strict user/assistant alternation) get everything in one user message, the message last.

Remembered turns are written compactly, `speaker: text`, oldest first, under a header line for each date
("[1:56 pm on 8 May, 2023]", or the day of an ISO timestamp): a date costs ~18 tokens, so it is written
once per group of turns from the same session or day rather than on every line. A recalled turn is written
without its pleasantries (short sentences of greetings, thanks and praise only: "Wow, that's awesome!",
"Thanks, Mel!"): they answer nothing and are ~6% of LoCoMo's tokens (docs/recall-research.md). The latest
turns are written as they are: they carry the thread.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from imem.turn import ScoredTurn, Turn

MEMORY_HEADER = "Memory of this conversation (earlier turns, oldest first; use them when relevant):"
SYSTEM_MEMORY_HEADER = "What you remember from earlier in this conversation:"
RECENT_HEADER = "Most recent turns:"
MESSAGE_HEADER = "Current message:"
# Below this many tokens a truncated turn says too little to be worth its place.
MIN_TRUNCATED_TOKENS = 16
# Token counts of turn lines kept per packer: the same turns are offered chat after chat (the recent ones
# every time), and counting them was a third of packing.
KNOWN_COUNTS = 8192


# Words of sentences that state no fact: greetings, thanks, interjections, praise, and the glue between them.
PLEASANTRY_WORDS = frozenset("""
hey hi hello hiya yo wow whoa oh ah aw aww ooh yay yeah yep yes yup ok okay sure totally definitely absolutely
thanks thank so much really very too that that's thats it's its this is was sounds sound looks look seems great
awesome amazing cool nice good wonderful fantastic incredible lovely beautiful sweet fun perfect sorry congrats
congratulations glad happy hear to i i'm im me my we us our a an the and but for of what how long time no see bye
goodbye later ya take care catch you soon night course indeed true right agree couldn't more man bud dude haha lol
omg hmm well just such what's whats how's hows up going doing again""".split())
# A pleasantry is a sentence of at most this many words.
PLEASANTRY_WORDS_MAX = 6
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def is_pleasantry(sentence: str, names: set[str]) -> bool:
    """Whether a sentence is only pleasantry words and speakers' names (or their first three letters: "Mel")."""
    words = re.findall(r"[\w']+", sentence.lower().replace("’", "'"))
    return 0 < len(words) <= PLEASANTRY_WORDS_MAX and all(
        w in PLEASANTRY_WORDS or w in names or (len(w) >= 3 and any(n.startswith(w) for n in names)) for w in words)


def without_pleasantries(text: str, names: set[str]) -> str:
    """The text without its pleasantry sentences; the text itself when nothing else would be left."""
    kept = [s for s in _SENTENCE_END.split(text) if not is_pleasantry(s, names)]
    return " ".join(kept) if kept else text


@dataclass
class PackedPrompt:
    text: str
    tokens: int
    recalled: list[ScoredTurn] = field(default_factory=list)
    recent: list[Turn] = field(default_factory=list)
    # What memory adds to the prompt: its tokens minus those of the bare message (same template).
    context_tokens: int = 0


class PromptTooLong(ValueError):
    pass


_MONTHS = {name.lower(): number for number in range(1, 13)
           for name in (calendar.month_name[number], calendar.month_abbr[number])}
_DAY_MONTH_YEAR = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+([A-Za-z]{3,9})\.?,?\s+(\d{4})\b")
_MONTH_DAY_YEAR = re.compile(r"\b([A-Za-z]{3,9})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})\b")


@functools.lru_cache(maxsize=4096)
def date_label(timestamp: str) -> str:
    """The header a turn is grouped under: its day, written "8 May 2023" (an ISO-8601 timestamp, or text
    holding a day, month name and year); any other text as given. Empty for no timestamp."""
    timestamp = timestamp.strip()
    if not timestamp:
        return ""
    try:
        day = datetime.fromisoformat(timestamp).date()
    except ValueError:
        day = None
        for pattern, order in ((_DAY_MONTH_YEAR, (0, 1, 2)), (_MONTH_DAY_YEAR, (1, 0, 2))):
            match = pattern.search(timestamp)
            if match:
                parts = [match.group(i + 1) for i in order]
                month = _MONTHS.get(parts[1].lower())
                try:
                    day = date(int(parts[2]), month, int(parts[0])) if month else None
                except ValueError:
                    day = None
                if day:
                    break
    return f"{day.day} {calendar.month_name[day.month]} {day.year}" if day else timestamp


def has_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system message (Mistral's raises on one; some drop it)."""
    probe = "system-role-probe"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}], tokenize=False)
    except Exception:
        return False
    return probe in rendered


def turn_line(turn: Turn, bullet: str = "") -> str:
    return f"{bullet}{turn.role}: {turn.text}"


def render_turns(turns: list[Turn], bullet: str = "") -> str:
    """Turns in the order given, a date header line whenever the date changes."""
    lines, current = [], None
    for turn in turns:
        label = date_label(turn.timestamp)
        if label != current:
            if label:
                lines.append(f"[{label}]")
            current = label
        lines.append(turn_line(turn, bullet))
    return "\n".join(lines)


class PromptPacker:
    def __init__(self, tokenizer, budget: int, pleasantries: bool = False, memory_last: bool = False,
                 memory_header: str = ""):
        """`pleasantries`: write recalled turns with their pleasantries (by default they are left out).
        `memory_last`: the recalled turns after the recent ones, nearest the message (by default before).
        `memory_header`: the line above the recalled turns (by default the one for the template's roles)."""
        self.tokenizer = tokenizer
        self.budget = budget
        self.pleasantries = pleasantries
        self.memory_last = memory_last
        # The tokenizer turns a special token's text ("</s>", "<|im_start|>") into that token wherever it
        # appears, so a message holding one could end the prompt or open a turn of its own. Inside what
        # users wrote it is broken with a zero-width space: the model reads the same characters as text.
        specials = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        specials |= set(getattr(tokenizer, "all_special_tokens", []))
        self.specials = sorted((t for t in specials if len(t) > 1), key=len, reverse=True)
        self._special = re.compile("|".join(re.escape(t) for t in self.specials)) if self.specials else None
        self.system_role = has_system_role(tokenizer)
        self.memory_header = memory_header or (SYSTEM_MEMORY_HEADER if self.system_role else MEMORY_HEADER)
        self.bullet = "- " if self.system_role else ""
        self._known: dict[str, int] = {}  # text -> tokens, oldest first
        self._header_tokens = self.count("\n\n".join([self.memory_header, RECENT_HEADER, MESSAGE_HEADER]))

    def neutralize(self, text: str) -> str:
        """User text with every special token's spelling broken up (stored text is never changed)."""
        if self._special is None:
            return text
        return self._special.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], text)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _counts(self, texts: list[str]) -> list[int]:
        """Token counts of lines and labels that recur from prompt to prompt, remembered."""
        known = self._known
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            for text, ids in zip(missing, self.tokenizer(missing, add_special_tokens=False)["input_ids"], strict=True):
                known[text] = len(ids)
        counts = [known[t] for t in texts]
        while len(known) > KNOWN_COUNTS:
            del known[next(iter(known))]
        return counts

    def render(self, message: str, recalled: list[ScoredTurn], recent: list[Turn], system: str = "") -> str:
        parts = [system.strip()] if system.strip() else []
        blocks = []
        if recalled:
            ordered = sorted((s.turn for s in recalled), key=lambda t: t.turn)
            blocks.append(f"{self.memory_header}\n{render_turns(ordered, self.bullet)}")
        if recent:
            blocks.append(f"{RECENT_HEADER}\n{render_turns(sorted(recent, key=lambda t: t.turn), self.bullet)}")
        parts += reversed(blocks) if self.memory_last else blocks
        if parts and self.system_role:
            messages = [{"role": "system", "content": "\n\n".join(parts)}, {"role": "user", "content": message}]
        elif parts:
            messages = [{"role": "user", "content": "\n\n".join(parts + [f"{MESSAGE_HEADER}\n{message}"])}]
        else:
            messages = [{"role": "user", "content": message}]
        messages = [{**m, "content": self.neutralize(m["content"])} for m in messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def measure(self, message: str, turns: list[Turn], system: str = "") -> PackedPrompt:
        """Every given turn as memory, with no budget: what sending the whole history would cost."""
        bare_tokens = self.count(self.render(message, [], [], system))
        recalled = [ScoredTurn(t, 0.0) for t in turns]
        text = self.render(message, recalled, [], system)
        tokens = self.count(text)
        return PackedPrompt(text, tokens, recalled, [], tokens - bare_tokens)

    def pack(self, message: str, recalled: list[ScoredTurn], recent: list[Turn], system: str = "",
             context_budget: int | None = None) -> PackedPrompt:
        """Fits as much memory as the budgets allow: recent turns newest first, then recalled turns in the
        order given (best first). The whole prompt stays within `budget`, and what memory adds to it within
        `context_budget` (None: no limit of its own). A turn too long for the space left is cut rather than
        dropped when enough room remains."""
        bare = self.render(message, [], [], system)
        bare_tokens = self.count(bare)
        if bare_tokens > self.budget:
            raise PromptTooLong(f"the message alone needs {bare_tokens} prompt tokens; the budget is {self.budget}")
        limit = self.budget - bare_tokens
        if context_budget is not None:
            limit = min(limit, context_budget)
        if not self.pleasantries:
            names = {t.role.lower() for t in recent} | {s.turn.role.lower() for s in recalled}
            recalled = [ScoredTurn(replace(s.turn, text=without_pleasantries(s.turn.text, names)), s.score)
                        for s in recalled]
        # (turn, None) for a recent turn, (turn, its scored entry) for a recalled one.
        candidates: list[tuple[Turn, ScoredTurn | None]] = [(t, None) for t in reversed(recent)]
        candidates += [(s.turn, s) for s in recalled]
        if not candidates:
            return PackedPrompt(bare, bare_tokens)
        # Estimated cost, summed line by line: headers once, a line per turn, a date line per new date.
        # Tokens merge a little across line breaks; the rendered prompt below is the truth.
        used = self._header_tokens + 6
        lines = self._counts([turn_line(turn, self.bullet) for turn, _ in candidates])
        dates: dict[tuple[str, str], int] = {}
        chosen_recent: list[Turn] = []
        chosen_recalled: list[ScoredTurn] = []
        for (turn, scored), line_cost in zip(candidates, lines, strict=True):
            if limit - used < MIN_TRUNCATED_TOKENS // 2:
                break
            key = ("recent" if scored is None else "recalled", date_label(turn.timestamp))
            date_cost = 0 if key in dates or not key[1] else self._counts([f"[{key[1]}]"])[0] + 1
            cost = line_cost + 1 + date_cost
            if used + cost > limit:
                room = limit - used - date_cost - self.count(turn_line(replace(turn, text=""), self.bullet)) - 2
                if room < MIN_TRUNCATED_TOKENS:
                    continue
                turn = replace(turn, text=self._truncate(turn.text, room))
                if scored is not None:
                    scored = ScoredTurn(turn, scored.score)
                cost = self.count(turn_line(turn, self.bullet)) + 1 + date_cost
            used += cost
            dates[key] = 1
            if scored is None:
                chosen_recent.append(turn)
            else:
                chosen_recalled.append(scored)
        chosen_recent.sort(key=lambda t: t.turn)
        # Drop the lowest-priority turn until the rendered prompt fits both budgets.
        while True:
            text = self.render(message, chosen_recalled, chosen_recent, system)
            tokens = self.count(text)
            if tokens - bare_tokens <= limit or not (chosen_recalled or chosen_recent):
                return PackedPrompt(text, tokens, chosen_recalled, chosen_recent, tokens - bare_tokens)
            if chosen_recalled:
                chosen_recalled.pop()
            else:
                chosen_recent.pop(0)

    def _truncate(self, text: str, tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max(tokens - 1, 0)]
        return self.tokenizer.decode(ids).rstrip() + "…"
