"""The synthetic engine streams like a GPU: real tokens at a set rate, vLLM's stream interval, merged deltas
for a lagging consumer, and an abort that stops it."""

import asyncio
import time
from dataclasses import replace

import pytest

from imem.config import EngineConfig
from imem.engine import start
from imem.synthetic_engine import SyntheticEngine


@pytest.fixture(scope="module")
def config(dev_model_path):
    return replace(EngineConfig(), kind="synthetic", model=str(dev_model_path), tokenizer="",
                   synthetic_tokens_per_s=200.0, synthetic_ttft_ms=30.0, stream_interval=4, max_model_len=2048)


def collect(engine, prompt="[INST] hello [/INST]", max_tokens=41, consume_delay=0.0):
    async def run():
        deltas, started = [], time.perf_counter()
        async for delta in engine.generate(prompt, {"max_tokens": max_tokens}, "r1"):
            deltas.append((time.perf_counter() - started, delta))
            await asyncio.sleep(consume_delay)
        return deltas

    return asyncio.run(run())


def test_it_streams_max_tokens_real_tokens_at_the_set_rate(config, tokenizer):
    engine = start(config)
    assert isinstance(engine, SyntheticEngine)
    deltas = collect(engine)
    tokens = [d.tokens for _, d in deltas]
    # vLLM's stream interval: the first token alone, then 4 at a time, the rest with the last.
    assert tokens == [1] + [4] * 10
    assert sum(tokens) == 41 and deltas[-1][1].finish_reason == "length"
    assert all(d.finish_reason is None for _, d in deltas[:-1])
    text = "".join(d.text for _, d in deltas)
    # Real token strings: the tokenizer reads the text back as (about) as many tokens.
    assert abs(len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 41) <= 2
    assert deltas[0][1].prompt_tokens == len(tokenizer("[INST] hello [/INST]")["input_ids"])
    # Token i is ready 30 ms + i / 200 s after the request, never sooner: the first at 30 ms, the last at
    # 230 ms (the upper bound only catches a rate off by an order of magnitude, not a slow machine).
    assert deltas[0][0] >= 0.029 and deltas[-1][0] >= 0.229
    assert deltas[-1][0] < 3.0


def test_deltas_are_merged_while_the_consumer_lags(config):
    deltas = collect(start(config), max_tokens=41, consume_delay=0.1)
    assert sum(d.tokens for _, d in deltas) == 41
    assert len(deltas) < 11  # fewer, larger responses than the 11 a prompt consumer gets
    assert deltas[-1][1].finished


def test_a_long_reply_wraps_the_passage_and_its_text_still_decodes(config, tokenizer):
    engine = start(replace(config, synthetic_tokens_per_s=100000.0, synthetic_ttft_ms=0.0))
    text = "".join(d.text for _, d in collect(engine, max_tokens=700))
    assert abs(len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 700) <= 8


def test_the_model_length_bounds_the_reply_and_refuses_a_prompt_too_long(config):
    engine = start(replace(config, max_model_len=20, synthetic_ttft_ms=0.0, synthetic_tokens_per_s=100000.0))
    prompt = "[INST] hello [/INST]"
    deltas = collect(engine, prompt=prompt, max_tokens=100)
    assert sum(d.tokens for _, d in deltas) == 20 - deltas[0][1].prompt_tokens
    with pytest.raises(ValueError, match="IMEM_MAX_MODEL_LEN"):
        collect(engine, prompt="word " * 40)


def test_abort_stops_the_stream(config):
    engine = start(replace(config, synthetic_tokens_per_s=50.0))

    async def run():
        got = []
        async for delta in engine.generate("[INST] hi [/INST]", {"max_tokens": 500}, "r2"):
            got.append(delta)
            if len(got) == 2:
                await engine.abort("r2")
                break
        await asyncio.sleep(0.2)
        return got, dict(engine.running)

    got, running = asyncio.run(run())
    assert len(got) == 2 and not running


def test_an_unknown_engine_is_named(config):
    with pytest.raises(ValueError, match="IMEM_ENGINE must be one of vllm, synthetic"):
        start(replace(config, kind="tpu"))
