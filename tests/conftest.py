import os
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs the dev model (random weights, Mistral's tokenizer and template: fast, and what the tests
# of prompt packing expect); only test_answers.py starts a server of the default model.
os.environ.setdefault("IMEM_MODEL", str(Path(__file__).resolve().parents[1] / ".build" / "dev-model"))


@pytest.fixture(scope="session")
def dev_model_path() -> Path:
    from imem import dev_model

    path = Path(os.environ["IMEM_MODEL"])
    if path == dev_model.DEV_MODEL and not dev_model.built(path):
        dev_model.build(path)
    return path


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """SmolLM2-135M-Instruct, the model `make serve` runs (built by `make test` before the suite)."""
    from imem import smollm2

    if not smollm2.DEFAULT_OUT.exists():
        smollm2.build(smollm2.DEFAULT_OUT)
    return smollm2.DEFAULT_OUT


@pytest.fixture(scope="session")
def tokenizer(dev_model_path):
    from imem.tokenizer import load_tokenizer

    return load_tokenizer(str(dev_model_path))


@pytest.fixture
def threads_still_running():
    """`threads_still_running(threads)`: the names of those that have not ended within 10 s. A gRPC stream's
    threads end a moment after it is closed (on a busy machine, often after the call that closed it has
    returned), so a check for threads left behind waits for them."""
    def still_running(threads: set[threading.Thread], within: float = 10) -> list[str]:
        deadline = time.monotonic() + within
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in threads if thread.is_alive()]
    return still_running


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (all-MiniLM-L6-v2 on ONNX Runtime), exported first if `make` has not."""
    from imem.config import EmbedderConfig
    from imem.embedding import Embedder, build_onnx

    config = EmbedderConfig()
    if config.runtime == "onnx" and not config.model and not (Path(config.onnx_path) / "model.onnx").exists():
        build_onnx(Path(config.onnx_path))
    return Embedder(config)


class OneCallAtATime:
    """qdrant-client's local mode, like a Qdrant server, applies one call at a time, but it is not safe to
    call from several threads at once (a server is): this takes the calls in turn. The writers' claims still
    interleave between calls, which is what the concurrency tests are about. No Qdrant server binary can be
    had on this machine (PyPI, Debian and npm ship none) to run them against several processes."""

    def __init__(self, client):
        self._client, self._lock = client, threading.Lock()

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with self._lock:
                return attribute(*args, **kwargs)

        return call


@pytest.fixture
def local_qdrant():
    """qdrant-client in local mode (":memory:" or a folder), taking calls one at a time (OneCallAtATime)."""
    from qdrant_client import QdrantClient

    return lambda location: OneCallAtATime(QdrantClient(location=str(location)) if str(location) == ":memory:"
                                           else QdrantClient(path=str(location)))
