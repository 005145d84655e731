"""What the `llm` model generates with: one small interface, two engines.

* vllm       vLLM's AsyncLLM (the production engine: a GPU, or vLLM's CPU build here).
* synthetic  a stand-in for a GPU's token stream (imem/synthetic_engine.py): real token strings of the
             served tokenizer at a configured rate per sequence, for measuring what memory costs when the
             tokens come from elsewhere. Benchmarks and crash rounds only; never `make serve`'s default.

Both stream `Delta`s: the text and token count generated since the previous delta. Everything else a
generation needs (tensors, back-pressure, cancellation, the memory handle) is the llm model's, the same
for either engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from imem.config import EngineConfig

ENGINES = ("vllm", "synthetic")


@dataclass
class Delta:
    text: str
    tokens: int  # tokens generated since the previous delta
    prompt_tokens: int
    finish_reason: str | None = None  # set on the last delta of a generation

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Engine(Protocol):
    bos_token: str | None

    @property
    def errored(self) -> bool:
        """True once the engine is dead (its process killed): the llm model then starts a new one."""

    def generate(self, prompt: str, sampling: dict, request_id: str) -> AsyncIterator[Delta]: ...

    async def abort(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


def start(config: EngineConfig) -> Engine:
    if config.kind == "vllm":
        return VllmEngine(config)
    if config.kind == "synthetic":
        from imem.synthetic_engine import SyntheticEngine

        return SyntheticEngine(config)
    raise ValueError(f"IMEM_ENGINE must be one of {', '.join(ENGINES)}, got {config.kind!r}")


class VllmEngine:
    def __init__(self, config: EngineConfig):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine_args()))
        tokenizer = self.llm.tokenizer
        # vLLM's TokenizerLike protocol leaves out bos_token, which the Hugging Face tokenizers it wraps have.
        self.bos_token = tokenizer.bos_token if tokenizer is not None else None  # type: ignore[attr-defined]

    @property
    def errored(self) -> bool:
        return self.llm.errored

    async def generate(self, prompt: str, sampling: dict, request_id: str) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Deltas even when the client wants one response: every token is a chance to notice cancellation.
        params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
        # A prompt rendered with the chat template already starts with BOS: don't add a second one.
        add_special = not (self.bos_token and prompt.startswith(self.bos_token))
        async for output in self.llm.generate(prompt, params, request_id,
                                              tokenization_kwargs={"add_special_tokens": add_special}):
            piece = output.outputs[0]
            yield Delta(piece.text, len(piece.token_ids), len(output.prompt_token_ids or []),
                        (piece.finish_reason or "stop") if output.finished else None)

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    def shutdown(self) -> None:
        self.llm.shutdown()
