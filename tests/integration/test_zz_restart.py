"""Memory outlives the server: a graceful restart keeps it, and a SIGKILL loses no acknowledged turn.
(Named to run last: it restarts the shared server.)"""

import threading
import urllib.request
from pathlib import Path

from imem_client.client import Client
from imem_client.wire import Chunk, ServiceError

FACT = "The spare key is hidden under the blue flowerpot by the back door."


def test_memory_survives_a_restart(service):
    client = service.client()
    client.chat("restart-1", FACT, sampling={"max_tokens": 4})
    client.close()
    ipc_dir = Path(service.server.ipc_dir)
    assert any(path.is_socket() for path in ipc_dir.iterdir()), "vLLM's sockets are not in the server's own folder"
    logged = len(service.log())
    service.restart()
    # Every earlier test's requests (cancelled streams, chats deleted mid-stream, the property test's mix of
    # chats, ingests and deletes) have ended and every client closed its connection: the stop finds nothing
    # in flight, memory unloads (its store closed), and the stop does not wait out Triton's exit timeout.
    stop = service.log()[logged:]
    assert "Found 0 model versions that have in-flight inferences" in stop, stop[-3000:]
    assert "successfully unloaded 'memory'" in stop and "Exit timeout expired" not in stop, stop[-3000:]
    # Ready means every endpoint answers: Triton opens its metrics port after its HTTP one.
    with urllib.request.urlopen(f"http://127.0.0.1:{service.server.metrics_port}/metrics", timeout=5) as metrics:
        assert metrics.status == 200
    assert not ipc_dir.exists(), "the stopped server's socket folder was left behind"
    client = service.client()
    recall = client.recall("restart-1", "Where is the spare key hidden?")
    assert any(t["text"] == FACT for t in recall["recalled"] + recall["recent"])


def test_a_killed_server_keeps_every_acknowledged_turn(service):
    client = service.client()
    acknowledged = [client.chat("crash-1", f"Note number {i}: buy {i} apples.", sampling={"max_tokens": 4})
                    for i in range(10)]
    client.close()
    service.restart(kill=True)
    client = service.client()
    stored = client.export("crash-1")["turns"]
    assert len(stored) == 20
    assert [t["text"] for t in stored if t["role"] == "assistant"] == [a.text for a in acknowledged]


def test_a_server_killed_with_streams_in_flight_keeps_every_acknowledged_turn(service):
    """SIGKILL while four replies stream: each message acknowledged by its first response is stored under
    the turn number it was given, and no reply is stored in part (a reply stored just before its final
    response was lost with the server is stored whole)."""
    conversations = [f"killed-mid-stream-{i}" for i in range(4)]
    first: dict[str, Chunk] = {}
    finals: dict[str, Chunk] = {}
    all_started = threading.Barrier(len(conversations) + 1)

    def stream(conversation: str) -> None:
        client = Client(service.grpc_url)
        try:
            for chunk in client.stream_chat(conversation, "Tell me a very long story.",
                                            sampling={"max_tokens": 1500, "ignore_eos": True}):
                if conversation not in first:
                    first[conversation] = chunk
                    all_started.wait(timeout=120)
                if chunk.final:
                    finals[conversation] = chunk
        except ServiceError:
            pass  # the server went away mid-stream
        finally:
            client.close()

    threads = [threading.Thread(target=stream, args=(c,)) for c in conversations]
    for thread in threads:
        thread.start()
    all_started.wait(timeout=300)
    service.restart(kill=True)
    for thread in threads:
        thread.join(timeout=120)
    client = service.client()
    for conversation in conversations:
        stored = client.export(conversation)["turns"]
        assert [(t["turn"], t["role"], t["text"]) for t in stored if t["role"] == "user"] == [
            (first[conversation].turn, "user", "Tell me a very long story.")]
        replies = [t for t in stored if t["role"] == "assistant"]
        if conversation in finals:  # the client got the final response: the reply is stored under its number
            assert [t["turn"] for t in replies] == [finals[conversation].reply_turn]
        for reply in replies:  # whole: written before the final response, never while it streamed
            assert reply["reply_to"] == first[conversation].turn, reply
            assert reply["metadata"]["finish_reason"] in ("stop", "length"), reply["metadata"]
