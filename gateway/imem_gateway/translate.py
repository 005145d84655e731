"""OpenAI chat requests to `chat` ensemble turns, and ensemble outputs back to OpenAI responses.

The service keeps the conversation itself, so of `messages` only the last one (the user's new turn) is
sent to the model; system/developer messages become the ensemble's `system` input, and earlier
user/assistant messages are history that seeds memory when the conversation is new.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from imem_gateway.errors import bad_request
from imem_gateway.schema import ChatCompletionRequest, Message

MAX_ID_BYTES = 256  # the memory model's limit on conversation ids and tenants
MAX_STOP = 4  # as OpenAI


@dataclass
class ChatTurn:
    conversation_id: str
    message: str
    system: str = ""
    history: list[dict] = field(default_factory=list)  # {"role", "text"}, oldest first
    sampling: dict = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


def _utf8(value: str, param: str) -> str:
    # JSON can carry lone surrogates ("\ud800"); they have no UTF-8 form and Triton takes bytes.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"'{param}' is not valid Unicode (lone surrogate)", param) from None
    return value


def message_text(message: Message, param: str) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return _utf8(content, param)
    return _utf8("\n".join(part.text for part in content), param)


def conversation_id(header: str | None, user: str | None, param: str = "X-Conversation-Id") -> str:
    for value, name in ((header, param), (user, "user")):
        if value is None or not value.strip():
            continue
        _utf8(value, name)
        if len(value.encode("utf-8")) > MAX_ID_BYTES:
            raise bad_request(f"'{name}' (the conversation id) is longer than {MAX_ID_BYTES} bytes", name)
        return value
    raise bad_request("a conversation id is required: send the X-Conversation-Id header or the 'user' field",
                      "user", code="missing_conversation_id")


def sampling(request: ChatCompletionRequest) -> dict:
    """The OpenAI sampling fields as the ensemble's `sampling_parameters` (vLLM SamplingParams names)."""
    if request.logprobs:
        raise bad_request("'logprobs' is not supported", "logprobs", code="unsupported_parameter")
    params: dict[str, float | list[str]] = {}
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.stop is not None:
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        if len(stop) > MAX_STOP:
            raise bad_request(f"'stop' takes at most {MAX_STOP} sequences", "stop")
        if any(not s for s in stop):
            raise bad_request("'stop' sequences must not be empty", "stop")
        if stop:
            params["stop"] = [_utf8(s, "stop") for s in stop]
    return params


def to_turn(request: ChatCompletionRequest, conversation: str) -> ChatTurn:
    last = len(request.messages) - 1
    if request.messages[last].role != "user":
        raise bad_request("the last message must be the user's new turn (role 'user')", f"messages[{last}].role")
    message = message_text(request.messages[last], f"messages[{last}].content")
    if not message.strip():
        raise bad_request("the user's message must not be empty", f"messages[{last}].content")
    system, history = [], []
    for index, earlier in enumerate(request.messages[:last]):
        text = message_text(earlier, f"messages[{index}].content")
        if earlier.role in ("system", "developer"):
            if text.strip():
                system.append(text)
        elif text.strip():  # an assistant message may be empty (OpenAI allows it); there is nothing to remember
            history.append({"role": earlier.role, "text": text})
    options = request.stream_options
    return ChatTurn(conversation, message, "\n\n".join(system), history, sampling(request), bool(request.stream),
                    bool(request.stream and options and options.include_usage))


# ---- responses --------------------------------------------------------------------------------------
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def finish_reason(reason: str) -> str:
    # vLLM says stop, length or abort; OpenAI clients know stop, length, tool_calls, content_filter.
    return "length" if reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def memory_field(conversation: str, turn: int, reply_turn: int, recalled: list) -> dict:
    """Our extra field: which stored turns this exchange became and what memory put in the prompt."""
    return {"conversation_id": conversation, "turn": turn, "reply_turn": reply_turn,
            "recalled": [{k: r.get(k) for k in ("turn", "role", "text", "score", "timestamp")} for r in recalled]}


def completion(cid: str, model: str, text: str, final, conversation: str) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason(final.finish_reason)}],
        "usage": usage(final.prompt_tokens, final.completion_tokens),
        "system_fingerprint": None,
        "memory": memory_field(conversation, final.turn, final.reply_turn, final.recalled),
    }


def chunk(cid: str, model: str, created: int, delta: dict, reason: str | None = None, **extra) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}], **extra}
