"""The chat model on the synthetic engine (a GPU's token stream, IMEM_ENGINE=synthetic): a chat, a cancel,
refusals at the front, and a delete that wins over an exchange in flight. Its tokens come at 50 per second,
so a long reply is held mid-stream without stopping any process."""

import queue
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient

from conftest import wait_for
from imem_client import wire
from imem_client.wire import Chunk, Code, ServiceError

LIMIT = 4


@pytest.fixture(scope="module")
def synthetic(new_service):
    running = new_service({"IMEM_ENGINE": "synthetic", "IMEM_MAX_GENERATIONS": str(LIMIT),
                           "IMEM_SYNTHETIC_TOKENS_PER_S": "50", "IMEM_SYNTHETIC_TTFT_MS": "30"})
    yield running
    running.server.stop()


class Stream:
    """One chat on its own gRPC stream, read chunk by chunk by the test."""

    def __init__(self, service, conversation: str, message: str, max_tokens: int):
        self.client = grpcclient.InferenceServerClient(service.grpc_url.removeprefix("grpc://"))
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)),
                                 headers=wire.GRPC_ERROR_HEADERS)
        fields = wire.chat_fields(conversation, message, sampling={"max_tokens": max_tokens})
        self.client.async_stream_infer(wire.CHAT, wire.inputs(grpcclient, fields), enable_empty_final_response=True)

    def next(self) -> Chunk:
        result, error = self.responses.get(timeout=60)
        if error is not None:
            raise wire.grpc_error(error)
        return Chunk.from_values(wire.result_values(result))

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def idle(service) -> bool:
    return wait_for(lambda: service.metric("imem_llm_requests_running") == 0, 60, step=0.1)


def test_a_chat_streams_real_tokens_and_stores_the_exchange(synthetic):
    client = synthetic.client()
    chunks = list(client.stream_chat("synthetic-chat", "Remember: my locker code is 4417.",
                                     sampling={"max_tokens": 20}))
    assert chunks[0].turn == 1 and chunks[-1].final and chunks[-1].reply_turn == 2
    assert chunks[-1].completion_tokens == 20 and chunks[-1].finish_reason == "length"
    assert len(chunks) > 2  # the text streamed: the first token alone, then 4 at a time
    text = "".join(c.text for c in chunks)
    stored = client.export("synthetic-chat")["turns"]
    assert [(t["turn"], t["role"]) for t in stored] == [(1, "user"), (2, "assistant")]
    assert stored[1]["text"] == text and stored[0]["answered"] is True


def test_a_cancelled_chat_stops_at_once_and_keeps_the_message_unanswered(synthetic):
    cancelled = synthetic.metric("imem_llm_requests_cancelled_total")
    tokens = synthetic.metric("imem_llm_generated_tokens_total")
    stream = Stream(synthetic, "synthetic-cancel", "Tell me a long story.", max_tokens=500)  # 10 s of tokens
    first = stream.next()
    stream.next()
    stream.close(cancel=True)
    assert idle(synthetic)
    assert synthetic.metric("imem_llm_requests_cancelled_total") == cancelled + 1
    assert synthetic.metric("imem_llm_generated_tokens_total") - tokens < 500
    stored = synthetic.client().export("synthetic-cancel")["turns"]
    assert [(t["turn"], t["role"], t["answered"]) for t in stored] == [(first.turn, "user", False)]


def test_over_the_limit_a_chat_is_refused_at_once_before_recall_and_stores_nothing(synthetic):
    run = uuid.uuid4().hex[:8]
    recalls = synthetic.metric("imem_memory_recall_duration_ms_count")
    rejected = synthetic.metric("imem_llm_requests_rejected_total")
    held = [Stream(synthetic, f"held-{run}-{i}", "A long answer, please.", max_tokens=300) for i in range(LIMIT)]
    try:
        for stream in held:  # each has recalled and is generating: the limit is taken
            assert stream.next().turn == 1
        client = synthetic.client()
        refusals = []
        for i in range(6):
            with pytest.raises(ServiceError) as refused:
                client.chat(f"refused-{run}-{i}", "Me too?", sampling={"max_tokens": 4})
            refusals.append(refused.value)
        assert all(r.code == Code.UNAVAILABLE and "busy" in str(r) and "IMEM_MAX_GENERATIONS" in str(r)
                   for r in refusals), refusals[0]
        # Refused before memory did any work for them: recall ran for the held chats only, nothing stored.
        assert wait_for(lambda: synthetic.metric("imem_llm_requests_rejected_total") == rejected + 6, 10, 0.1)
        assert synthetic.metric("imem_memory_recall_duration_ms_count") == recalls + LIMIT
        for i in range(6):
            with pytest.raises(ServiceError) as unknown:
                client.export(f"refused-{run}-{i}")
            assert unknown.value.code == Code.NOT_FOUND
    finally:
        for stream in held:
            stream.close(cancel=True)
    assert idle(synthetic)
    reply = synthetic.client().chat(f"after-{run}", "Calm again?", sampling={"max_tokens": 4})
    assert (reply.turn, reply.reply_turn) == (1, 2)


def test_a_delete_wins_over_an_exchange_in_flight(synthetic):
    """A chat's message is stored with its first response; the conversation is deleted while the reply
    streams. The reply is never stored, the stream ends with an error naming the deletion, and nothing of
    the conversation comes back."""
    client = synthetic.client()
    client.chat("deleted-mid-stream", "An earlier exchange.", sampling={"max_tokens": 4})
    stream = Stream(synthetic, "deleted-mid-stream", "Tell me a long story.", max_tokens=300)
    try:
        assert stream.next().turn == 3
        assert client.delete("deleted-mid-stream")["deleted"] == 3
        with pytest.raises(ServiceError) as ended:
            while not stream.next().final:
                pass
    finally:
        stream.close()
    assert ended.value.code == Code.NOT_FOUND, ended.value
    assert "was deleted while this request was in flight" in str(ended.value)
    assert idle(synthetic)
    time.sleep(0.5)  # anything still on its way to the store would land now
    with pytest.raises(ServiceError) as gone:
        client.export("deleted-mid-stream")
    assert gone.value.code == Code.NOT_FOUND
    # The conversation can start again after the delete.
    assert client.chat("deleted-mid-stream", "A fresh start.", sampling={"max_tokens": 4}).turn == 1


def test_mixed_traffic_leaves_nothing_in_flight_for_the_stop(synthetic):
    """Chats, ingests, deletes and exports of the same conversations at once, some chats cancelled: then a
    graceful stop finds no request in flight (Triton's log) and does not wait out its exit timeout."""
    run = uuid.uuid4().hex[:8]

    def traffic(i):
        client = synthetic.client()
        conversation = f"mixed-{run}-{i % 3}"
        try:
            if i % 4 == 0:
                client.ingest(conversation, [{"role": "user", "text": f"imported line {i}"}])
            elif i % 4 == 1:
                client.delete(conversation)
            elif i % 4 == 2:
                client.export(conversation)
            else:
                stream = Stream(synthetic, conversation, f"message {i}", max_tokens=40)
                stream.next()
                stream.close(cancel=i % 8 == 3)
        except ServiceError as error:  # unknown (deleted) conversations and refusals are expected here
            assert error.code in (Code.NOT_FOUND, Code.UNAVAILABLE), error

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(traffic, range(48)))
    assert idle(synthetic)
    logged = len(synthetic.log())
    synthetic.server.stop()
    stop = synthetic.log()[logged:]
    assert "Found 0 model versions that have in-flight inferences" in stop, stop[-2000:]
    assert "Exit timeout expired" not in stop
    synthetic.start()  # for the tests after this one in the module
