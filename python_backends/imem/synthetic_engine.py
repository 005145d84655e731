"""A stand-in for a GPU's token stream (IMEM_ENGINE=synthetic), for benchmarks and crash rounds.

On a GPU, generation costs the CPU host next to nothing: the tokens arrive at the GPU's pace. vLLM's CPU
build cannot show that (it spends the same cores memory needs), so this engine does: after a prefill delay
(IMEM_SYNTHETIC_TTFT_MS) each sequence streams exactly `max_tokens` tokens at IMEM_SYNTHETIC_TOKENS_PER_S,
from timers on the llm model's asyncio loop, with no model. Tokens are real: the served tokenizer's ids
and strings of a fixed passage, so token counts, text and prompt sizes are what a real model would give.
Streamed like vLLM: the first token alone, then every `stream_interval` tokens, the last at once; deltas
that the consumer has not taken yet are merged (so a lagging consumer gets fewer, larger responses).

What it cannot show: GPU memory bandwidth, and batching effects on time to first token (a real engine's
prefill slows down as its batch grows; this one's does not). Stop strings and EOS are not simulated.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from imem.config import EngineConfig
from imem.engine import Delta
from imem.tokenizer import load_tokenizer

PASSAGE = (
    "Memory keeps a conversation going long after its first turns have left the window. Each message is "
    "embedded, the few turns that matter are recalled beside the latest ones, and the prompt stays small. "
    "The weather was mild that spring, and the river rose slowly past the old harbour while the market "
    "opened early. She wrote the numbers down twice, checked them against the ledger, and sent the letter "
    "before noon. A quiet morning, a cup of tea, and a list of small tasks: that is how most good days begin. "
)


class TokenStream:
    """The passage's token ids and their text pieces, such that the pieces of any run of tokens join into
    what the tokenizer decodes them to. Endless: the passage repeats."""

    def __init__(self, tokenizer):
        ids = tokenizer(PASSAGE, add_special_tokens=False)["input_ids"]
        # Decoding strips the leading space of a text's first token: take pieces from the passage twice
        # over, so that the second copy gives the pieces of a passage that follows itself.
        twice = ids + ids
        texts = [tokenizer.decode(twice[:n]) for n in range(len(twice) + 1)]
        if any(not texts[n + 1].startswith(texts[n]) for n in range(len(twice))):
            raise ValueError("the synthetic engine's passage does not decode token by token with this tokenizer")
        pieces = [texts[n + 1][len(texts[n]):] for n in range(len(twice))]
        self.length = len(ids)
        self.first, self.again = pieces[:len(ids)], pieces[len(ids):]

    def text(self, start: int, count: int) -> str:
        return "".join(self.first[i] if i < self.length else self.again[i % self.length]
                       for i in range(start, start + count))


class Collector:
    """One request's deltas between the producer and the consumer, merged while the consumer is behind
    (vLLM's RequestOutputCollector does the same)."""

    def __init__(self):
        self.delta: Delta | None = None
        self.ready = asyncio.Event()

    def put(self, delta: Delta) -> None:
        if self.delta is None:
            self.delta = delta
            self.ready.set()
        else:
            self.delta = Delta(self.delta.text + delta.text, self.delta.tokens + delta.tokens, delta.prompt_tokens,
                               delta.finish_reason)

    async def get(self) -> Delta:
        while self.delta is None:
            await self.ready.wait()
        delta, self.delta = self.delta, None
        self.ready.clear()
        return delta


class SyntheticEngine:
    errored = False  # no process that could die

    def __init__(self, config: EngineConfig):
        self.tokenizer = load_tokenizer(config.tokenizer_path)
        self.bos_token = self.tokenizer.bos_token
        self.stream = TokenStream(self.tokenizer)
        self.tokens_per_s = config.synthetic_tokens_per_s
        self.ttft_s = config.synthetic_ttft_ms / 1000
        self.interval = max(1, config.stream_interval)
        self.max_model_len = config.max_model_len
        self.running: dict[str, asyncio.Task] = {}
        if self.tokens_per_s <= 0:
            raise ValueError(f"IMEM_SYNTHETIC_TOKENS_PER_S must be > 0, got {self.tokens_per_s}")

    def prompt_tokens(self, prompt: str) -> int:
        add_special = not (self.bos_token and prompt.startswith(self.bos_token))
        return len(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])

    async def generate(self, prompt: str, sampling: dict, request_id: str) -> AsyncIterator[Delta]:
        prompt_tokens = self.prompt_tokens(prompt)
        if prompt_tokens >= self.max_model_len:
            raise ValueError(f"the prompt is {prompt_tokens} tokens; the model's length is {self.max_model_len} "
                             "(IMEM_MAX_MODEL_LEN)")
        total = min(int(sampling.get("max_tokens", 16)), self.max_model_len - prompt_tokens)
        collector = Collector()
        task = asyncio.get_running_loop().create_task(self._produce(collector, prompt_tokens, total))
        self.running[request_id] = task
        try:
            while True:
                delta = await collector.get()
                yield delta
                if delta.finished:
                    return
        finally:
            task.cancel()
            self.running.pop(request_id, None)

    async def _produce(self, collector: Collector, prompt_tokens: int, total: int) -> None:
        """Token i is ready `ttft + i / rate` seconds after the request came; a delta goes out with the
        first token, then every `interval` tokens, and with the last."""
        loop = asyncio.get_running_loop()
        first_at = loop.time() + self.ttft_s
        sent = 0
        while sent < total:
            count = 1 if sent == 0 else min(self.interval, total - sent)
            await asyncio.sleep(max(0.0, first_at + (sent + count - 1) / self.tokens_per_s - loop.time()))
            collector.put(Delta(self.stream.text(sent, count), count, prompt_tokens,
                                "length" if sent + count == total else None))
            sent += count

    async def abort(self, request_id: str) -> None:
        task = self.running.pop(request_id, None)
        if task is not None:
            task.cancel()

    def shutdown(self) -> None:
        """Nothing to stop: its tasks live on the llm model's loop, which stops with the model."""
