"""Model processes that outlive tritonserver are killed.

Triton 2.51's Python stub notices within 300 ms that tritonserver is gone and calls exit(1), which can
deadlock: seen here, an orphaned `memory` stub minutes later with every thread waiting on a futex, still
holding the store folder's lock (a new server's memory model could not open it), and an orphaned `llm`
stub still holding vLLM's engine processes; and vLLM's engine processes outliving an llm stub that did
exit. Each of our models therefore starts a small watcher process at initialisation: once tritonserver
has gone, it gives everything a few seconds to exit on its own, then kills the stub and every process
that ran under it (vLLM's EngineCore and workers), or tritonserver's whole process group when it led one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

WATCHER = r"""
import os, signal, sys, time
stub, server, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
try:
    group = os.getpgid(server)
except OSError:  # tritonserver is gone already
    group = None

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), fields[19]  # state, parent, start time
    except OSError:
        return None

def alive(pid, started=None):
    found = stat(pid)
    return found is not None and found[0] != "Z" and started in (None, found[2])

def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        found = stat(entry) if entry.isdigit() else None
        if found:
            children.setdefault(found[1], []).append(int(entry))
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found = stat(child)
            if child != os.getpid() and found:
                out[child] = found[2]
                todo.append(child)
    return out

# Remember what runs under the stub (vLLM's engine): it may outlive the stub, reparented to init. When the
# stub or tritonserver ends, what is left of them a moment later is killed.
known, checked = {}, 0.0
while alive(stub) and alive(server):
    if time.monotonic() - checked > 5:
        known.update(descendants(stub))
        checked = time.monotonic()
    time.sleep(0.5)
if alive(stub):
    known.update(descendants(stub))
time.sleep(grace)  # give everything a moment to exit on its own
left = [pid for pid, started in known.items() if alive(pid, started)]
if alive(stub) and not alive(server):  # the stub hangs after tritonserver died
    if group == server:  # tritonserver led its own process group: all of it was its
        os.killpg(group, signal.SIGKILL)
    left.append(stub)
for pid in left:  # and whatever ran under a stub that is gone is an orphan
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


# How long the watcher lets the processes of a dead tritonserver exit on their own before it kills them,
# and how often it looks whether tritonserver is still there (the sleep in WATCHER).
GRACE_S, POLL_S = 3.0, 0.5


def die_with_server(grace_seconds: float = GRACE_S) -> subprocess.Popen | None:
    """Starts the watcher for this stub process (whose parent is tritonserver)."""
    # The environment's own interpreter (in a Triton stub, sys.executable is not a Python).
    python = next((p for p in (os.path.join(sys.prefix, "bin", "python3"), shutil.which("python3")) if p and
                   os.path.exists(p)), sys.executable)
    watcher = [python, "-I", "-S", "-c", WATCHER, str(os.getpid()), str(os.getppid()), str(grace_seconds)]
    return subprocess.Popen(watcher,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True)
