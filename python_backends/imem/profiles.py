"""Per-model memory profiles: how much recalled context the served model gets, and how it is written.

A 7B instruct model reads a dozen recalled turns and picks out the one that answers; a 135M model loses the
fact among them and answers best from two or three lines placed right before the question. So the context
budget and the rendering follow the served model: `load()` (imem/config.py) picks a profile from the model
folder's config.json and uses its settings as the defaults of MemoryConfig. An IMEM_* variable still
overrides any one setting, and IMEM_PROFILE names a profile outright ("auto", the default, picks by model).

A profile is matched by architecture, not by path: the fields of config.json that identify one model
family and size (MATCH). A model no profile matches (and a model that is not a local folder: a hub id)
gets `default`, MemoryConfig's own values, which were measured with Mistral-7B-Instruct, the production
model (docs/quality.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Settings of each profile (MemoryConfig field -> value); `default` is MemoryConfig as it stands.
# smollm2-135m: chosen on the LoCoMo dev split and planted facts, in process (docs/quality.md "Answers"): the
# best 2 recalled lines in 120 tokens and no recent turns (3 lines in 160 tokens, or 2 recent turns beside
# them, answered fewer planted facts), after everything else in the system message (nearest the question),
# under a header that asks for a short answer (LoCoMo's answers are a few words), and never the model's own
# past replies (apologies, small talk, "I don't know"): it repeats a recalled reply instead of answering.
PROFILES: dict[str, dict] = {
    "default": {},
    "smollm2-135m": {
        "top_k": 2,
        "context_budget": 120,
        "recent_turns": 0,
        "memory_last": True,
        "recall_assistant": False,
        "memory_header": "Answer the user's question in a few words, using these notes from earlier in the "
                         "conversation:",
    },
}
# config.json fields that identify the model of each profile (all must be equal).
MATCH: dict[str, dict] = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152},
}
# The variable that overrides each setting a profile may set.
ENV = {"top_k": "IMEM_TOP_K", "context_budget": "IMEM_CONTEXT_BUDGET", "recent_turns": "IMEM_RECENT_TURNS",
       "memory_last": "IMEM_MEMORY_LAST", "recall_assistant": "IMEM_RECALL_ASSISTANT",
       "memory_header": "IMEM_MEMORY_HEADER", "prompt_budget": "IMEM_PROMPT_BUDGET"}


def detect(model: str) -> str:
    """The profile of the model in folder `model`: the first whose MATCH fields its config.json has."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return "default"
    for name, fields in MATCH.items():
        if all(config.get(key) == value for key, value in fields.items()):
            return name
    return "default"


def select(model: str) -> tuple[str, dict]:
    """(profile name, the settings it gives that no IMEM_* variable overrides)."""
    name = os.environ.get("IMEM_PROFILE", "auto")
    if name == "auto":
        name = detect(model)
    if name not in PROFILES:
        raise ValueError(f"IMEM_PROFILE must be 'auto' or one of {', '.join(PROFILES)}, got {name!r}")
    return name, {key: value for key, value in PROFILES[name].items() if ENV[key] not in os.environ}
