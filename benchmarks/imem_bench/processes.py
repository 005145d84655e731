"""What each process of a running server uses: its resident memory, sampled in the background (soak and
back-pressure benchmarks), and the CPU time it has used (overhead benchmark): tritonserver, each model
instance's stub, vLLM's engine and workers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from imem_serve.triton import TritonServer, group_members


def role(pid: int, stubs: dict[int, str], server_pid: int) -> str | None:
    if pid == server_pid:
        return "tritonserver"
    if pid in stubs:
        return stubs[pid]
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    if command.startswith("VLLM::"):
        return "vllm " + command.removeprefix("VLLM::")
    return None  # helpers (orphan watchers, resource trackers): too small to matter


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of the process so far, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent working, all cores, every process (the client's too)."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in
                                                          Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def by_role(server: TritonServer, measure: Callable[[int], float | None]) -> dict[str, float]:
    """{role: measure(pid)} over the server's processes; several of one role (vLLM workers) add up."""
    stubs = {pid: name for name, pid in server.stubs().items()}
    out: dict[str, float] = {}
    for pid in group_members(server.process.pid):
        name, value = role(pid, stubs, server.process.pid), measure(pid)
        if name and value is not None:
            out[name] = out.get(name, 0.0) + value
    return out


def cpu_by_role(server: TritonServer) -> dict[str, float]:
    """{role: CPU seconds used so far} for the server's processes, with "machine" for the whole machine."""
    return {"machine": busy_cpu_seconds(), **by_role(server, cpu_seconds)}


class MemorySampler:
    """Every `interval` seconds: {role: RSS MiB} for each process of the server's group, with the time."""

    def __init__(self, server: TritonServer, interval: float = 10.0):
        self.server, self.interval = server, interval
        self.samples: list[dict] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = {name: round(mib, 1) for name, mib in by_role(self.server, rss_mib).items()}
        self.samples.append({"t_s": round(time.monotonic() - self.started, 1), "rss_mib": rss})

    def growth(self) -> dict:
        """Per process: first, last and largest RSS, and the growth from first to last (MiB)."""
        names = sorted({n for s in self.samples for n in s["rss_mib"]})
        out = {}
        for name in names:
            series = [s["rss_mib"][name] for s in self.samples if name in s["rss_mib"]]
            out[name] = {"first_mib": series[0], "last_mib": series[-1], "max_mib": max(series),
                         "growth_mib": round(series[-1] - series[0], 1)}
        return out
