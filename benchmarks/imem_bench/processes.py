"""What each process of a running server uses: its resident memory, sampled in the background (soak and
back-pressure benchmarks), and the CPU time it has used (overhead benchmark): tritonserver, each model
instance's stub, vLLM's engine and workers. Resident memory is read in its parts (/proc/PID/status):
anonymous (the heap: what a leak grows), file-backed (mapped files: the store's segments grow it as the
store grows) and shared."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from imem_serve.launcher import TritonServer, group_members


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


RSS_PARTS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}


def rss_mib(pid: int) -> float | None:
    parts = rss_parts_mib(pid)
    return parts["rss"] if parts else None


def rss_parts_mib(pid: int) -> dict[str, float] | None:
    """{"rss", "anon", "file", "shmem"}: resident memory and its parts, MiB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    parts = {}
    for line in lines:
        key = line.split(":", 1)[0]
        if key in RSS_PARTS:
            parts[RSS_PARTS[key]] = int(line.split()[1]) / 1024
    return parts or None


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


def by_role(server: TritonServer, measure: Callable[[int], float | dict | None]) -> dict:
    """{role: measure(pid)} over the server's processes; several of one role (vLLM workers) add up (a
    measure that is a dict adds up key by key)."""
    stubs = {pid: name for name, pid in server.stubs().items()}
    out: dict = {}
    for pid in group_members(server.started.pid):
        name, value = role(pid, stubs, server.started.pid), measure(pid)
        if not name or value is None:
            continue
        if isinstance(value, dict):
            total = out.setdefault(name, {})
            for key, part in value.items():
                total[key] = total.get(key, 0.0) + part
        else:
            out[name] = out.get(name, 0.0) + value
    return out


def cpu_by_role(server: TritonServer) -> dict[str, float]:
    """{role: CPU seconds used so far} for the server's processes, with "machine" for the whole machine."""
    return {"machine": busy_cpu_seconds(), **by_role(server, cpu_seconds)}


class MemorySampler:
    """Every `interval` seconds, for each process of the server's group: its resident memory and the parts
    of it (rss_parts_mib), with the time and whatever `extra()` returns (the store's size, say)."""

    def __init__(self, server: TritonServer, interval: float = 10.0, extra: Callable[[], dict] | None = None):
        self.server, self.interval, self.extra = server, interval, extra
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
        parts = by_role(self.server, rss_parts_mib)
        entry = {"t_s": round(time.monotonic() - self.started, 1),
                 "rss_mib": {name: round(p["rss"], 1) for name, p in parts.items()},
                 "anon_mib": {name: round(p.get("anon", 0.0), 1) for name, p in parts.items()},
                 "file_mib": {name: round(p.get("file", 0.0), 1) for name, p in parts.items()}}
        if self.extra:
            try:
                entry.update(self.extra())
            except Exception as error:  # noqa: BLE001 - a missed reading is noted, never fatal
                entry["extra_error"] = repr(error)
        self.samples.append(entry)

    def growth(self, part: str = "rss_mib") -> dict:
        """Per process: first, last and largest of `part`, and the growth from first to last (MiB)."""
        names = sorted({n for s in self.samples for n in s[part]})
        out = {}
        for name in names:
            series = [s[part][name] for s in self.samples if name in s[part]]
            out[name] = {"first_mib": series[0], "last_mib": series[-1], "max_mib": max(series),
                         "growth_mib": round(series[-1] - series[0], 1)}
        return out
