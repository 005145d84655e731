"""One real tritonserver (embedder, memory, vLLM, chat ensemble) shared by every integration test.
vLLM needs ~30 s to start on CPU, so the server is started once per session."""

import socket
import tempfile
from pathlib import Path

import pytest

from imem_client.client import Client
from imem_client.server import TritonServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningService:
    def __init__(self, data_dir: Path, log_path: Path):
        self.data_dir = data_dir
        self.server = TritonServer(http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port(),
                                   host="127.0.0.1", log_path=log_path,
                                   env={"IMEM_DATA_DIR": str(data_dir)})

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
        return Client(self.grpc_url if protocol == "grpc" else self.http_url)


@pytest.fixture(scope="session")
def service(dev_model_path):
    workdir = Path(tempfile.mkdtemp(prefix="imem-it-"))
    running = RunningService(workdir / "data", workdir / "triton.log")
    try:
        running.start()
    except Exception:
        running.server.kill()
        print((workdir / "triton.log").read_text()[-5000:])
        raise
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
