"""One real tritonserver (memory, the chat model on vLLM, the embedder) shared by every integration test.
vLLM needs ~30 s to start on CPU, so the server is started once per session."""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from imem_client.client import Client
from imem_serve.launcher import TritonServer, free_ports, group_members

# Every test server refreshes memory's gauges (store size, turns waiting for a vector) every 0.5 s.
SESSION_ENV = {"IMEM_METRICS_INTERVAL_S": "0.5"}


OPEN_CLIENTS: list[Client] = []


def wait_for(condition, seconds: float = 120, step: float = 0.5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.fixture(autouse=True)
def close_clients():
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


class RunningService:
    def __init__(self, data_dir: Path, log_path: Path, env: dict | None = None):
        self.data_dir = data_dir
        self.log_path = log_path
        http, grpc, metrics = free_ports(3)
        self.server = TritonServer(http_port=http, grpc_port=grpc, metrics_port=metrics,
                                   host="127.0.0.1", log_path=log_path,
                                   env={"IMEM_DATA_DIR": str(data_dir), **SESSION_ENV, **(env or {})})

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.server.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def start(self) -> None:
        self.server.start()
        self.server.wait_ready(timeout=600)

    def restart(self, kill: bool = False) -> None:
        """Stops the server (gracefully, or SIGKILL as in a crash) and starts it on the same data."""
        self.server.kill() if kill else self.server.stop()
        self.start()

    def client(self, protocol: str = "grpc") -> Client:
        """A client closed after the test (close_clients): an HTTP connection left open would hold up the
        server's graceful stop for Triton's whole exit timeout."""
        client = Client(self.grpc_url if protocol == "grpc" else self.http_url)
        OPEN_CLIENTS.append(client)
        return client

    def metric(self, name: str, **labels: str) -> float:
        """A value on Triton's metrics port, of the series that has `labels`. A name or labels that match no
        series fail the test: a check of a metric that does not exist would pass for the wrong reason."""
        import re
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10).read()
        for match in re.finditer(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$", body.decode(), re.MULTILINE):
            if all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
                return float(match.group(2))
        raise AssertionError(f"no metric {name} {labels or ''} on Triton's metrics port")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def vllm_engine(self) -> int:
        """The PID of the chat model's vLLM engine process (EngineCore)."""
        return next(pid for pid in group_members(self.server.process.pid)
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::EngineCore"))

    def step_engine(self, engine: int, until, seconds: float = 60) -> bool:
        """Lets a paused (SIGSTOP) vLLM engine run 20 ms in every 200 ms until `until()` is true, and only
        while memory has no chat step waiting: a test that acts on what its client has received holds the
        engine, or a slow store of the message lets the whole reply be generated before the client has its
        first chunk (seen in CI).

        Where it may (root), this thread is real-time meanwhile: on a busy machine a normal one waited in
        the run queue for 4.2-4.4 s right after letting the engine run (two CPU hogs on this 2-core machine,
        /proc schedstat), and the engine generated the whole reply in that "20 ms". Elsewhere the hold is
        looser, so a test checks afterwards what the server did."""
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except PermissionError:
            pass
        try:
            deadline = time.monotonic() + seconds
            while not until():
                if time.monotonic() > deadline:
                    return False
                if self.metric("nv_inference_pending_request_count", model="memory") == 0:
                    os.kill(engine, signal.SIGCONT)
                    time.sleep(0.02)
                    os.kill(engine, signal.SIGSTOP)
                time.sleep(0.18)
            return True
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def start_service(env: dict | None = None, data_dir: Path | None = None, while_starting=None) -> RunningService:
    """A new server with its own data folder (or `data_dir`) and log; `while_starting(server)` runs in a
    thread from the moment it is started (a fault to inject while its models load)."""
    workdir = Path(tempfile.mkdtemp(prefix="imem-it-"))
    running = RunningService(data_dir or workdir / "data", workdir / "triton.log", env)
    if while_starting:
        threading.Thread(target=while_starting, args=(running.server,), daemon=True).start()
    try:
        running.start()
    except Exception:
        running.server.kill()
        print(running.log()[-5000:])
        raise
    return running


@pytest.fixture(scope="session")
def new_service(dev_model_path):
    """start_service, for tests that need a server of their own (faults that break it)."""
    return start_service


@pytest.fixture(scope="session")
def service(dev_model_path):
    running = start_service()
    yield running
    running.server.stop()


@pytest.fixture
def client(service):
    c = service.client("grpc")
    yield c
    c.close()


@pytest.fixture
def http_client(service):
    c = service.client("http")
    yield c
    c.close()


class RunningGateway:
    """`imem gateway` as a subprocess against the shared Triton, with one API key per role in the tests."""

    KEYS = {  # name: (tenant, requests per minute, tokens per minute)
        "acme": ("acme", 0, 0),
        "globex": ("globex", 0, 0),
        "limited": ("acme", 2, 0),
        "frugal": ("acme", 0, 10),
        "fuzz": ("fuzz", 0, 0),
    }

    def __init__(self, service: RunningService, workdir: Path):
        import json

        from imem_gateway.keys import digest

        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys = {name: f"imem-test-{name}-key" for name in self.KEYS}
        keys_file = workdir / "keys.json"
        keys_file.write_text(json.dumps({"keys": [
            {"sha256": digest(self.keys[name]), "tenant": tenant, "name": name, "requests_per_minute": rpm,
             "tokens_per_minute": tpm} for name, (tenant, rpm, tpm) in self.KEYS.items()]}))
        self.keys["env"] = "imem-test-env-key"  # the IMEM_API_KEYS form, for tenant "envtenant"
        self.log_path = workdir / "gateway.log"
        self.command = [sys.executable, "-m", "imem_cli", "gateway", "--url", service.grpc_url,
                        "--host", "127.0.0.1", "--port", str(self.port), "--keys-file", str(keys_file)]
        self.env = {**os.environ, "IMEM_API_KEYS": f"{self.keys['env']}=envtenant"}
        self.process = None

    def start(self) -> None:
        import urllib.request

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"the gateway did not become healthy: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def openai(self, key: str = "acme", **options):
        import openai

        options.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys.get(key, key), **options)


@pytest.fixture(scope="module")
def gateway(service):
    running = RunningGateway(service, Path(tempfile.mkdtemp(prefix="imem-gw-")))
    try:
        running.start()
        yield running
    finally:
        running.stop()
