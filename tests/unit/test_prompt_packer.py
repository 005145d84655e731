"""The prompt packer: the budget is never exceeded, the model's chat template is used, memory is
labelled with turn numbers and dates, and the edge cases (no memory, one huge turn) behave."""

import pytest

from imem.prompt import MEMORY_HEADER, RECENT_HEADER, PromptPacker, PromptTooLong
from imem.turn import ScoredTurn, Turn


def turn(n, text, role="user", timestamp=""):
    return Turn("t", "c", n, role, text, timestamp)


def scored(n, text, score=0.5, **kw):
    return ScoredTurn(turn(n, text, **kw), score)


@pytest.mark.parametrize("budget", [48, 64, 100, 160, 300, 1024])
def test_budget_is_never_exceeded(tokenizer, budget):
    packer = PromptPacker(tokenizer, budget)
    recalled = [scored(i, f"Fact number {i}: the {i}th planet has {i * 7} moons and a long name. " * 3,
                       score=1 - i / 100) for i in range(1, 30)]
    recent = [turn(100 + i, f"recent remark {i} about the weather in Lisbon", role="assistant" if i % 2 else "user")
              for i in range(5)]
    packed = packer.pack("How many moons?", recalled, recent)
    assert packed.tokens <= budget
    assert packed.tokens == len(tokenizer(packed.text, add_special_tokens=False)["input_ids"])


def test_prompt_is_rendered_with_the_models_chat_template(tokenizer):
    packed = PromptPacker(tokenizer, 1024).pack("What is my dog called?", [scored(2, "My dog is called Rex.")], [])
    expected = tokenizer.apply_chat_template([{"role": "user", "content": packed.text.split("[INST] ", 1)[1]
                                               .rsplit(" [/INST]", 1)[0]}], tokenize=False, add_generation_prompt=True)
    assert packed.text == expected
    assert packed.text.startswith("<s>[INST]") and packed.text.endswith("[/INST]")
    assert "My dog is called Rex." in packed.text


def test_empty_memory_gives_the_bare_message(tokenizer):
    packed = PromptPacker(tokenizer, 1024).pack("Hello!", [], [])
    assert packed.text == "<s>[INST] Hello! [/INST]"
    assert packed.recalled == [] and packed.recent == []


def test_turns_are_labelled_with_number_speaker_and_date(tokenizer):
    packed = PromptPacker(tokenizer, 1024).pack(
        "When did we talk about Rex?", [scored(3, "My dog is called Rex.", timestamp="1:56 pm on 8 May, 2023")],
        [turn(9, "Nice!", role="assistant")])
    assert "[turn 3 · user · 1:56 pm on 8 May, 2023] My dog is called Rex." in packed.text
    assert "[turn 9 · assistant] Nice!" in packed.text
    assert packed.text.index(MEMORY_HEADER) < packed.text.index(RECENT_HEADER)


def test_a_single_huge_turn_is_truncated_to_fit(tokenizer):
    huge = "The quick brown fox jumps over the lazy dog. " * 400
    packer = PromptPacker(tokenizer, 200)
    packed = packer.pack("Summarise the story.", [scored(1, huge)], [])
    assert packed.tokens <= 200
    assert len(packed.recalled) == 1
    kept = packed.recalled[0].turn.text
    assert kept.endswith("…") and huge.startswith(kept[:-1].rstrip()[:100])


def test_recent_turns_win_over_recalled_when_space_is_short(tokenizer):
    packer = PromptPacker(tokenizer, 90)
    packed = packer.pack("And now?", [scored(1, "an older fact about gardening and tomatoes")],
                         [turn(50, "the latest thing we said about tomatoes")])
    assert [t.turn for t in packed.recent] == [50]


def test_a_message_larger_than_the_budget_is_refused(tokenizer):
    with pytest.raises(PromptTooLong, match="budget is 32"):
        PromptPacker(tokenizer, 32).pack("word " * 100, [], [])
