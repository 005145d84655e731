"""Memory outlives the server: a graceful restart keeps it, and a SIGKILL loses no acknowledged turn.
(Named to run last: it restarts the shared server.)"""

import urllib.request
from pathlib import Path

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
    # in flight and does not wait out Triton's exit timeout.
    stop = service.log()[logged:]
    assert "Found 0 model versions that have in-flight inferences" in stop, stop[-3000:]
    assert "Exit timeout expired" not in stop
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
