"""Builds the tiny dev model: random weights, Mistral's architecture and Mistral's real tokenizer.

Its text is gibberish, but its tokenizer and chat template are those of Mistral-7B-Instruct-v0.2, so
every prompt-size figure measured with it is real. Far smaller than the default model (2 layers against
SmolLM2-135M's 30), it is what the tests and the benchmarks of what memory costs run (IMEM_MODEL).
Nothing is downloaded: the SentencePiece vocabulary ships inside mistral_common.

    python -m imem.dev_model [OUT_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from imem.config import REPO_ROOT

DEV_MODEL = REPO_ROOT / ".build" / "dev-model"

# Mistral-7B-Instruct-v0.2's own chat template (from its tokenizer_config.json): strict user/assistant
# alternation, no system role.
MISTRAL_V02_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def build(out: Path) -> Path:
    import mistral_common
    import torch
    from transformers import LlamaTokenizer, MistralConfig, MistralForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    vocab = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    shutil.copyfile(vocab, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 32768,
        "chat_template": MISTRAL_V02_CHAT_TEMPLATE,
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    # The fast tokenizer beside it, as Mistral's own folder ships it: converted from SentencePiece once here
    # rather than in every process at every start (imem/tokenizer.py). By the class tokenizer_config.json
    # names: AutoTokenizer would pick its converter by config.json's model type when that file is already
    # there, and that one drops SentencePiece's leading "▁" ("hi" -> "hi", not "▁hi").
    LlamaTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))

    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention rejects 16.
    config = MistralConfig(
        vocab_size=32000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=32768,
        bos_token_id=1, eos_token_id=2, dtype="float32",
    )
    MistralForCausalLM(config).save_pretrained(out)
    return out


def built(out: Path) -> bool:
    return all((out / name).exists() for name in ("config.json", "tokenizer.model", "tokenizer.json"))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEV_MODEL
    if built(out):
        print(f"dev model present at {out}")
        return
    print(f"built dev model at {build(out)}")


if __name__ == "__main__":
    main()
