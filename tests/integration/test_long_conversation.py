"""A 60-turn conversation: an early fact is recalled at the end, and prompt cost stays flat."""

from imem.config import load

FILLER = [
    "I spent the morning reorganising the bookshelf in the living room.",
    "The weather turned cold so I made a pot of lentil soup for lunch.",
    "My colleague recommended a podcast about the history of bridges.",
    "We had a long meeting about the quarterly budget at work today.",
    "I tried a new running route along the river this evening.",
    "The neighbours are renovating their kitchen and it is very loud.",
]
FACT = "My sister Marguerite lives in Reykjavik and works as a glaciologist."
QUESTION = "Where does my sister Marguerite live and what does she do for work?"


def test_a_fact_from_turn_2_is_recalled_at_turn_60_with_a_flat_prompt(client):
    budget = load().memory.prompt_budget
    conversation = "long-60"
    replies = {}
    for exchange in range(1, 61):
        if exchange == 2:
            message = FACT
        elif exchange == 60:
            message = QUESTION
        else:
            message = f"{FILLER[exchange % len(FILLER)]} (note {exchange})"
        replies[exchange] = client.chat(conversation, message, sampling={"max_tokens": 16, "temperature": 0})
        assert replies[exchange].prompt_tokens <= budget
    fact_turn = replies[2].turn
    assert replies[60].turn == 119  # every exchange stores two turns
    recalled_turns = {r["turn"]: r for r in replies[60].recalled}
    assert fact_turn in recalled_turns, f"turn {fact_turn} not recalled: {replies[60].recalled}"
    assert recalled_turns[fact_turn]["text"] == FACT
    # Similar-length messages: the last exchange costs no more than 10% over exchange 10 ...
    assert replies[60].prompt_tokens <= 1.10 * replies[10].prompt_tokens, (replies[10].prompt_tokens,
                                                                            replies[60].prompt_tokens)
    # ... and once memory offers a full set of similar turns (k of them), cost stops growing with history.
    assert len(replies[30].recalled) == len(replies[59].recalled) == load().memory.top_k
    assert replies[59].prompt_tokens <= 1.10 * replies[30].prompt_tokens, (replies[30].prompt_tokens,
                                                                            replies[59].prompt_tokens)
