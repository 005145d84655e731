"""Starts the real tritonserver binary (shipped in the nvidia-pytriton wheel) on our model repository.

Used by `imem serve` (and so `make serve`) and by the integration tests, so both run the same launch.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
PYTHON_BACKENDS = REPO_ROOT / "python_backends"
OUR_BACKENDS = ("embedder", "memory", "chat")

# Triton's admin surfaces (model control, shared memory, tracing, logging) stay closed by default:
# only the inference, health and metadata endpoints are reachable. Every restricted endpoint needs
# the header `imem-admin: <IMEM_ADMIN_KEY>`.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
SHM = "/dev/shm"
# What a killed server leaves there: its stubs' regions, and the Python shared memory and semaphores
# of vLLM's engine.
SHM_KINDS = ("triton_", "psm_", "sem.loky-")

# Triton 2.51's Python backend can deadlock at start-up: when a stub misses one health check while its
# model initialises (descheduled for a second or two on a loaded machine), the thread loading that model
# gives up on it and then waits for it to exit (waitpid) without killing it, while the stub finishes its
# initialisation and waits for messages. The server never gets ready. A tritonserver thread blocked that
# long in wait4() on one of its own live stubs is that deadlock: the stub is killed, the load fails, the
# server exits, and it is started again.
STUCK_STUB_S = 20
# Seconds tritonserver is given to exit by itself once the memory model has unloaded (TritonServer.stop).
UNLOADED_GRACE_S = 5
WAIT4 = {"x86_64": "61", "aarch64": "260"}.get(platform.machine())


def _pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent


def build_backend_directory(build_dir: Path) -> Path:
    """Lays out <build>/backends: Triton's Python backend plus one folder per Python-based backend.

    The stub embeds the system libpython 3.11, so the stub for that version is copied beside
    libtriton_python.so; our backends are links to python_backends/<name>.
    """
    pytriton_dir = _pytriton_dir()
    backends = build_dir / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    source = pytriton_dir / "tritonserver" / "backends" / "python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton_dir / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    for path in (source / "libtriton_python.so", source / "triton_python_backend_utils.py", stub):
        # Copy then rename: a stub still exiting from a killed server keeps the old file busy.
        partial = python_backend / f".{path.name}.partial"
        shutil.copy2(path, partial)
        os.replace(partial, python_backend / path.name)
    for name in OUR_BACKENDS:
        link = backends / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(PYTHON_BACKENDS / name, target_is_directory=True)
    return backends


def server_environment(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    # The stub finds its packages through the first `python3` on PATH: that must be our venv's.
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = str(libs) + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


@dataclass
class TritonServer:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "0.0.0.0"
    env: dict = field(default_factory=dict)
    log_path: Path | None = None
    admin_key: str = ""
    process: subprocess.Popen | None = None
    # Another repository of the same models (e.g. a benchmark's variant of one config); default ours.
    model_repository: Path = MODEL_REPOSITORY
    # Seconds tritonserver waits for requests in flight when asked to stop, before it exits regardless.
    # Triton 2.51 first spends up to this long waiting for open HTTP connections (idle keep-alive ones
    # too) to close, then gives what is left to the requests in flight.
    exit_timeout: int = 20
    shm_before: set = field(default_factory=set)  # /dev/shm when this server started
    # vLLM's ZMQ sockets: by default it leaves them in /tmp for ever (about 85 files a test suite)
    ipc_dir: str | None = None

    @property
    def started(self) -> subprocess.Popen:
        """The tritonserver process, for what only makes sense after start()."""
        if self.process is None:
            raise RuntimeError("tritonserver has not been started")
        return self.process

    def command(self) -> list[str]:
        """The tritonserver command line (lays out the backend folder under .build/ first)."""
        binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        return [str(binary), *self.flags(build_backend_directory(REPO_ROOT / ".build"))]

    def flags(self, backends: Path) -> list[str]:
        """tritonserver's flags for this server with its backends in `backends`; no side effects (the
        deploy check compares the images' entrypoint with them)."""
        admin = self.admin_key or os.environ.get("IMEM_ADMIN_KEY", "") or os.urandom(16).hex()
        restricted = ",".join(RESTRICTED_APIS)
        return [
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            "--log-verbose=0",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--http-restricted-api={restricted}:imem-admin={admin}",
            f"--grpc-restricted-protocol={restricted}:imem-admin={admin}",
        ]

    def start(self) -> "TritonServer":
        self.shm_before = set(os.listdir(SHM))
        self.ipc_dir = tempfile.mkdtemp(prefix="imem-vllm-ipc-")
        out = open(self.log_path, "ab") if self.log_path else None
        # Its own process group: the stubs and vLLM's engine processes are in it, and nothing else.
        self.process = subprocess.Popen(
            self.command(), env=server_environment({"VLLM_RPC_BASE_PATH": self.ipc_dir, **self.env}), stdout=out,
            stderr=subprocess.STDOUT if out else None, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        # Triton opens its metrics port after it reports ready (40 ms later, once, here: a test that read a
        # metric at once was refused), so ready means both answer.
        ready = (f"http://127.0.0.1:{self.http_port}/v2/health/ready", f"http://127.0.0.1:{self.metrics_port}/metrics")
        waited_on: dict[int, float] = {}  # stub pid -> since when a tritonserver thread waits for its exit
        killed_stuck_at = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            exited = self.process is not None and self.process.poll() is not None
            # The start-up deadlock (STUCK_STUB_S), broken: once the load has failed, the same start again.
            if killed_stuck_at is not None and (exited or now - killed_stuck_at > 60):
                _warn("starting tritonserver again after killing its stuck model process")
                self.kill()
                self.start()
                waited_on, killed_stuck_at = {}, None
                continue
            if exited:
                raise RuntimeError(f"tritonserver exited with code {self.started.returncode} before it was ready"
                                   + self._load_errors())
            if all(_answers(url) for url in ready):
                return
            waited_on = {pid: waited_on.get(pid, now) for pid in stubs_waited_on(self.started.pid)}
            for pid, since in waited_on.items():
                if now - since > STUCK_STUB_S and killed_stuck_at is None:
                    _warn(f"tritonserver has waited {now - since:.0f} s for its model process {pid} to exit while "
                          "starting (the Python backend's start-up deadlock): killing that process")
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    killed_stuck_at = now
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s" + self._load_errors())

    def stubs(self) -> dict[str, int]:
        """Model instance (memory_0_0, chat_0_0, embedder_0_1, ...) -> pid of its Python stub process."""
        found = {}
        for pid in group_members(self.process.pid) if self.process else []:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if any(a.endswith("triton_python_backend_stub") for a in argv):
                    found.update({a: pid for a in argv if re.fullmatch(rf"({'|'.join(OUR_BACKENDS)})_\d+_\d+", a)})
        return found

    def _load_errors(self) -> str:
        """Why models failed to load, from the log (Triton 2.51 may then die of SIGSEGV while cleaning up,
        so the exit code alone says nothing)."""
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        failures = re.findall(r'failed to load \'(\w+)\' version \d+: (.*?)(?:\\n|"$)',
                              Path(self.log_path).read_text(errors="replace"), re.MULTILINE)
        found = dict(failures)  # the last failure of each model
        return "".join(f"\n  model {name!r} failed to load: {why}" for name, why in found.items()) + \
            f"\n  (log: {self.log_path})"

    def stop(self) -> None:
        """Graceful stop: SIGTERM to tritonserver (it finishes what is in flight, then unloads every model),
        then whatever of its process group is left is killed.

        Once the memory model's process has exited (its store closed: the last thing that holds data),
        tritonserver gets UNLOADED_GRACE_S more, then is killed: Triton 2.51's gRPC frontend can keep a
        request of a stream its client cancelled (or left open) referenced for good, and the model of that
        request (the chat model) then never unloads, so Triton would wait out its whole exit timeout with
        nothing left to finish. Triton 2.51 can also hang in exit() after its exit timeout ran out: it gets
        ten more seconds, then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            memory = self.stubs().get("memory_0_0")
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.exit_timeout + 10
            unloaded_at = None
            while self.process.poll() is None and time.monotonic() < deadline:
                if unloaded_at is None and (memory is None or not alive(memory)):
                    unloaded_at = time.monotonic()
                if unloaded_at is not None and time.monotonic() - unloaded_at > UNLOADED_GRACE_S:
                    break
                time.sleep(0.1)
        self.kill()

    def kill(self) -> None:
        """Hard stop, what a crash looks like: SIGKILL to tritonserver and every process of its group (the
        stubs, vLLM's engine). Returns once none of them is left, so that a server started next finds the
        data folder free; then removes the shared memory the killed processes could not."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 30
        while group_members(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        remove_unused_shared_memory(set(os.listdir(SHM)) - self.shm_before)
        if self.ipc_dir:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


def remove_unused_shared_memory(names: set[str]) -> None:
    """Removes those of `names` in /dev/shm that are Triton stub regions or Python shared memory and
    semaphores (vLLM's engine queues and locks) that nothing alive can still use: a killed process cannot
    unlink its own. Other servers' files may be among `names` (everything new since this one started).

    A region is in use while a live process maps it. A semaphore's creator maps it under the temporary
    name glibc made it with (sem.XXXXXX, linked into place, then unlinked), so by its own name it is seen
    only in processes that opened it afterwards: it is also kept while its creator (the pid in
    sem.loky-<pid>-N, the names joblib's loky gives every multiprocessing lock) is alive. Seen removed
    between a vLLM engine creating its workers' lock and its worker opening it, ~10 s on a loaded
    machine: the worker failed to start, and so did that engine."""
    names = {n for n in names if n.startswith(SHM_KINDS) and not _creator_alive(n)}
    if not names:
        return
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            mapped.update(line.rsplit("/dev/shm/", 1)[1].split(" ")[0] for line in maps.read_text().splitlines()
                          if "/dev/shm/" in line)
    for name in names - mapped:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM, name))


def _creator_alive(name: str) -> bool:
    """Whether the process named in a semaphore's name (sem.loky-<pid>-N) is alive; False for other names."""
    if not name.startswith("sem.loky-"):
        return False
    pid = name.removeprefix("sem.loky-").split("-", 1)[0]
    stat = process_stat(int(pid)) if pid.isdigit() else None
    return stat is not None and stat[0] != "Z"


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


def _warn(message: str) -> None:
    print(f"imem: {message}", file=sys.stderr, flush=True)


def stubs_waited_on(server: int) -> set[int]:
    """Live child processes of `server` that one of its threads is blocked waiting for in wait4()."""
    waited = set()
    for syscall in Path(f"/proc/{server}/task").glob("*/syscall"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = syscall.read_text().split()
            if fields[0] == WAIT4:
                waited.add(int(fields[1], 16))
    return {pid for pid in waited if _parent_if_alive(pid) == server}


def alive(pid: int) -> bool:
    """Whether a process runs: a zombie (killed, not yet reaped by its parent) does not."""
    return _parent_if_alive(pid) is not None


def _parent_if_alive(pid: int) -> int | None:
    stat = process_stat(pid)
    return stat[1] if stat and stat[0] != "Z" else None


def process_stat(pid: int) -> tuple[str, int, int] | None:
    """A process's state letter, parent and process group (from /proc/<pid>/stat); None once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[2])
    return None


# Ports drawn from the system's entropy, not the global `random`: a caller (a test framework, a seeded
# benchmark) may seed that, and two such processes would then draw the same ports.
_PORTS = random.SystemRandom()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free now, from just below the kernel's ephemeral range: tritonserver
    binds its ports only once its models are loaded (~40 s on CPU), and meanwhile a port of the ephemeral
    range can be taken as the local end of any connection."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            candidate = socket.socket()
            held.append(candidate)
            try:
                candidate.bind(("127.0.0.1", _PORTS.randrange(max(1024, low - 12000), low)))
            except OSError:  # in use, or already one of ours (held until all are found)
                continue
            ports.append(candidate.getsockname()[1])
    finally:
        for candidate in held:
            candidate.close()
    return ports


def group_members(group: int) -> list[int]:
    """Processes of a process group that have not exited (zombies left for init to reap are not counted:
    they hold no file and no memory)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        stat = process_stat(int(entry.name))
        if stat and stat[2] == group and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def supervise(server: TritonServer, log=print, interval: float = 1.0, stop=None) -> None:
    """Keeps `server` serving until interrupted (or `stop`, a threading.Event, is set): when tritonserver
    exits, or one of its model processes dies (Triton 2.51 does not restart a dead stub: every request on
    that model fails from then on), the whole server is killed and started again on the same data."""
    stop = stop or threading.Event()
    expected = set(server.stubs())
    while not stop.wait(interval):
        code = server.started.poll()
        gone = expected - set(server.stubs()) if code is None else set()
        if code is None and not gone:
            continue
        log(f"tritonserver exited with code {code}" if code is not None else
            f"model process(es) {', '.join(sorted(gone))} died")
        log("starting tritonserver again on the same data ...")
        server.kill()
        server.start()
        server.wait_ready(timeout=600)
        expected = set(server.stubs())
        log("tritonserver is ready again")
