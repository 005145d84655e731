"""A model process whose tritonserver died is killed with everything under it (imem/orphans.py), and one
that exits normally takes its watcher with it. Real processes: a stand-in server, a stub that would
otherwise live on (as a Triton 2.51 stub hung in exit() does), and a child of the stub (vLLM's engine)."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import imem

ENV = {**os.environ, "PYTHONPATH": str(Path(imem.__file__).resolve().parents[1])}
STUB = textwrap.dedent("""
    import signal, subprocess, sys, time
    from imem.orphans import die_with_server
    watcher = die_with_server(grace_seconds=0.5)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(watcher.pid, child.pid, flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(sys.argv[1]))
""")
SERVER = textwrap.dedent("""
    import subprocess, sys, time
    stub = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
    print(stub.pid, stub.stdout.readline().strip(), flush=True)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(stub_seconds: float):
    server = subprocess.Popen([sys.executable, "-c", SERVER, STUB, str(stub_seconds)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    stub, watcher, child = map(int, server.stdout.readline().split())
    return server, stub, watcher, child


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_stub_left_behind_by_a_killed_server_dies_with_its_children():
    server, stub, watcher, child = start(stub_seconds=600)
    assert all(alive(pid) for pid in (stub, watcher, child))
    server.kill()
    server.wait()
    assert wait_until(lambda: not any(alive(pid) for pid in (stub, watcher, child)), 10)


def test_what_outlives_a_stub_that_exited_by_itself_is_killed_and_the_watcher_leaves():
    """vLLM's engine does not always exit with the llm stub: the watcher remembers what ran under it."""
    # The watcher looks for the stub's children every 5 s, its first look perhaps before the child is
    # started: 15 s leaves it two more, however late a loaded machine runs it.
    server, stub, watcher, child = start(stub_seconds=15)
    try:
        assert wait_until(lambda: not alive(stub), 30)
        assert wait_until(lambda: not alive(child) and not alive(watcher), 10)
        assert server.poll() is None  # the server itself is left alone
    finally:
        if alive(child):
            os.kill(child, 9)
        server.kill()
        server.wait()
