"""Streaming over gRPC and HTTP: several chunks for a long answer, and memory stores exactly the text the
client received."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_long_answer_streams_in_chunks_and_is_stored_verbatim(service, protocol):
    client = service.client(protocol)
    conversation = f"stream-{protocol}"
    chunks = list(client.stream_chat(conversation, "Tell me a long story about a lighthouse keeper.",
                                     sampling={"max_tokens": 48, "temperature": 0.7, "seed": 3}))
    assert len([c for c in chunks if c.text]) > 1
    final = chunks[-1]
    assert final.final and final.completion_tokens == 48 and final.finish_reason == "length"
    streamed = "".join(c.text for c in chunks)
    stored = client.export(conversation)["turns"]
    assert [t["role"] for t in stored] == ["user", "assistant"]
    assert stored[1]["text"] == streamed
    assert stored[1]["turn"] == final.turn + 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_non_streamed_reply_arrives_whole(service, protocol):
    client = service.client(protocol)
    reply = client.chat(f"whole-{protocol}", "Say something.", sampling={"max_tokens": 8}, stream=False)
    assert reply.chunks == 1 and reply.completion_tokens == 8 and reply.text
    assert client.export(f"whole-{protocol}")["turns"][1]["text"] == reply.text


def test_concurrent_streams_arrive_in_generation_order(service):
    """With 16 streams at once, each one's responses arrive in the order they were generated, the first and
    the final one carry the stored exchange's turns, and the stored reply is the streamed text."""
    run = uuid.uuid4().hex[:8]

    def one(index):
        conversation = f"in-order-{run}-{index}"
        return conversation, list(service.client("grpc").stream_chat(
            conversation, f"Tell me story number {index}.", sampling={"max_tokens": 48, "ignore_eos": True}))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    client = service.client("grpc")
    for conversation, chunks in results:
        assert chunks[0].turn == 1 and chunks[-1].final and chunks[-1].reply_turn == 2
        assert chunks[-1].completion_tokens == 48 and not any(c.final for c in chunks[:-1])
        assert len(chunks) > 2  # the text streamed in several responses between the two that store
        assert client.export(conversation)["turns"][1]["text"] == "".join(c.text for c in chunks)


def test_a_stream_the_caller_walks_away_from_leaves_no_thread_behind(service, threads_still_running):
    """A caller that stops reading mid-stream (the gateway when its HTTP client disconnects) cancels the
    request; the stream's request thread must end with it, or a long-running gateway gathers one thread
    per disconnect."""
    client = service.client("grpc")
    before = set(threading.enumerate())
    for take in range(3):
        chunks = client.stream_chat("walked-away", f"Tell me a long story, take {take}.",
                                    sampling={"max_tokens": 64})
        next(chunks)
        chunks.close()
    assert not threads_still_running(set(threading.enumerate()) - before)
