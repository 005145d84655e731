"""What a stopped server removes from /dev/shm (imem_serve.launcher.remove_unused_shared_memory): what its
killed processes left, never what a live process, of this server or another, can still use."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imem_serve.launcher import SHM, remove_unused_shared_memory

# A process that makes a multiprocessing lock as vLLM's engine makes its workers' lock (loky, imported by
# the model processes' libraries, names every such semaphore sem.loky-<pid>-N) and a shared memory block,
# prints both names and waits: it opens nothing by name again, as an engine whose worker is still starting.
HOLDER = """
import multiprocessing, sys, time
from multiprocessing import shared_memory
import joblib.externals.loky.backend  # noqa: F401  (renames semaphores, as in the model processes)
lock = multiprocessing.get_context("spawn").Lock()
block = shared_memory.SharedMemory(create=True, size=4096)
print("sem." + lock._semlock.name.lstrip("/"), block.name, flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder():
    # A group of its own, killed whole as a server's is: multiprocessing's resource tracker, a child that
    # would otherwise outlive it, unlinks what it leaked, racing the test's first look.
    process = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    names = process.stdout.readline().split()
    yield process, names
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for name in names:
        Path(SHM, name).unlink(missing_ok=True)


def test_a_live_process_keeps_its_semaphore_and_shared_memory(holder):
    process, names = holder
    semaphore, block = names
    assert semaphore.startswith(f"sem.loky-{process.pid}-")
    remove_unused_shared_memory(set(names))
    # The semaphore is mapped only under glibc's temporary name: it is its living creator that keeps it.
    assert Path(SHM, semaphore).exists() and Path(SHM, block).exists()


def test_what_a_killed_process_left_is_removed(holder):
    process, names = holder
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{process.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(Path(SHM, name).exists() for name in names)  # a killed process unlinks nothing
    remove_unused_shared_memory(set(names))
    assert not any(Path(SHM, name).exists() for name in names)
