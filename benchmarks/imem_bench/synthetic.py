"""Synthetic conversations for the load test and the benchmarks: facts stated early, small talk, then
questions about the facts. Deterministic for a given random.Random."""

from __future__ import annotations

import random

NAMES = ["Marguerite", "Tobias", "Ingrid", "Kwame", "Yuki", "Rafael", "Soraya", "Henrik", "Amara", "Dmitri"]
PETS = ["a grey cat named Biscuit", "a beagle called Pepper", "a parrot named Captain", "two goldfish, Sol and Luna",
        "a tortoise called Gustav", "a rabbit named Clover"]
CITIES = ["Reykjavik", "Lisbon", "Nairobi", "Osaka", "Valparaiso", "Tallinn", "Montreal", "Hobart"]
JOBS = ["a glaciologist", "a violin maker", "an air traffic controller", "a marine biologist", "a pastry chef",
        "a cartographer"]
HOBBIES = ["restoring old motorcycles", "bouldering", "growing chili peppers", "playing the bassoon",
           "birdwatching", "building ship models"]
SMALL_TALK = [
    "The weather has been strange this week, sunny one day and stormy the next.",
    "I am trying to read more books this year. Any advice on keeping the habit?",
    "What is a good way to start the morning?",
    "I just made a big pot of lentil soup.",
    "Can you suggest a short stretching routine for the office?",
    "My train was late again today.",
    "I keep forgetting to water the plants on my balcony.",
    "Tell me something interesting about octopuses.",
]


def facts(rng: random.Random) -> list[tuple[str, str, str]]:
    """(statement, question, the words of the statement a recall must bring back) for one persona."""
    sister, pet, city = rng.choice(NAMES), rng.choice(PETS), rng.choice(CITIES)
    job, hobby = rng.choice(JOBS), rng.choice(HOBBIES)
    return [
        (f"My sister {sister} works as {job} in {city}.", f"What does my sister {sister} do for a living?",
         f"My sister {sister} works as {job} in {city}."),
        (f"At home I have {pet}.", "What pet do I have at home?", f"At home I have {pet}."),
        (f"On weekends I love {hobby}.", "What do I like doing on weekends?", f"On weekends I love {hobby}."),
    ]


class Conversation:
    """`turns` user messages: the facts, small talk, then the questions (as many of each as fit)."""

    def __init__(self, conversation_id: str, rng: random.Random, turns: int = 10):
        if turns < 2:
            raise ValueError("a conversation needs at least 2 turns (one fact, one question)")
        self.id = conversation_id
        persona = facts(rng)
        n_facts = min(len(persona), turns // 2)
        chosen = persona[:n_facts]
        talk: list[str] = []
        while len(talk) < turns - 2 * n_facts:  # no line repeated before every line has been said
            talk += rng.sample(SMALL_TALK, len(SMALL_TALK))
        talk = talk[:turns - 2 * n_facts]
        questions = list(chosen)
        rng.shuffle(questions)
        # (message, the stored text the question is about, or None)
        self.script: list[tuple[str, str | None]] = (
            [(statement, None) for statement, _, _ in chosen]
            + [(line, None) for line in talk]
            + [(question, answer) for _, question, answer in questions]
        )
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.script)

    def next_message(self) -> tuple[str, str | None]:
        message = self.script[self.position]
        self.position += 1
        return message


REPLIES = [
    "That sounds wonderful. Tell me more about how it went and what you would do differently next time.",
    "I understand. Many people find that a small daily routine makes a big difference over a few weeks.",
    "Good question. It depends on the details, but a simple plan written down usually helps a lot.",
    "Thanks for sharing that with me. I will keep it in mind the next time we talk about it.",
    "Here is one idea: start small, measure what changes, and adjust after a week or two.",
    "That is a lovely detail. It says a lot about what matters to you.",
]
PLACES = CITIES + ["the old harbour", "the farmers market", "the botanical garden", "the mountain hut"]
THINGS = ["a blue bicycle", "a sourdough starter", "a vintage camera", "a chess set", "a telescope", "a kayak"]
EVENTS = ["a birthday dinner", "a job interview", "a marathon", "a piano recital", "a family reunion", "a road trip"]


def history(rng: random.Random, turns: int, start: int = 0) -> list[dict]:
    """`turns` alternating user/assistant messages of chat-like length, varied enough that no two
    user turns are the same sentence: {"role", "text"} dicts, ready for memory ingest."""
    lines = []
    for i in range(start, start + turns):
        if i % 2:
            lines.append({"role": "assistant", "text": rng.choice(REPLIES)})
            continue
        kind = rng.randrange(4)
        if kind == 0:
            text = f"Last {rng.choice(['Monday', 'Friday', 'weekend', 'month'])} I went to {rng.choice(PLACES)} " \
                   f"with {rng.choice(NAMES)} and we talked about {rng.choice(HOBBIES)}."
        elif kind == 1:
            text = f"I am preparing for {rng.choice(EVENTS)} on day {rng.randrange(1, 29)}; " \
                   f"{rng.choice(NAMES)} will bring {rng.choice(THINGS)}."
        elif kind == 2:
            text = f"Note {i // 2}: {rng.choice(NAMES)} owes me {rng.randrange(5, 500)} euros for {rng.choice(THINGS)}."
        else:
            text = rng.choice(SMALL_TALK)
        lines.append({"role": "user", "text": text})
    return lines
