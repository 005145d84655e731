"""Starts the real tritonserver binary (shipped in the nvidia-pytriton wheel) on our model repository.

Used by `imem serve` (and so `make serve`) and by the integration tests, so both run the same launch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
PYTHON_BACKENDS = REPO_ROOT / "python_backends"
OUR_BACKENDS = ("embedder", "memory", "llm")

# Triton's admin surfaces (model control, shared memory, tracing, logging) stay closed by default:
# only the inference, health and metadata endpoints are reachable. Every restricted endpoint needs
# the header `imem-admin: <IMEM_ADMIN_KEY>`.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")


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

    def command(self) -> list[str]:
        build_dir = REPO_ROOT / ".build"
        backends = build_backend_directory(build_dir)
        binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        admin = self.admin_key or os.environ.get("IMEM_ADMIN_KEY", "") or os.urandom(16).hex()
        cmd = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            "--log-verbose=0",
            "--exit-timeout-secs=20",
        ]
        restricted = ",".join(RESTRICTED_APIS)
        cmd.append(f"--http-restricted-api={restricted}:imem-admin={admin}")
        cmd.append(f"--grpc-restricted-protocol={restricted}:imem-admin={admin}")
        return cmd

    def start(self) -> "TritonServer":
        out = open(self.log_path, "ab") if self.log_path else None
        self.process = subprocess.Popen(
            self.command(), env=server_environment(self.env), stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} before it was ready"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop: SIGTERM to tritonserver (it unloads every model), then reap what is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Hard stop: SIGKILL the server and its stub processes (what a crash looks like)."""
        if self.process is None:
            return
        try:  # the group holds our stubs and vLLM's engine process, nothing else
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
