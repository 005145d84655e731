import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def dev_model_path() -> Path:
    from imem import dev_model
    from imem.config import load

    path = Path(load().engine.model)
    if not (path / "config.json").exists():
        dev_model.build(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(dev_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(dev_model_path)


@pytest.fixture(scope="session")
def embedder():
    from imem.config import EmbedderConfig
    from imem.embedding import Embedder

    return Embedder(EmbedderConfig())
