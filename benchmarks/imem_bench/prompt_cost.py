"""`imem bench prompt-cost`: prompt tokens as a conversation grows, next to what the whole history needs.

In-process, with the real parts of the memory path: Memory over a Qdrant Edge store, all-MiniLM-L6-v2
embeddings and the model's own tokenizer and chat template. A synthetic conversation (a fact in its first
turn, then chat) is ingested up to each checkpoint; there a new question about the fact is recalled and
packed exactly as a chat request would be. "Full history" is every turn so far plus the question, rendered
with the same chat template: what a client that sends the whole conversation would pay, if the model's
context could hold it.

    imem bench prompt-cost                       # turns 10, 100, 1,000, 10,000
    imem bench prompt-cost --turns 10,100,1000 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from imem_bench import common
from imem_bench.synthetic import history

FACT = "My passport number is stored in the green folder, and my locker code is 4417."
QUESTION = "What was my locker code again?"


def full_history_tokens(tokenizer, lines: list[dict], question: str) -> int:
    messages = [{"role": h["role"], "content": h["text"]} for h in lines] + [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def measure(checkpoints: list[int], seed: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from imem.config import load
    from imem.embedding import Embedder
    from imem.memory import Memory
    from imem.store import EdgeTurnStore
    from imem.tokenizer import load_tokenizer

    config = load()
    tokenizer = load_tokenizer(config.engine.tokenizer_path)
    embedder = Embedder(config.embedder)
    folder = Path(tempfile.mkdtemp(prefix="imem-prompt-cost-"))
    store = EdgeTurnStore(folder / "edge-shard", config.embedder.dim)
    memory = Memory(config.memory, store, tokenizer, embedder.embed)
    lines = [{"role": "user", "text": FACT}, {"role": "assistant", "text": "Noted, I will remember that."}]
    lines += history(random.Random(seed), max(checkpoints) - 2, start=2)
    tenant, conversation, ingested, out = "bench", "prompt-cost", 0, {}
    try:
        for checkpoint in checkpoints:
            started = time.perf_counter()
            for start in range(ingested, checkpoint, 1000):
                chunk = lines[start:min(start + 1000, checkpoint)]
                memory.ingest(tenant, conversation, "\n".join(json.dumps(h) for h in chunk))
            ingest_s = time.perf_counter() - started
            ingested = checkpoint
            vector = embedder.embed([QUESTION])[0]
            started = time.perf_counter()
            recall = memory.recall(tenant, conversation, QUESTION, vector)
            recall_ms = (time.perf_counter() - started) * 1000
            full = full_history_tokens(tokenizer, lines[:checkpoint], QUESTION)
            recalled = [s.turn.text for s in recall.prompt.recalled] + [t.text for t in recall.prompt.recent]
            out[str(checkpoint)] = {
                "prompt_tokens": recall.prompt.tokens,
                "full_history_tokens": full,
                "savings_ratio": round(full / recall.prompt.tokens, 2),
                "fact_in_prompt": FACT in recalled,
                "recall_ms": round(recall_ms, 2),
                "ingest_s": round(ingest_s, 2),
            }
            e = out[str(checkpoint)]
            print(f"  turn {checkpoint:>6,}: prompt {e['prompt_tokens']:>5} tokens, full history {full:>9,} "
                  f"({e['savings_ratio']:,.1f}x), fact in prompt: {e['fact_in_prompt']}", flush=True)
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"turns": out, "prompt_budget": config.memory.prompt_budget, "max_model_len": config.engine.max_model_len}


def report(result: dict) -> str:
    rows = [[f"{int(k):,}", v["prompt_tokens"], f"{v['full_history_tokens']:,}", f"{v['savings_ratio']:,.1f}x",
             "yes" if v["fact_in_prompt"] else "no", v["recall_ms"]] for k, v in result["turns"].items()]
    return common.md_table(["turn", "prompt tokens", "full history tokens", "savings", "turn-1 fact in prompt",
                            "recall ms"], rows)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [int(k) for k in result["turns"]]
    fig, axis = plt.subplots(figsize=(6.5, 4))
    axis.plot(turns, [v["full_history_tokens"] for v in result["turns"].values()], "o-", label="full history")
    axis.plot(turns, [v["prompt_tokens"] for v in result["turns"].values()], "o-", label="with memory")
    axis.axhline(result["max_model_len"], color="grey", linestyle=":", label=f"context ({result['max_model_len']})")
    axis.set(xscale="log", yscale="log", xlabel="turns in the conversation", ylabel="prompt tokens",
             title="Prompt cost per request")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench prompt-cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", default="10,100,1000,10000", help="checkpoints (default 10,100,1000,10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default results/prompt-cost.json; PNG beside it)")
    parser.add_argument("--quick", action="store_true", help="turns 10, 100 and 1,000")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns = "10,100,1000"
    checkpoints = sorted(int(t) for t in args.turns.split(","))
    if checkpoints[0] < 2:
        parser.error("the first checkpoint must be at least 2 turns (the fact and its reply)")
    result = measure(checkpoints, args.seed)
    print()
    print(report(result))
    last = result["turns"][str(checkpoints[-1])]
    print(f"\nat turn {checkpoints[-1]:,} memory sends {last['prompt_tokens']} prompt tokens instead of "
          f"{last['full_history_tokens']:,} ({last['savings_ratio']:,.0f}x fewer)")
    result = {"benchmark": "prompt-cost", "machine": common.machine(),
              "settings": {k: v for k, v in vars(args).items() if k != "json"}, **result}
    path = common.write_results("prompt-cost", result, args.json)
    plot(result, common.plot_path(path))
    return 0
