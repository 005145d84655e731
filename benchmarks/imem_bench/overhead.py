"""`imem bench overhead`: what memory costs on top of the bare LLM, in one run on one server.

Two engines (--engine):
  vllm       vLLM's CPU build with the dev model (the default): what a user without a GPU sees. On a small
             CPU host both kinds of request are CPU-bound, so their ratio says how memory and vLLM share
             the cores, not what memory costs beside a GPU.
  synthetic  the stand-in for a GPU's token stream (IMEM_ENGINE=synthetic: IMEM_SYNTHETIC_TOKENS_PER_S per
             sequence after IMEM_SYNTHETIC_TTFT_MS, close to no CPU): whether memory keeps up when tokens
             come from a GPU. Defaults: 1, 16, 64 and 128 conversations, 128-token replies.

For each concurrency (conversations in flight at once), the same load is sent two ways and alternated:
  chat  a chat: embed the message, recall + pack the prompt, generate, store the exchange
  llm   a plain generation on the same model and engine (`text_input`, no memory), given prompts of exactly
        the token counts chat built (the chat template around random words, so vLLM's prefix cache helps
        it no more than it helps chat)
Both stream over Triton gRPC with the same sampling (max_tokens, ignore_eos: every completion has the same
length). Conversations are first given --history turns of synthetic history (memory ingest), so recall
works on a real store and prompts are full-sized. Reported per concurrency: time to first token, full-
response latency, tokens/s, Triton's own per-model time for the chat requests (where the added time goes),
and, when the bench started the server, the CPU time each of its processes used per request of either
kind (what the added time costs on cores that memory and vLLM share).

    imem bench overhead                       # starts its own server; 1, 8 and 32 conversations
    imem bench overhead --engine synthetic    # results/overhead-synthetic.json and .png
    imem bench overhead --url grpc://localhost:8001 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from imem import config
from imem_bench import common
from imem_bench.processes import cpu_by_role, cpu_seconds
from imem_bench.synthetic import Conversation, history
from imem_client import wire

# With the synthetic engine (a GPU's token stream), memory must keep up: chat keeps at least these shares
# of the bare llm's tokens/s, and adds at most this much time to the first token (p50, ms) at these levels.
SYNTHETIC_TARGETS = {"throughput_ratio_at_least": {"64": 0.95, "128": 0.90},
                     "added_ttft_p50_ms_at_most": {"1": 10.0, "64": 25.0}}
# Each engine's defaults: (concurrency, max tokens, at least this many requests per phase)
DEFAULTS = {"vllm": ("1,8,32", 32, 48), "synthetic": ("1,16,64,128", 128, 24)}
# Pause before each timed phase: memory embeds a chat phase's replies in the background (backfill, which
# lingers IMEM_BACKFILL_LINGER_MS), and without the pause that work ran into the next phase and was
# charged to the bare llm's tokens/s whenever the bare llm came next.
SETTLE_S = 2.0


class PromptMaker:
    """Prompts of an exact token count (as vLLM will count them), built with the model's chat template."""

    def __init__(self, seed: int = 0):
        from imem.config import load
        from imem.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(load().engine.tokenizer_path)
        vocab = self.tokenizer.get_vocab()
        # Whole lowercase words that are one token each, so that a word more or less is a token more or less.
        self.words = sorted(w[1:] for w in vocab if w.startswith("\u2581") and w[1:].isalpha() and w[1:].islower()
                            and 3 <= len(w) <= 8)
        self.rng = random.Random(seed)
        self.overhead = self.count(self.render(""))

    def render(self, content: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def make(self, tokens: int) -> str:
        words = [self.rng.choice(self.words) for _ in range(max(1, tokens - self.overhead))]
        for _ in range(50):
            prompt = self.render(" ".join(words))
            difference = self.count(prompt) - tokens
            if difference == 0 or (difference < 0 and not words):
                return prompt
            if difference > 0:
                del words[-min(difference, len(words) - 1 or 1):]
                if len(words) == 0:
                    return prompt
            else:
                words.extend(self.rng.choice(self.words) for _ in range(-difference))
        return prompt


async def _ingest(client, grpc, tenant: str, conversations: list[str], turns: int, seed: int):
    rng = random.Random(seed)
    for conversation in conversations:
        lines = "\n".join(json.dumps(h) for h in history(rng, turns))
        await client.infer(wire.MEMORY, wire.inputs(grpc, wire.memory_fields("ingest", conversation, tenant,
                                                                            payload=lines)))


def llm_prompts(maker: PromptMaker, prompt_tokens: list[list[int]], per_worker: int) -> list[list[str]]:
    """Each llm worker's prompts for one phase, replaying the sizes its chat worker saw. Made before the
    phase is timed: making one takes the tokenizer several passes, which would otherwise be charged to
    the bare llm's latency and throughput (and, in the one event loop, hold up every other stream)."""
    return [[maker.make(sizes[step % len(sizes)]) for step in range(per_worker)] for sizes in prompt_tokens]


async def _phase(clients, grpc, kind: str, tenant: str, scripts: list[Conversation], per_worker: int,
                 prompts: list[list[str]], sampling: str) -> list[common.Sample]:
    """`len(scripts)` workers, each `per_worker` requests back to back; chat continues its conversation,
    llm sends the prompts made for it (llm_prompts)."""

    async def worker(index: int):
        client, out = clients[index % len(clients)], []
        for step in range(per_worker):
            if kind == "chat":
                script = scripts[index]
                if script.done:
                    script.position = 0
                message, _ = script.next_message()
                fields = wire.chat_fields(script.id, message, tenant, sampling=json.loads(sampling))
                out.append(await common.stream_once(client, wire.CHAT, wire.inputs(grpc, fields)))
            else:
                fields = wire.prompt_fields(prompts[index][step], sampling=sampling)
                out.append(await common.stream_once(client, wire.CHAT, wire.inputs(grpc, fields)))
        return out

    results = await asyncio.gather(*(worker(i) for i in range(len(scripts))))
    return [s for worker_samples in results for s in worker_samples]


def cpu_ms_per_request(used: dict, requests: int) -> dict:
    """{process: CPU seconds} over some requests as CPU milliseconds per request."""
    return {name: round(seconds * 1000 / max(requests, 1), 2) for name, seconds in used.items()}


def own_cpu_seconds() -> float:
    """CPU time this benchmark process (the client) has used, all its threads."""
    return cpu_seconds(os.getpid()) or 0.0


async def measure(url: str, concurrencies: list[int], per_worker_min: int, requests_min: int, rounds: int,
                  history_turns: int, max_tokens: int, seed: int, server=None) -> dict:
    import tritonclient.grpc as grpc
    import tritonclient.grpc.aio as aio

    address = url.split("://", 1)[-1]
    # A few channels, as many clients would have; one channel per conversation would measure gRPC set-up.
    clients = [aio.InferenceServerClient(address, channel_args=wire.GRPC_CHANNEL_ARGS) for _ in range(4)]
    maker = PromptMaker(seed)
    # No seed: vLLM 0.32's CPU worker dies when a seeded request's prefill is chunked under load.
    sampling = json.dumps({"max_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0})
    tenant = f"bench-overhead-{int(time.time())}"
    levels = {}
    try:
        for concurrency in concurrencies:
            per_worker = max(per_worker_min, -(-requests_min // concurrency))
            rng = random.Random(seed + concurrency)
            scripts = [Conversation(f"c{concurrency}-{i}", rng, turns=10) for i in range(concurrency)]
            print(f"\n{concurrency} conversation(s): ingesting {history_turns} turns of history each ...", flush=True)
            await _ingest(clients[0], grpc, tenant, [s.id for s in scripts], history_turns, seed)
            # Warm-up: not measured; gives the prompt sizes for the llm phases.
            warm = await _phase(clients, grpc, "chat", tenant, scripts, 2, [], sampling)
            failed = [s.error for s in warm if s.error]
            if failed:
                raise RuntimeError(f"chat failed during warm-up: {failed[0]}")
            sizes = [[s.prompt_tokens for s in warm[i * 2:(i + 1) * 2]] for i in range(concurrency)]
            await _phase(clients, grpc, "llm", tenant, scripts, 1, llm_prompts(maker, sizes, 1), sampling)
            samples: dict[str, list[common.Sample]] = {"chat": [], "llm": []}
            # Rounds alternate chat and llm: throughput is over each model's own phases, not the span between.
            walls = {"chat": 0.0, "llm": 0.0}
            # CPU seconds used during each model's phases, per process
            cpu: dict[str, dict[str, float]] = {"chat": {}, "llm": {}}
            chat_stats: dict[str, dict] = {"memory": {}, "chat": {}}
            for round_ in range(rounds):
                order = ("chat", "llm") if round_ % 2 == 0 else ("llm", "chat")
                for kind in order:
                    prompts = llm_prompts(maker, sizes, per_worker) if kind == "llm" else []
                    await asyncio.sleep(SETTLE_S)
                    before = await common.model_stats(clients[0], ["memory", "chat"])
                    cpu_before = {**(cpu_by_role(server) if server else {}), "bench client": own_cpu_seconds()}
                    started = time.perf_counter()
                    got = await _phase(clients, grpc, kind, tenant, scripts, per_worker, prompts, sampling)
                    walls[kind] += time.perf_counter() - started
                    cpu_after = {**(cpu_by_role(server) if server else {}), "bench client": own_cpu_seconds()}
                    for name, used in cpu_after.items():
                        cpu[kind][name] = cpu[kind].get(name, 0.0) + used - cpu_before.get(name, used)
                    if kind == "chat":
                        after = await common.model_stats(clients[0], ["memory", "chat"])
                        chat_stats = common.stats_sum(chat_stats, common.stats_delta(before, after, 1))
                        per: dict[int, list[int]] = {w: [] for w in range(concurrency)}
                        for i, s in enumerate(got):
                            per[i // per_worker].append(s.prompt_tokens)
                        sizes = [per[w] or [1] for w in range(concurrency)]
                    samples[kind].extend(got)
                    print(f"  round {round_ + 1} {kind:4s}: {len(got)} requests in "
                          f"{time.perf_counter() - started:.1f}s", flush=True)
            chat, llm = (common.summarize_samples(samples[kind], walls[kind]) for kind in ("chat", "llm"))
            chats = len(samples["chat"])
            level = {"concurrency": concurrency, "chat": chat, "llm": llm,
                     "triton_ms_per_chat_request": {model: {k: round(v / max(chats, 1), 3) for k, v in totals.items()}
                                                    for model, totals in chat_stats.items()},
                     "cpu_ms_per_request": {kind: cpu_ms_per_request(cpu[kind], len(samples[kind]))
                                            for kind in ("chat", "llm")}}
            if chat.get("tokens_per_s") and llm.get("tokens_per_s"):
                level["throughput_ratio"] = round(chat["tokens_per_s"] / llm["tokens_per_s"], 3)
                level["added_ttft_p50_ms"] = round(chat["ttft_p50_ms"] - llm["ttft_p50_ms"], 2)
                level["added_ttft_p99_ms"] = round(chat["ttft_p99_ms"] - llm["ttft_p99_ms"], 2)
                level["added_p50_ms"] = round(chat["latency_p50_ms"] - llm["latency_p50_ms"], 2)
                level["added_p95_ms"] = round(chat["latency_p95_ms"] - llm["latency_p95_ms"], 2)
            levels[str(concurrency)] = level
    finally:
        for client in clients:
            await client.close()
    return levels


def offered(levels: dict, tokens_per_s: float, ttft_ms: float, max_tokens: int) -> None:
    """Adds to each level what a client that kept every sequence busy would get from the synthetic engine
    (conversations x tokens per reply / time per reply) and the share of it the bare llm phase reached:
    the bench's own client is not the limit where that share is near 1."""
    per_reply_s = ttft_ms / 1000 + (max_tokens - 1) / tokens_per_s
    for key, level in levels.items():
        rate = int(key) * max_tokens / per_reply_s
        level["offered_tokens_per_s"] = round(rate, 1)
        level["bare_reaches_offered"] = round((level["llm"].get("tokens_per_s") or 0) / rate, 3)


def report(levels: dict) -> str:
    header = ["conversations", "model", "req/s", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "latency p50 ms",
              "latency p95 ms", "prompt tokens", "errors"]
    rows = []
    for key, level in levels.items():
        for model in ("chat", "llm"):
            m = level[model]
            rows.append([key, model, m.get("requests_per_s"), m.get("tokens_per_s"), m.get("ttft_p50_ms"),
                         m.get("ttft_p99_ms"), m.get("latency_p50_ms"), m.get("latency_p95_ms"),
                         m.get("prompt_tokens_mean"), m.get("errors")])
    lines = [common.md_table(header, rows), ""]
    for key, level in levels.items():
        if "throughput_ratio" in level:
            stats = level["triton_ms_per_chat_request"].get("memory", {})
            lines.append(f"{key} conversation(s): chat keeps {level['throughput_ratio']:.0%} of bare llm tokens/s; "
                         f"TTFT +{level['added_ttft_p50_ms']:.1f} ms p50, +{level['added_ttft_p99_ms']:.1f} ms p99; "
                         f"full reply {level['added_p50_ms']:+.1f} ms p50; memory per chat: Triton compute "
                         f"{stats.get('compute_infer_ms', 0):.1f} ms, queue {stats.get('queue_ms', 0):.1f} ms, "
                         f"{stats.get('calls', 0):.1f} calls"
                         + (f"; bare llm reached {level['bare_reaches_offered']:.0%} of the offered "
                            f"{level['offered_tokens_per_s']:.0f} tokens/s" if "offered_tokens_per_s" in level else ""))
            for kind, used in level.get("cpu_ms_per_request", {}).items():
                lines.append(f"  CPU ms per {kind} request: "
                             + ", ".join(f"{name} {ms:.1f}" for name, ms in used.items()))
    return "\n".join(lines)


def plot(levels: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(levels)
    x = range(len(keys))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, model in ((-0.2, "chat"), (0.2, "llm")):
        left.bar([i + offset for i in x], [levels[k][model].get("tokens_per_s") or 0 for k in keys], width=0.4,
                 label="chat (with memory)" if model == "chat" else "bare llm")
        right.bar([i + offset for i in x], [levels[k][model].get("ttft_p50_ms") or 0 for k in keys], width=0.4,
                  label=f"{model} p50")
        right.scatter([i + offset for i in x], [levels[k][model].get("ttft_p99_ms") or 0 for k in keys],
                      marker="_", s=400, color="black", label="p99" if model == "chat" else None)
    for axis, heading, unit in ((left, "Throughput", "completion tokens/s"), (right, "Time to first token", "ms")):
        axis.set_xticks(list(x), [f"{k} conv." for k in keys])
        axis.set_title(heading)
        axis.set_ylabel(unit)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def targets_met(levels: dict) -> dict:
    met = {}
    for name, floors in SYNTHETIC_TARGETS.items():
        key = name.removesuffix("_at_least").removesuffix("_at_most")
        for level, bound in floors.items():
            value = levels.get(level, {}).get(key)
            if value is not None:
                met[f"{key}@{level}"] = value >= bound if name.endswith("_at_least") else value <= bound
    return met


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imem bench overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running server (grpc://host:port); default: start one")
    parser.add_argument("--engine", choices=sorted(DEFAULTS), default="vllm",
                        help="the engine of the server it starts (default vllm)")
    parser.add_argument("--concurrency", default=None, help="conversations in flight (default 1,8,32 on vllm, "
                                                             "1,16,64,128 on synthetic)")
    parser.add_argument("--requests", type=int, default=None, help="at least this many requests per model, "
                                                                   "concurrency and round (default 48 / 24)")
    parser.add_argument("--per-conversation", type=int, default=3, help="and at least this many per "
                                                                       "conversation (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating chat/llm rounds (default 2)")
    parser.add_argument("--history", type=int, default=40, help="turns ingested into each conversation first")
    parser.add_argument("--max-tokens", type=int, default=None, help="completion tokens per request "
                                                                     "(default 32 / 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default results/overhead.json, "
                                                     "results/overhead-synthetic.json; PNG beside it)")
    parser.add_argument("--quick", action="store_true", help="two small levels, few requests (a smoke run)")
    args = parser.parse_args(argv)
    concurrency, max_tokens, requests = DEFAULTS[args.engine]
    args.concurrency = args.concurrency or concurrency
    args.max_tokens = args.max_tokens or max_tokens
    args.requests = args.requests or requests
    if args.quick:
        args.concurrency, args.requests, args.rounds, args.history = "1,4", 4, 2, 10
        args.per_conversation, args.max_tokens = 1, min(args.max_tokens, 16)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    engine = config.load().engine
    env = {"IMEM_ENGINE": args.engine}
    if args.engine == "synthetic":
        # Room for every conversation of the largest level, and for its warm-up, without a refusal.
        env["IMEM_MAX_GENERATIONS"] = str(max(2 * max(concurrencies), engine.max_generations))
    with common.server(args.url, env=env) as (grpc_url, _, server):
        levels = common.run_async(measure(grpc_url, concurrencies, args.per_conversation, args.requests, args.rounds,
                                          args.history, args.max_tokens, args.seed, server))
    synthetic = args.engine == "synthetic" and not args.url
    if synthetic:
        offered(levels, engine.synthetic_tokens_per_s, engine.synthetic_ttft_ms, args.max_tokens)
    print()
    print(report(levels))
    first = levels[str(concurrencies[0])]
    result = {
        "benchmark": "overhead",
        "engine": args.engine if not args.url else None,
        "machine": common.machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        # tokens per streamed response of the server this bench started (a --url server's is not known here)
        "stream_interval": None if args.url else engine.stream_interval,
        "levels": levels,
        "added_p50_ms": first.get("added_ttft_p50_ms" if synthetic else "added_p50_ms"),
        "added_p95_ms": first.get("added_p95_ms"),
        "added_ttft_p50_ms": first.get("added_ttft_p50_ms"),
        "throughput_ratio": {k: v.get("throughput_ratio") for k, v in levels.items()},
    }
    if synthetic:
        result["synthetic"] = {"tokens_per_s": engine.synthetic_tokens_per_s, "ttft_ms": engine.synthetic_ttft_ms}
        result["targets"] = {**SYNTHETIC_TARGETS, "met": targets_met(levels)}
    name = "overhead-synthetic" if args.engine == "synthetic" else "overhead"
    path = common.write_results(name, result, args.json)
    plot(levels, common.plot_path(path), "What memory costs beside "
         + ("a GPU's token stream (synthetic engine)" if synthetic else "the bare LLM (same prompts, same load)"))
    errors = sum(level[m].get("errors", 0) for level in levels.values() for m in ("chat", "llm"))
    return 0 if errors == 0 else 1
