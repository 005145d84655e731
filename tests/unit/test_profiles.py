"""Per-model memory profiles (imem/profiles.py): the served model picks its recall settings and rendering,
IMEM_* variables still override them, and the small model's settings take effect in recall and packing."""

import dataclasses

import pytest

from imem import profiles
from imem.config import MemoryConfig, load
from imem.memory import Memory
from imem.prompt import RECENT_HEADER, PromptPacker
from imem.store import EdgeTurnStore
from imem.turn import ScoredTurn, Turn


def test_the_profile_follows_the_models_architecture(default_model_path, dev_model_path, tmp_path):
    assert profiles.detect(str(default_model_path)) == "smollm2-135m"
    assert profiles.detect(str(dev_model_path)) == "default"  # Mistral's architecture: the defaults
    assert profiles.detect("TheBloke/Mistral-7B-Instruct-v0.2-GPTQ") == "default"  # not a local folder
    assert profiles.detect(str(tmp_path)) == "default"


def test_load_applies_the_profile_and_variables_still_win(default_model_path, dev_model_path, monkeypatch):
    monkeypatch.setenv("IMEM_MODEL", str(default_model_path))
    small = load().memory
    assert small.profile == "smollm2-135m"
    for key, value in profiles.PROFILES["smollm2-135m"].items():
        assert getattr(small, key) == value
    monkeypatch.setenv("IMEM_TOP_K", "7")
    monkeypatch.setenv("IMEM_MEMORY_LAST", "0")
    overridden = load().memory
    assert overridden.top_k == 7 and overridden.memory_last is False
    assert overridden.context_budget == profiles.PROFILES["smollm2-135m"]["context_budget"]
    monkeypatch.setenv("IMEM_PROFILE", "default")
    assert load().memory.context_budget == MemoryConfig().context_budget
    monkeypatch.setenv("IMEM_MODEL", str(dev_model_path))
    monkeypatch.delenv("IMEM_PROFILE")
    monkeypatch.delenv("IMEM_TOP_K")
    monkeypatch.delenv("IMEM_MEMORY_LAST")
    assert load().memory == dataclasses.replace(MemoryConfig(), profile="default")
    monkeypatch.setenv("IMEM_PROFILE", "nonsense")
    with pytest.raises(ValueError, match="IMEM_PROFILE"):
        load()


def test_memory_last_puts_the_recalled_lines_right_before_the_message(default_model_path):
    from transformers import AutoTokenizer

    chatml = AutoTokenizer.from_pretrained(default_model_path)
    fact = ScoredTurn(Turn("t", "c", 2, "user", "My locker code is 4417."), 1.0)
    recent = [Turn("t", "c", 9, "user", "Nice weather today.")]
    last = PromptPacker(chatml, 256, memory_last=True, memory_header="Facts:").pack("Code?", [fact], recent)
    system = last.text.split("<|im_start|>user\n")[0]
    assert system.index(RECENT_HEADER) < system.index("Facts:\n- user: My locker code is 4417.")
    first = PromptPacker(chatml, 256).pack("Code?", [fact], recent).text
    assert first.index("My locker code") < first.index(RECENT_HEADER)


def test_the_assistants_own_replies_are_not_recalled_when_the_profile_says_so(tmp_path, tokenizer, embedder):
    store = EdgeTurnStore(tmp_path / "edge")
    history = [("user", "My locker code is 4417."), ("assistant", "Sorry, I don't know your locker code."),
               ("user", "I like the rain."), ("assistant", "The rain is nice."), ("user", "Me too.")]
    turns = [Turn("t", "c", 0, role, text) for role, text in history]
    store.add(turns, embedder.embed([t.text for t in turns]))
    try:
        settings = {"recent_turns": 0, "neighbours": 0, "top_k": 5}
        every = Memory(dataclasses.replace(MemoryConfig(), **settings), store, tokenizer, embedder.embed)
        assert "assistant" in {t["role"] for t in every.recall_only("t", "c", "What is my locker code?")["recalled"]}
        users = Memory(dataclasses.replace(MemoryConfig(), recall_assistant=False, **settings), store, tokenizer,
                       embedder.embed)
        recalled = users.recall_only("t", "c", "What is my locker code?")["recalled"]
        assert recalled and {t["role"] for t in recalled} == {"user"}
        assert recalled[0]["text"] == "My locker code is 4417."
    finally:
        store.close()
