"""The OpenAI-compatible gateway driven by the official `openai` SDK: chat, streaming, memory across
turns, usage, seeding from a resent history, export/delete, tenants and the error types."""

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

FACT = "My sister Marguerite lives in Reykjavik and works as a glaciologist."
FILLER = ["I spent the morning reorganising the bookshelf in the living room.",
          "The weather turned cold so I made a pot of lentil soup for lunch.",
          "My colleague recommended a podcast about the history of bridges."]
QUESTION = "Where does my sister Marguerite live and what does she do for work?"
RUN = uuid.uuid4().hex[:8]  # conversation ids unique per run, so reruns on kept data start clean


def conv(name):
    return f"gw-{name}-{RUN}"


def user(text):
    return {"role": "user", "content": text}


def export(gateway, conversation, key="acme"):
    """The stored turns through the gateway, or None when the conversation is unknown (404)."""
    response = httpx.get(f"{gateway.url}/v1/conversations/{conversation}",
                         headers={"Authorization": f"Bearer {gateway.keys[key]}"}, timeout=30)
    if response.status_code == 404:
        assert response.json()["error"]["code"] == "conversation_not_found"
        return None
    response.raise_for_status()
    return response.json()["turns"]


def test_chat_reply_usage_and_stored_turns(gateway):
    sdk = gateway.openai()
    reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=[user("Hello, my name is Ada.")],
                                        user=conv("chat"), max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "imem-chat" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert 0 < usage.completion_tokens <= 5 and usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 5
    memory = reply.model_extra["memory"]
    assert memory["conversation_id"] == conv("chat") and memory["turn"] == 1 and memory["recalled"] == []
    turns = export(gateway, conv("chat"))
    assert [(t["turn"], t["role"], t["text"]) for t in turns] == [
        (1, "user", "Hello, my name is Ada."), (2, "assistant", choice.message.content)]


def test_streaming_chunks_make_the_stored_reply(gateway):
    sdk = gateway.openai()
    stream = sdk.chat.completions.create(model="any", messages=[user("Tell me about the sea.")], max_tokens=12,
                                         stream=True, stream_options={"include_usage": True},
                                         extra_headers={"X-Conversation-Id": conv("stream")})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].model_extra["memory"]["turn"] == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len(chunks) > 3  # really streamed, not one block
    assert export(gateway, conv("stream"))[1]["text"] == text


def test_the_raw_event_stream_ends_with_done(gateway):
    body = {"model": "m", "messages": [user("Count to three.")], "max_tokens": 4, "stream": True,
            "user": conv("raw-stream")}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {gateway.keys['acme']}"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_a_fact_is_recalled_turns_later(gateway):
    sdk = gateway.openai()
    conversation = {"extra_headers": {"X-Conversation-Id": conv("recall")}, "max_tokens": 4, "temperature": 0}
    first = sdk.chat.completions.create(model="m", messages=[user(FACT)], **conversation)
    for filler in FILLER:  # push the fact out of the recent turns: it can only come back by similarity
        sdk.chat.completions.create(model="m", messages=[user(filler)], **conversation)
    reply = sdk.chat.completions.create(model="m", messages=[user(QUESTION)], **conversation)
    memory = reply.model_extra["memory"]
    assert memory["turn"] == 9
    fact_turn = first.model_extra["memory"]["turn"]
    assert any(r["turn"] == fact_turn and "glaciologist" in r["text"] for r in memory["recalled"])


def test_system_message_reaches_the_prompt(gateway):
    sdk = gateway.openai()
    plain = sdk.chat.completions.create(model="m", messages=[user("Hi.")], user=conv("system-a"), max_tokens=1)
    instructed = sdk.chat.completions.create(
        model="m", user=conv("system-b"), max_tokens=1,
        messages=[{"role": "system", "content": "You are a terse assistant who answers in one word. " * 4},
                  user("Hi.")])
    assert instructed.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    # the system text is not a turn
    assert [t["text"] for t in export(gateway, conv("system-b")) if t["role"] == "user"] == ["Hi."]


def test_history_seeds_a_new_conversation_once(gateway):
    sdk = gateway.openai()
    history = [{"role": "system", "content": "Be brief."}, user(FACT),
               {"role": "assistant", "content": "That sounds like a fascinating job."}]
    first = sdk.chat.completions.create(model="m", messages=history + [user("What else do you know?")],
                                        user=conv("seed"), max_tokens=4)
    assert first.model_extra["memory"]["turn"] == 3
    # The client resends the whole history, as OpenAI clients do: nothing is stored twice.
    answer = {"role": "assistant", "content": first.choices[0].message.content}
    resent = history + [user("What else do you know?"), answer, user(QUESTION)]
    second = sdk.chat.completions.create(model="m", messages=resent, user=conv("seed"), max_tokens=4)
    assert second.model_extra["memory"]["turn"] == 5
    turns = export(gateway, conv("seed"))
    assert [(t["role"], t["text"]) for t in turns[:3]] == [("user", FACT), ("assistant", history[2]["content"]),
                                                           ("user", "What else do you know?")]
    assert len(turns) == 6 and [t["text"] for t in turns].count(FACT) == 1


def test_a_refused_turn_leaves_no_seeded_history(gateway):
    sdk = gateway.openai()
    too_long = "word " * 5000  # over IMEM_MAX_MESSAGE_BYTES: the memory model refuses it
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="m", messages=[user(FACT), {"role": "assistant", "content": "ok"},
                                                         user(too_long)], user=conv("refused"), max_tokens=4)
    assert caught.value.body["param"] == "messages"
    assert export(gateway, conv("refused")) is None


def test_delete_really_deletes(gateway):
    sdk = gateway.openai()
    sdk.chat.completions.create(model="m", messages=[user(FACT)], user=conv("delete"), max_tokens=4)
    response = httpx.delete(f"{gateway.url}/v1/conversations/{conv('delete')}", timeout=30,
                            headers={"Authorization": f"Bearer {gateway.keys['acme']}"})
    assert response.status_code == 200 and response.json()["turns_deleted"] == 2
    assert export(gateway, conv("delete")) is None
    again = sdk.chat.completions.create(model="m", messages=[user(QUESTION)], user=conv("delete"), max_tokens=4)
    assert again.model_extra["memory"]["turn"] == 1 and again.model_extra["memory"]["recalled"] == []
    assert all("glaciologist" not in t["text"] for t in export(gateway, conv("delete")))


def test_tenants_are_isolated_through_the_gateway(gateway):
    acme, globex = gateway.openai("acme"), gateway.openai("globex")
    acme.chat.completions.create(model="m", messages=[user("The vault code is pineapple-47.")], user=conv("shared"),
                                 max_tokens=4)
    assert export(gateway, conv("shared"), key="globex") is None
    reply = globex.chat.completions.create(model="m", messages=[user("What is the vault code?")], user=conv("shared"),
                                           max_tokens=4)
    assert reply.model_extra["memory"]["turn"] == 1 and reply.model_extra["memory"]["recalled"] == []
    with pytest.raises(openai.NotFoundError):
        gateway.openai("env").delete(f"/conversations/{conv('shared')}", cast_to=object)
    assert len(export(gateway, conv("shared"), key="acme")) == 2  # untouched by the other tenants
    assert all("pineapple" not in t["text"] for t in export(gateway, conv("shared"), key="globex"))


def test_models_and_health(gateway):
    assert [m.id for m in gateway.openai().models.list()] == ["imem-chat"]
    assert gateway.openai().models.retrieve("imem-chat").id == "imem-chat"
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}


def test_bad_or_missing_key_is_an_authentication_error(gateway):
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.openai("not-a-key").chat.completions.create(model="m", messages=[user("hi")], user=conv("auth"))
    assert caught.value.body["code"] == "invalid_api_key"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": [user("hi")]})
    assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_request_error"
    assert export(gateway, conv("auth")) is None


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"temperature": 7}, "temperature"),
    ({"n": 3}, "n"),
    ({"messages": [user("hi"), {"role": "assistant", "content": "hello"}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[0].type"),
    ({"user": None}, "user"),
])
def test_bad_requests_are_bad_request_errors_naming_the_field(gateway, fields, param):
    body = {"model": "m", "messages": [user("hi")], "user": conv("bad"), "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai().chat.completions.create(**body)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
    assert export(gateway, conv("bad")) is None


def test_rate_limit_is_a_rate_limit_error_with_retry_after(gateway):
    sdk = gateway.openai("limited")  # 2 requests per minute
    for _ in range(2):
        sdk.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="m", messages=[user("hi")], user=conv("limited"))
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert export(gateway, conv("limited")) is None
    gateway.openai("globex").models.list()  # other keys are not affected


def test_tokens_per_minute_are_charged_from_the_reported_usage(gateway):
    sdk = gateway.openai("frugal")  # 10 tokens per minute: one short reply uses them up
    reply = sdk.chat.completions.create(model="m", messages=[user("hi")], user=conv("frugal"), max_tokens=2)
    assert reply.usage.total_tokens > 10
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="m", messages=[user("hi")], user=conv("frugal"), max_tokens=2)
    assert "tokens per minute" in caught.value.body["message"]
    assert len(export(gateway, conv("frugal"))) == 2


def test_concurrent_requests_share_the_triton_connection(gateway):
    def ask(index):
        sdk = gateway.openai()
        stream = sdk.chat.completions.create(model="m", messages=[user(f"Question number {index}?")],
                                             user=conv(f"parallel-{index}"), max_tokens=8, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(ask, range(4)))
    for index, text in enumerate(texts):
        turns = export(gateway, conv(f"parallel-{index}"))
        assert [t["text"] for t in turns] == [f"Question number {index}?", text]


def test_unknown_conversation_and_model_are_not_found(gateway):
    with pytest.raises(openai.NotFoundError):
        gateway.openai().get(f"/conversations/{conv('never-seen')}", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        gateway.openai().models.retrieve("gpt-5")
