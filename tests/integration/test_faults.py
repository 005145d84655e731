"""Faults injected into real servers of their own: a model process killed (the supervisor of `imem serve`
starts the server again), vLLM's engine killed mid-stream, a full disk, a data folder that lost its store,
and a model process stalled while it loads. Each time the client gets an error that names the problem,
and nothing acknowledged is lost."""

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from imem_client.client import ServiceError
from imem_serve.launcher import process_stat, supervise


# Each fault server lives for its own tests only (class or function scope, not module): with the shared
# server, two at a time is what the suite asks of the machine's memory.
@pytest.fixture(scope="class")
def supervised(new_service):
    """A server of its own, kept serving by `imem serve`'s supervisor."""
    running = new_service()
    stop, restarts = threading.Event(), []
    thread = threading.Thread(target=supervise, args=(running.server,),
                              kwargs={"log": restarts.append, "stop": stop, "interval": 0.5}, daemon=True)
    thread.start()
    running.restarts = restarts
    yield running
    stop.set()
    thread.join(timeout=30)
    running.server.stop()


class TestUnderTheSupervisor:
    def test_a_dead_model_process_off_the_chat_path_restarts_the_server_and_loses_nothing(self, supervised):
        client = supervised.client()
        replies = [client.chat("waiting", f"Note {i}: the boiler was serviced in March.", sampling={"max_tokens": 4})
                   for i in range(3)]
        # The embedder model's process: not on the chat path (memory embeds in its own process), but any
        # dead model process makes the supervisor restart the whole server (Triton 2.51 never restarts one).
        for name, pid in supervised.server.stubs().items():
            if name.startswith("embedder_"):
                os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: any("starting tritonserver again" in line for line in supervised.restarts), 30)
        assert wait_for(lambda: any("ready again" in line for line in supervised.restarts), 600)
        client = supervised.client()
        turns = client.export("waiting")["turns"]
        assert [t["text"] for t in turns if t["role"] == "assistant"] == [r.text for r in replies]
        assert client.export("waiting")["vectors_missing"] == 0
        assert any(t["text"].startswith("Note") for t in client.recall("waiting", "boiler")["recalled"])

    def test_a_killed_memory_process_is_replaced_and_keeps_every_turn(self, supervised):
        client = supervised.client()
        before = [client.chat("survivor", f"Fact {i}: the spare key is under pot {i}.", sampling={"max_tokens": 4})
                  for i in range(3)]
        readies = sum("ready again" in line for line in supervised.restarts)
        os.kill(supervised.server.stubs()["memory_0_0"], signal.SIGKILL)
        # Triton names the dead stub, unless the supervisor is already stopping the server (the stream is cut).
        with pytest.raises(ServiceError, match="not healthy|memory|unavailable"):
            client.chat("survivor", "Are you there?", sampling={"max_tokens": 4})
        assert wait_for(lambda: sum("ready again" in line for line in supervised.restarts) > readies, 600)
        client = supervised.client()
        reply = client.chat("survivor", "Back again.", sampling={"max_tokens": 4})
        turns = client.export("survivor")["turns"]
        assert [t["text"] for t in turns if t["role"] == "assistant"][:3] == [r.text for r in before]
        assert (reply.turn, reply.reply_turn) == (len(turns) - 1, len(turns))


@pytest.fixture
def engine_service(new_service):
    running = new_service()
    yield running
    running.server.stop()


def test_a_dead_vllm_engine_fails_the_stream_with_an_error_and_is_started_again(engine_service):
    client = engine_service.client()
    client.chat("engine", "First, something short.", sampling={"max_tokens": 4})
    engine = engine_service.vllm_engine()
    received: queue.Queue = queue.Queue()

    def read_stream():
        try:
            for chunk in client.stream_chat("engine", "Now tell me a very long story.",
                                            sampling={"max_tokens": 1500, "ignore_eos": True}):
                received.put(chunk)
            received.put("the stream ended without an error")
        except ServiceError as error:
            received.put(error)

    os.kill(engine, signal.SIGSTOP)  # held until the client has a chunk, then killed (see step_engine)
    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    try:
        assert engine_service.step_engine(engine, until=lambda: not received.empty())
    finally:
        os.kill(engine, signal.SIGKILL)
    reader.join(timeout=120)
    outcome = list(received.queue)
    assert isinstance(outcome[-1], ServiceError) and "generation failed" in str(outcome[-1]), outcome[-3:]
    turns = engine_service.client().export("engine")["turns"]
    # The interrupted message is kept, marked unanswered; no partial reply was stored as whole.
    assert [(t["role"], t.get("answered")) for t in turns] == [("user", True), ("assistant", None),
                                                               ("user", False)]
    assert wait_for(lambda: engine_service.metric("imem_llm_engine_restarts_total") == 1, 300)
    reply = engine_service.client().chat("engine", "Still there?", sampling={"max_tokens": 4})
    assert (reply.turn, reply.reply_turn) == (4, 5)


def mounted_tmpfs(path: Path, megabytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                            capture_output=True, text=True)
    return result.returncode == 0


def test_a_full_disk_refuses_new_turns_with_a_named_error_and_keeps_the_rest(new_service, tmp_path):
    disk = tmp_path / "disk"
    if not mounted_tmpfs(disk, 600):
        pytest.skip("needs permission to mount a small tmpfs as the data disk")
    try:
        running = new_service({"IMEM_MIN_FREE_DISK_MB": "200"}, data_dir=disk / "data")
        try:
            client = running.client()
            kept = client.chat("full", "Remember: the gate code is 2580.", sampling={"max_tokens": 4})
            filler = disk / "filler"
            with open(filler, "wb") as f:  # leave 100 MB: below the 200 MB memory needs to write
                f.truncate(0)
                f.write(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - 100 * 2**20))
            for attempt in ("Another fact: the car is blue.", "And one more."):
                with pytest.raises(ServiceError, match="disk of the memory store .* is full"):
                    client.chat("full", attempt, sampling={"max_tokens": 4})
            with pytest.raises(ServiceError, match="is full"):
                client.ingest("full", [{"role": "user", "text": "history"}])
            turns = client.export("full")["turns"]  # reads still work, and nothing was written
            assert [t["text"] for t in turns] == ["Remember: the gate code is 2580.", kept.text]
            filler.unlink()
            reply = client.chat("full", "Room again?", sampling={"max_tokens": 4})
            assert (reply.turn, reply.reply_turn) == (3, 4)
        finally:
            running.server.stop()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_data_folder_without_its_store_is_refused_at_start_never_reset(new_service, tmp_path):
    data = tmp_path / "data"
    data.mkdir()  # exists, but empty: an unmounted volume, or a store someone deleted
    with pytest.raises(RuntimeError, match="model 'memory' failed to load: .*no memory store at"):
        new_service(data_dir=data)
    assert list(data.iterdir()) == [], "an empty store was created in place of the missing one"


def children(pid: int) -> list[int]:
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*")
            if (process_stat(int(entry.name)) or ("", 0))[1] == pid]


def test_a_model_process_stalled_while_it_loads_does_not_hang_the_start(new_service):
    """Triton 2.51's Python backend deadlocks when a model process misses its health checks while its model
    initialises (seen on a CPU-starved machine): tritonserver gives up on it, then waits for it to exit,
    forever. Stopping the chat model's process for 12 s once its initialize() has begun brings that about every time;
    the launcher sees tritonserver waiting on a live model process, kills that process and starts the
    server again."""
    stalled = []

    def stall_chat(server):
        assert wait_for(lambda: "chat_0_0" in server.stubs(), 120, 0.1)
        stub = server.stubs()["chat_0_0"]
        # its initialize() has begun once it has started its watcher (imem/orphans.py), a child process
        assert wait_for(lambda: children(stub), 120, 0.1)
        stalled.append(server.process.pid)
        time.sleep(1)
        os.kill(stub, signal.SIGSTOP)
        time.sleep(12)
        os.kill(stub, signal.SIGCONT)

    running = new_service(while_starting=stall_chat)
    try:
        assert stalled and running.server.process.pid != stalled[0], "the stall did not make a second start"
        reply = running.client().chat("after-a-stalled-start", "Hello there.", sampling={"max_tokens": 4})
        assert (reply.turn, reply.reply_turn) == (1, 2)
    finally:
        running.server.stop()
