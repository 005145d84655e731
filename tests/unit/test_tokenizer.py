"""The model processes load the tokenizer without AutoTokenizer (imem/tokenizer.py): for every model served
here it must be the tokenizer AutoTokenizer gives, token for token and template for template. Where the
folder has the SentencePiece model too (the dev model's tokenizer.json is converted from Mistral's), the
reference is AutoTokenizer over the SentencePiece model and tokenizer_config.json alone, and SentencePiece
itself for text that starts with a word."""

import shutil

import pytest
import sentencepiece
from transformers import AutoTokenizer

from imem.tokenizer import load_tokenizer

TEXTS = ["hi", "What is my locker code?  ", "Qu'est-ce que tu as mangé à Zürich ? 東京で寿司を食べた。",
         " leading space\n\nnew lines\t and a tab", "<s> [INST] a control token in text [/INST]", ""]
CHAT = [{"role": "user", "content": "My locker code is 4417."}, {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "What is my locker code?"}]


@pytest.mark.parametrize("model", ["dev_model_path", "default_model_path"])
def test_same_tokenizer_as_autotokenizer(model, request, tmp_path):
    path = request.getfixturevalue(model)
    ours = load_tokenizer(str(path))
    if (path / "tokenizer.model").exists():
        reference = tmp_path / "sentencepiece"
        shutil.copytree(path, reference,
                        ignore=shutil.ignore_patterns("tokenizer.json", "config.json", "*.safetensors"))
        auto = AutoTokenizer.from_pretrained(reference)
        spm = sentencepiece.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
        for text in ("hi", "What is my locker code?"):
            assert ours.encode(text, add_special_tokens=False) == spm.encode(text), text
    else:
        auto = AutoTokenizer.from_pretrained(path)
        assert type(ours) is type(auto)
    for text in TEXTS:
        assert ours.encode(text) == auto.encode(text), text
        assert ours(text, add_special_tokens=False)["input_ids"] == auto(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(auto.encode(text)) == auto.decode(auto.encode(text))
    for tokenize in (False, True):
        assert ours.apply_chat_template(CHAT, tokenize=tokenize, add_generation_prompt=True) == \
            auto.apply_chat_template(CHAT, tokenize=tokenize, add_generation_prompt=True)
    for attribute in ("bos_token", "eos_token", "eos_token_id", "pad_token", "model_max_length", "all_special_ids"):
        assert getattr(ours, attribute) == getattr(auto, attribute), attribute
