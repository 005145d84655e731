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


def test_line_separators_inside_the_text_do_not_break_an_http_stream(service):
    """U+2028, U+0085 and friends are legal unescaped inside JSON: the SSE reader must not split there.
    The stored message comes back inside `recalled` of the next streamed reply."""
    client = service.client("http")
    tricky = "First line\u2028second line\u0085third\u001cfourth \u2029 end."
    client.chat("separators", tricky, sampling={"max_tokens": 4})
    chunks = list(client.stream_chat("separators", "What did I say?", sampling={"max_tokens": 4}))
    assert chunks[-1].final
    assert tricky in [t["text"] for t in chunks[-1].recalled]
