"""Memory outlives the server: a graceful restart keeps it, and a SIGKILL loses no acknowledged turn.
(Named to run last: it restarts the shared server.)"""

import subprocess

FACT = "The spare key is hidden under the blue flowerpot by the back door."


def test_memory_survives_a_restart(service):
    client = service.client()
    client.chat("restart-1", FACT, sampling={"max_tokens": 4})
    client.close()
    # Every earlier test's requests, cancelled streams included, finished, and every client closed its
    # connection: the stop drains at once instead of waiting out Triton's exit timeout.
    ports = (service.server.http_port, service.server.grpc_port)
    connected = subprocess.run(["ss", "-tnpH", "state", "established",
                                f"( dport = :{ports[0]} or dport = :{ports[1]} )"], capture_output=True, text=True).stdout
    service.restart()
    assert "Exit timeout expired" not in service.log(), f"connections open at the stop:\n{connected}"
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
