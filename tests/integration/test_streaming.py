"""Streaming over gRPC and HTTP: several chunks for a long answer, and memory stores exactly the text the
client received."""

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

