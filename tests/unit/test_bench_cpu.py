"""The CPU accounting of `imem bench overhead`: a process's CPU time read from /proc, as per-request figures."""

import os
import subprocess
import sys
import time

from imem_bench.overhead import cpu_ms_per_request
from imem_bench.processes import busy_cpu_seconds, cpu_seconds


def _burn(seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass


def test_cpu_seconds_counts_what_a_process_burned_on_all_its_threads():
    # The kernel's own counters, read two ways: they agree to its accounting tick (10 ms at 100 Hz).
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "def burn():\n"
                              "    t = time.thread_time()\n"
                              "    while time.thread_time() - t < 0.3: pass\n"
                              "threads = [threading.Thread(target=burn) for _ in range(2)]\n"
                              "[t.start() for t in threads]; [t.join() for t in threads]\n"
                              "print(time.process_time(), flush=True)\n"
                              "input()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        burned = float(child.stdout.readline())
        assert burned >= 0.6
        assert abs(cpu_seconds(child.pid) - burned) < 0.05
    finally:
        child.communicate("\n", timeout=30)


def test_cpu_seconds_of_a_process_that_is_gone_is_none():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert cpu_seconds(child.pid) is None


def test_the_machine_busy_time_includes_this_process():
    before = busy_cpu_seconds()
    _burn(0.2)
    assert busy_cpu_seconds() - before >= 0.15
    assert cpu_seconds(os.getpid()) >= 0.15


def test_cpu_ms_per_request():
    assert cpu_ms_per_request({"memory_0_0": 1.5, "machine": 6.0}, 100) == {"memory_0_0": 15.0, "machine": 60.0}
