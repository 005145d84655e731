"""The OpenAI chat-completions request, as much of it as we serve. Unknown fields are refused (as OpenAI
does) so that a feature a client relies on never silently does nothing; the few fields that are
accepted but have no effect here are listed in IGNORED_FIELDS and in the README."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

INT64 = 2**63 - 1
# Accepted and ignored: they change nothing about the reply (bookkeeping, or tools we never call).
IGNORED_FIELDS = ("metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier", "prompt_cache_key")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, description="accepted and ignored")


class StreamOptions(Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = Field(None, description="accepted and ignored")


class ChatCompletionRequest(Strict):
    model: str = Field(description="any name is accepted; the reply names the model that answered")
    messages: list[Message] = Field(min_length=1, description="the last one must be the user's new turn")
    max_tokens: int | None = Field(None, ge=1, le=INT64)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    n: int | None = Field(None, ge=1, le=1, description="one reply per turn")
    logprobs: bool | None = Field(None, description="only false")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="the conversation id when no X-Conversation-Id header is sent")
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
