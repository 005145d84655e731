"""`imem bench answers`: does what memory recalls let the served model answer? End to end through `chat`.

Four context policies, same model, same questions, same run (the chat's `recall_policy`):
  memory   the default policy (recent turns + recalled ones, within the context budget);
  recency  the latest turns only, at the same context budget;
  none     the message alone;
  window   the latest turns that fit the whole prompt budget: what a model without memory sees.
Every question is asked in a fresh copy of its conversation, one per policy (deleted afterwards): asking
stores the question and the answer, and a small model's wrong answer, recalled for the next question,
would otherwise be judged instead of memory (seen: SmolLM2 repeating an earlier answer's number).

Planted facts (seeded, reproducible): a history of filler small talk with facts (codes, names, places,
dates; every one of a different kind) planted at chosen distances before the end, 5 per distance by default;
then each fact is asked for, and an answer counts when it contains the planted value. LoCoMo (--locomo
FILE): --per-category questions of each category 1-4 (25: 100 questions, drawn seeded from all the
conversations), token F1 against the gold answer and whether the answer contains the normalised gold answer.
Every rate and F1 comes with a bootstrap 95% interval, memory's F1 lead over each other policy with a paired
one (same questions), and each part with the seconds it took. --quick is the form `make test` runs
(tests/integration/test_answers.py).

    imem bench answers [--url grpc://...] [--distances 10,100,1000] [--locomo FILE] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import string
import sys
import time
from dataclasses import dataclass

import numpy as np

from imem_bench import common, locomo
from imem_client.client import Client, ServiceError

POLICIES = {"memory": "default", "recency": "recency", "none": "none", "window": "window"}
SAMPLING = {"temperature": 0.0, "max_tokens": 32}

# (what, the statement that plants it, the question, the values to draw from)
FACTS = [
    ("locker code", "My locker code is {v}.", "What is my locker code?", [str(n) for n in range(1000, 10000)]),
    ("sister", "My sister's name is {v}.", "What is my sister's name?",
     ["Priya", "Ingrid", "Mariko", "Beatriz", "Oluwaseun", "Svetlana", "Catalina", "Annika"]),
    ("city", "I moved to {v} last spring.", "Which city did I move to last spring?",
     ["Lisbon", "Tallinn", "Montevideo", "Osaka", "Edinburgh", "Valparaiso", "Krakow", "Nairobi"]),
    ("dentist", "My dentist appointment is on {v}.", "When is my dentist appointment?",
     [f"{m} {d}" for m in ("March", "April", "June", "October") for d in (3, 12, 19, 27)]),
    ("dog", "My dog is called {v}.", "What is my dog called?",
     ["Biscuit", "Pepper", "Nimbus", "Waffles", "Juniper", "Rocket", "Maple", "Pickles"]),
    ("flight", "My flight number is {v}.", "What is my flight number?",
     [f"{a}{n}" for a in ("KL", "LH", "BA", "AF") for n in (1187, 2043, 3391, 4526)]),
    ("wifi", "The wifi password at the cabin is {v}.", "What is the wifi password at the cabin?",
     [f"{w}{n}" for w in ("otter", "falcon", "cedar", "harbor") for n in (17, 42, 88)]),
    ("parking", "I parked the car on level {v} of the garage.", "On which level of the garage did I park?",
     [str(n) for n in range(2, 10)]),
    ("doctor", "My doctor is Dr. {v}.", "What is my doctor's name?",
     ["Okafor", "Lindqvist", "Moreau", "Takahashi", "Castellanos", "Brennan"]),
    ("bike", "My bike lock combination is {v}.", "What is my bike lock combination?",
     [f"{n:03d}" for n in range(100, 1000, 37)]),
    ("street", "I live on {v} Street.", "Which street do I live on?",
     ["Juniper", "Alder", "Wexford", "Harrow", "Linden", "Marigold"]),
    ("colour", "My favourite colour is {v}.", "What is my favourite colour?",
     ["teal", "mustard", "crimson", "lavender", "olive", "turquoise"]),
    ("cat", "My cat's name is {v}.", "What is my cat's name?",
     ["Mochi", "Tofu", "Saffron", "Pistachio", "Ziggy", "Clementine"]),
    ("employer", "I work at a company called {v}.", "What is the company I work at called?",
     ["Brightwave", "Copperleaf", "Northwind", "Bluestone", "Quillfeather", "Ironbark"]),
    ("gym", "My gym membership number is {v}.", "What is my gym membership number?",
     [str(n) for n in range(52000, 53000, 61)]),
    ("anniversary", "Our wedding anniversary is on {v}.", "When is our wedding anniversary?",
     [f"{m} {d}" for m in ("May", "July", "August", "November") for d in (5, 14, 22)]),
    ("instrument", "I play the {v} in a band.", "Which instrument do I play in a band?",
     ["cello", "trombone", "banjo", "harmonica", "saxophone", "ukulele"]),
    ("car", "My car is a {v}.", "What kind of car do I have?",
     ["blue Volvo", "red Skoda", "green Mazda", "white Subaru", "grey Peugeot", "black Kia"]),
    ("teacher", "My piano teacher is called {v}.", "What is my piano teacher called?",
     ["Mrs. Albescu", "Mr. Hargreaves", "Ms. Nakamura", "Mr. Ferreira", "Mrs. Kowalczyk"]),
    ("allergy", "I am allergic to {v}.", "What am I allergic to?",
     ["peanuts", "shellfish", "penicillin", "kiwi", "sesame", "latex"]),
    ("room", "My hotel room number is {v}.", "What is my hotel room number?",
     [str(n) for n in (214, 318, 407, 512, 623, 731, 846)]),
]
TOPICS = ["the garden", "a documentary about whales", "the rainy weather", "a pasta recipe", "my cousin's visit",
          "a novel about sailors", "the football match", "a jazz concert", "my morning run", "the new café downtown",
          "a board game night", "the museum exhibition", "my houseplants", "a podcast about history",
          "the hiking trail", "a pottery class"]
FEELINGS = ["I really enjoyed", "I keep thinking about", "I was a bit disappointed by", "I told my friends about",
            "I spent the afternoon on", "I finally made time for"]
REPLIES = ["That sounds lovely, tell me more!", "How nice! What did you like most?", "Interesting, how did it go?",
           "I hope it went well.", "That must have been fun.", "Thanks for sharing that."]


FACT_SPACING = 8
# Bootstrap resamples of every interval.
BOOTSTRAP = 2000
# A recall policy that reads only the latest turns sees nothing else of the history: its copy holds only the
# latest turns it can read, which saves embedding the rest. `recency` offers the latest 4 x top_k turns;
# `window` packs latest turns into the prompt budget, and every turn's line costs at least its text's tokens,
# so the latest turns whose texts hold twice the budget's tokens are all it can use (the margin: a turn too
# long for the last few tokens is skipped, and an older short one may take its place).
TAIL_READERS = ("recency", "window")


@dataclass
class Fact:
    what: str
    statement: str
    question: str
    value: str
    distance: int  # turns between the planted statement and the end of the history


def planted_history(seed: int, distances: list[int], per_distance: int) -> tuple[list[dict], list[Fact]]:
    """Filler exchanges with one fact per (distance, slot) planted that many turns before the end; every
    fact of a different kind (FACTS)."""
    if len(distances) * per_distance > len(FACTS):
        raise ValueError(f"at most {len(FACTS)} facts: {len(distances)} distances x {per_distance} is more")
    rng = random.Random(seed)
    kinds = rng.sample(FACTS, len(distances) * per_distance)
    length = max(distances) + FACT_SPACING * per_distance + 10
    length += length % 2  # whole exchanges: a user turn, then its reply
    planted: dict[int, Fact] = {}
    for index, (what, statement, question, values) in enumerate(kinds):
        # Facts at one distance sit FACT_SPACING turns apart, so that none is another's neighbour in recall.
        distance = distances[index // per_distance] + FACT_SPACING * (index % per_distance)
        position = length - distance
        position -= position % 2  # a user turn
        value = rng.choice(values)
        planted[position] = Fact(what, statement.format(v=value), question, value, length - position)
    history = []
    for position in range(0, length, 2):
        fact = planted.get(position)
        user = fact.statement if fact else f"{rng.choice(FEELINGS)} {rng.choice(TOPICS)}."
        history += [{"role": "user", "text": user},
                    {"role": "assistant", "text": "Noted, I will remember that." if fact else rng.choice(REPLIES)}]
    return history, sorted(planted.values(), key=lambda f: -f.distance)


def delete(client: Client, conversation_id: str, tenant: str) -> None:
    try:
        client.delete(conversation_id, tenant)
    except ServiceError as error:
        if "unknown conversation" not in str(error):
            raise


def readable(history: list[dict], policy: str, settings: dict, count) -> list[dict]:
    """The latest turns of `history` that a tail-reading policy can use (TAIL_READERS); `count` gives a text's
    tokens in the served model's tokenizer (None: a turn counts as recall.MIN_TURN_TOKENS tokens)."""
    from imem.recall import MIN_TURN_TOKENS

    if policy == "recency":
        return history[-max(settings["top_k"], 1) * 4:]
    limit, tokens, start = settings["prompt_budget"] // MIN_TURN_TOKENS, 0, len(history)
    while start > 0 and len(history) - start < limit and tokens < 2 * settings["prompt_budget"]:
        start -= 1
        tokens += count(history[start]["text"]) if count else MIN_TURN_TOKENS
    return history[start:]


def token_counter(tokenizer_path: str):
    """A text's token count in the served model's tokenizer, or None where it cannot be loaded."""
    try:
        from imem.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    except Exception:  # noqa: BLE001 - a remote server's model: fall back to counting turns
        return None
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def ask(client: Client, history: list[dict], tenant: str, question: str, policy: str,
        settings: dict, count=None) -> tuple[str, dict]:
    """`question` after `history`, in a conversation of its own that is deleted afterwards."""
    conversation_id = f"answers-{policy}"
    delete(client, conversation_id, tenant)  # left by an interrupted run
    if policy in TAIL_READERS:
        history = readable(history, policy, settings, count)
    if policy != "none":  # `none` reads nothing
        for start in range(0, len(history), 200):
            client.ingest(conversation_id, history[start:start + 200], tenant)
    started = time.perf_counter()
    reply = client.chat(conversation_id, question, tenant, sampling=SAMPLING, stream=False,
                        recall_policy=POLICIES[policy])
    seconds = time.perf_counter() - started
    delete(client, conversation_id, tenant)
    return reply.text.strip(), {"prompt_tokens": reply.prompt_tokens, "seconds": round(seconds, 2)}


def server_settings(client: Client, tenant: str) -> dict:
    """The memory settings the server runs with (its profile included), from a direct recall."""
    delete(client, "answers-settings", tenant)
    client.ingest("answers-settings", [{"role": "user", "text": "hello"}], tenant)
    settings = client.recall("answers-settings", "hello", tenant)["config"]
    delete(client, "answers-settings", tenant)
    return settings


# ---- intervals --------------------------------------------------------------------------------------------
def interval(values: list[float], seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of the mean of `values` (percentiles of BOOTSTRAP resampled means)."""
    if not values:
        return [0.0, 0.0]
    data = np.asarray(values, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), (BOOTSTRAP, len(data)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def rate(flags: list[bool], seed: int = 0) -> dict:
    return {"rate": round(sum(flags) / len(flags), 3) if flags else 0.0, "n": len(flags),
            "ci95": interval([float(f) for f in flags], seed)}


def run_facts(client: Client, seed: int, distances: list[int], per_distance: int, tenant: str = "answers",
              policies=tuple(POLICIES), count=None) -> dict:
    """Accuracy per policy and distance on one planted history, with bootstrap intervals; every answer
    is kept in the report."""
    started = time.perf_counter()
    history, facts = planted_history(seed, distances, per_distance)
    settings = server_settings(client, tenant)
    answers = []
    for policy in policies:
        for fact in facts:
            text, figures = ask(client, history, tenant, fact.question, policy, settings, count)
            answers.append({"policy": policy, "distance": fact.distance, "what": fact.what, "value": fact.value,
                            "question": fact.question, "answer": text, "correct": fact.value.lower() in text.lower(),
                            **figures})
        print(f"facts/{policy}: {sum(a['correct'] for a in answers if a['policy'] == policy)}/{len(facts)} correct",
              file=sys.stderr, flush=True)
    accuracy = {policy: {str(d): rate([a["correct"] for a in answers if a["policy"] == policy and
                                      _bucket(a["distance"], distances) == d], seed) for d in distances}
                for policy in policies}
    overall = {policy: rate([a["correct"] for a in answers if a["policy"] == policy], seed) for policy in policies}
    return {"seed": seed, "history_turns": len(history), "facts": len(facts), "per_distance": per_distance,
            "distances": distances, "accuracy_by_distance": accuracy, "accuracy": overall,
            "seconds": round(time.perf_counter() - started, 1), "answers": answers}


def _bucket(distance: int, distances: list[int]) -> int:
    return min(distances, key=lambda d: abs(d - distance))


# ---- LoCoMo -----------------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    text = text.lower().replace(",", "")
    text = "".join(c for c in text if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in {"a", "an", "the", "and"})


def f1(answer: str, gold: str) -> float:
    mine, theirs = normalize(answer).split(), normalize(gold).split()
    common_tokens = sum((collections.Counter(mine) & collections.Counter(theirs)).values())
    if not mine or not theirs or not common_tokens:
        return 0.0
    precision, recall = common_tokens / len(mine), common_tokens / len(theirs)
    return 2 * precision * recall / (precision + recall)


def stratified(conversations: list, per_category: int, seed: int) -> list[tuple]:
    """`per_category` answerable questions of each category 1-4, drawn at random (seeded) from all the
    conversations together: (conversation, question) pairs, grouped by conversation."""
    rng = random.Random(seed)
    chosen = []
    for category in locomo.CATEGORIES:
        pool = [(index, question) for index, conversation in enumerate(conversations)
                for question in conversation.questions if question.answer and question.category == category]
        chosen += rng.sample(pool, min(per_category, len(pool)))
    chosen.sort(key=lambda pair: pair[0])
    return [(conversations[index], question) for index, question in chosen]


def run_locomo(client: Client, path: str, per_category: int, seed: int, tenant: str = "answers-locomo",
               policies=tuple(POLICIES), count=None) -> dict:
    started = time.perf_counter()
    settings = server_settings(client, tenant)
    selected = stratified(locomo.load(path), per_category, seed)
    rows = []
    for number, (conversation, question) in enumerate(selected, start=1):
        for policy in policies:
            text, measured = ask(client, conversation.turns, tenant, question.text, policy, settings, count)
            rows.append({"policy": policy, "conversation": conversation.sample_id, "category": question.category,
                         "question": question.text, "gold": question.answer, "answer": text,
                         "f1": round(f1(text, question.answer), 4),
                         "contains": normalize(question.answer) in normalize(text), **measured})
        if number % 10 == 0 or number == len(selected):
            print(f"locomo: {number}/{len(selected)} questions x {len(policies)} policies", file=sys.stderr, flush=True)

    def figures(chosen: list[dict]) -> dict:
        if not chosen:
            return {"questions": 0}
        return {"questions": len(chosen), "f1": round(float(np.mean([r["f1"] for r in chosen])), 4),
                "f1_ci95": interval([r["f1"] for r in chosen], seed),
                "contains": rate([r["contains"] for r in chosen], seed),
                "prompt_tokens_mean": round(float(np.mean([r["prompt_tokens"] for r in chosen])), 1)}

    summary = {policy: {"overall": figures([r for r in rows if r["policy"] == policy]),
                        **{f"{c}-{name}": figures([r for r in rows if r["policy"] == policy and r["category"] == c])
                           for c, name in locomo.CATEGORIES.items()}}
               for policy in policies}
    # Memory's F1 minus each other policy's on the same questions: a paired bootstrap interval.
    by_policy = {policy: [r["f1"] for r in rows if r["policy"] == policy] for policy in policies}
    difference = {}
    if "memory" in by_policy:
        for policy in policies:
            if policy != "memory":
                gaps = [a - b for a, b in zip(by_policy["memory"], by_policy[policy], strict=True)]
                difference[policy] = {"f1": round(float(np.mean(gaps)), 4), "ci95": interval(gaps, seed)}
    return {"data": path, "questions_per_category": per_category, "questions": len(selected), "summary": summary,
            "memory_f1_minus": difference, "seconds": round(time.perf_counter() - started, 1), "answers": rows}


# ---- report -----------------------------------------------------------------------------------------------
def _cell(figure: dict) -> str:
    low, high = figure["ci95"]
    return f"{figure['rate']:.2f} [{low:.2f}, {high:.2f}]"


def print_tables(report: dict) -> None:
    facts = report["facts"]
    distances = facts["distances"]
    print(f"Planted facts: {facts['facts']} facts in a {facts['history_turns']}-turn history (seed {facts['seed']}, "
          f"{facts['seconds']} s); share answered with the planted value [95% bootstrap interval], by turns between "
          "fact and question")
    print(common.md_table(["policy"] + [f"{d} turns" for d in distances] + ["all"],
                          [[p] + [_cell(facts["accuracy_by_distance"][p][str(d)]) for d in distances]
                           + [_cell(facts["accuracy"][p])] for p in facts["accuracy"]]))
    if report.get("locomo"):
        summary = report["locomo"]["summary"]
        categories = [k for k in next(iter(summary.values())) if k != "overall"]
        print(f"\nLoCoMo ({report['locomo']['data']}, {report['locomo']['questions']} questions, "
              f"{report['locomo']['seconds']} s): answer F1 [95% interval], contains gold, F1 per category")
        print(common.md_table(
            ["policy", "F1", "contains"] + [f"F1 {c}" for c in categories] + ["prompt tok"],
            [[p, f"{s['overall']['f1']:.3f} [{s['overall']['f1_ci95'][0]:.3f}, {s['overall']['f1_ci95'][1]:.3f}]",
              _cell(s["overall"]["contains"])] + [s[c].get("f1", "-") for c in categories]
             + [s["overall"].get("prompt_tokens_mean")] for p, s in summary.items()]))
        for policy, gap in report["locomo"]["memory_f1_minus"].items():
            print(f"memory F1 - {policy} F1: {gap['f1']:+.3f} [{gap['ci95'][0]:+.3f}, {gap['ci95'][1]:+.3f}]")


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facts = report["facts"]
    fig, axis = plt.subplots(figsize=(6.5, 4))
    for policy, by_distance in facts["accuracy_by_distance"].items():
        rates = [by_distance[str(d)]["rate"] for d in facts["distances"]]
        errors = [[r - by_distance[str(d)]["ci95"][0] for r, d in zip(rates, facts["distances"], strict=True)],
                  [by_distance[str(d)]["ci95"][1] - r for r, d in zip(rates, facts["distances"], strict=True)]]
        axis.errorbar(facts["distances"], rates, yerr=errors, fmt="o-", capsize=3, label=policy)
    axis.set(xscale="log", ylim=(-0.05, 1.05), xlabel="turns between the fact and the question",
             ylabel="answers with the planted value", title=f"{report['model_name']}: planted facts (95% CI)")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench answers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running server (default: start one on free ports)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--distances", default="10,100,1000", help="turns between a fact and its question")
    parser.add_argument("--per-distance", type=int, default=5, help="facts planted at each distance")
    parser.add_argument("--locomo", default=str(common.REPO_ROOT.parent / "shared" / "locomo" / "locomo-dev.json"),
                        help="a LoCoMo file ('' to skip)")
    parser.add_argument("--per-category", type=int, default=25,
                        help="LoCoMo questions of each category 1-4 (stratified, seeded)")
    parser.add_argument("--quick", action="store_true",
                        help="distances 10,100,300 with 2 facts each, 1 LoCoMo question per category")
    parser.add_argument("--json", default=None, help="output (default results/answers.json)")
    args = parser.parse_args(argv)
    distances = [int(d) for d in ("10,100,300" if args.quick else args.distances).split(",")]
    per_distance = 2 if args.quick else args.per_distance
    per_category = 1 if args.quick else args.per_category
    if len(distances) * per_distance > len(FACTS):
        parser.error(f"at most {len(FACTS)} facts: distances x --per-distance is {len(distances) * per_distance}")
    from imem.config import load

    config = load()
    count = token_counter(config.engine.tokenizer_path)
    started = time.perf_counter()
    with common.server(args.url) as (grpc_url, _, _), Client(grpc_url) as client:
        settings = server_settings(client, "answers")
        report = {"machine": common.machine(), "model": config.engine.model,
                  "model_name": re.sub(r".*/", "", config.engine.model.rstrip("/")),
                  "sampling": SAMPLING, "policies": POLICIES, "memory_settings": settings,
                  "context_budget": settings["context_budget"], "prompt_budget": settings["prompt_budget"],
                  "quick": args.quick,
                  "facts": run_facts(client, args.seed, distances, per_distance, count=count)}
        if args.locomo:
            report["locomo"] = run_locomo(client, args.locomo, per_category, args.seed, count=count)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(report)
    path = common.write_results("answers", report, args.json)
    plot(report, common.plot_path(path))
    return 0
