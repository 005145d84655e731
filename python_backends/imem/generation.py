"""What a generation request is: its tensors read into a prompt and vLLM SamplingParams.

Accepts the tensors of NVIDIA's vLLM backend (`text_input`, `stream`, `sampling_parameters` as JSON,
`exclude_input_in_output`), or instead of `text_input` a chat's (`conversation_id`, `message`, ...), whose
prompt memory builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from imem.errors import BadRequest
from imem.tensors import json_object

# The sampling fields we take, with the type each must convert to. NVIDIA's backend sends numbers as
# strings ({"temperature": "0.1"}), so strings that parse are accepted too.
SAMPLING_FIELDS = {
    "max_tokens": int,
    "min_tokens": int,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "seed": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "repetition_penalty": float,
    "stop": list,
    "ignore_eos": bool,
    "n": int,
}
# Flags the NVIDIA backend reads from the same JSON; we always return these outputs, so they are no-ops.
IGNORED_FIELDS = {"return_finish_reason", "return_num_input_tokens", "return_num_output_tokens",
                  "return_cumulative_logprob", "lora_name"}


def _convert(name: str, value, kind):
    if kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise BadRequest(f"sampling_parameters.{name} must be a string or a list of strings")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise BadRequest(f"sampling_parameters.{name} must be true or false")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"sampling_parameters.{name} must be a number")
    try:
        number = float(value)
        if kind is int:
            if number != int(number):
                raise ValueError
            return int(number)
        return number
    except ValueError:
        raise BadRequest(f"sampling_parameters.{name} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from None


def parse_sampling(raw: str, default_max_tokens: int) -> dict:
    """The JSON text of `sampling_parameters` as keyword arguments for vllm.SamplingParams."""
    given = json_object(raw, "sampling_parameters")
    unknown = sorted(set(given) - set(SAMPLING_FIELDS) - IGNORED_FIELDS)
    if unknown:
        raise BadRequest(f"sampling_parameters has unknown field(s) {', '.join(unknown)}; "
                         f"supported: {', '.join(sorted(SAMPLING_FIELDS))}")
    params = {name: _convert(name, value, SAMPLING_FIELDS[name])
              for name, value in given.items() if name in SAMPLING_FIELDS}
    params.setdefault("max_tokens", default_max_tokens)
    if params.get("n", 1) != 1:
        raise BadRequest("sampling_parameters.n must be 1 (one reply per turn)")
    if params["max_tokens"] < 1:
        raise BadRequest("sampling_parameters.max_tokens must be at least 1")
    if "temperature" in params and params["temperature"] < 0:
        raise BadRequest("sampling_parameters.temperature must be >= 0")
    if "top_p" in params and not 0 < params["top_p"] <= 1:
        raise BadRequest("sampling_parameters.top_p must be in (0, 1]")
    return params


# The chat role's inputs: memory reads and checks them (the chat model hands them on untouched).
CHAT_INPUTS = ("conversation_id", "tenant", "message", "system", "recall_policy")


@dataclass
class GenerationRequest:
    prompt: str  # text_input; for a chat, the prompt memory builds (set after recall)
    stream: bool
    sampling: dict
    exclude_input: bool
    chat: bool  # a chat (conversation_id, message, ...) rather than a prompt (text_input)

    @classmethod
    def from_triton(cls, request, default_max_tokens: int, max_prompt_bytes: int = 1 << 20):
        from imem.tensors import optional_input, scalar, text

        chat = any(optional_input(request, name) is not None for name in CHAT_INPUTS)
        if chat and optional_input(request, "text_input") is not None:
            raise BadRequest("send either 'text_input' (a prompt, no memory) or 'conversation_id' and 'message' "
                             "(a chat), not both")
        return cls(
            prompt="" if chat else text(request, "text_input", max_bytes=max_prompt_bytes),
            stream=scalar(request, "stream", False),
            sampling=parse_sampling(text(request, "sampling_parameters", required=False), default_max_tokens),
            # A chat's reply is only the reply; a prompt's follows NVIDIA's default (the prompt included).
            exclude_input=chat or scalar(request, "exclude_input_in_output", False),
            chat=chat,
        )
