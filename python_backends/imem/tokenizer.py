"""The served model's tokenizer, for the chat template and token counts in the model processes.

A model folder with a tokenizer.json (every model served here, and Mistral-7B-Instruct's GPTQ copies) is
loaded as transformers' fast tokenizer class directly: `AutoTokenizer` first imports the model-config
machinery, which pulls in torch and scikit-learn (about 4 s of a model process's start, in each process
that loads a tokenizer), and for these folders it resolves to that same class anyway
(tests/unit/test_tokenizer.py). A folder with only a slow tokenizer goes through `AutoTokenizer`.
"""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(path: str):
    if (Path(path) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
