"""What the benchmarks share: machine details for every result, a server to measure (the one at --url, or
a fresh one started on free ports), streaming calls over Triton gRPC with time to first token, percentiles,
and writing JSON + PNG under results/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imem_client import wire

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "results"


# ---- machine details ------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory_gib = round(kib / 1024 / 1024, 1)
    commit = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        if subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                          capture_output=True, text=True).stdout.strip():
            commit += "+dirty"
    gpu = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": gpu or None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": commit,
    }


def write_results(name: str, data: dict, json_path: str | None) -> Path:
    path = Path(json_path) if json_path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def plot_path(json_path: Path) -> Path:
    return json_path.with_suffix(".png")


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def disk_mib(folder: Path) -> float:
    """The disk a folder's files take (blocks in use: Qdrant preallocates its memory-mapped files sparse)."""
    if not folder.exists():
        return 0.0
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file()) / 2**20


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- a server to measure -----------------------------------------------------------------------------------
@contextlib.contextmanager
def server(url: str | None, env: dict | None = None, repository: str | None = None):
    """Yields (grpc_url, http_url, server): those of a running server when `url` is given (server None),
    else of a fresh server (its own ports and data folder, a TritonServer) that is stopped afterwards."""
    if url:
        http = os.environ.get("IMEM_HTTP_URL") or url.replace("grpc://", "http://")
        yield url, http, None
        return
    from imem_serve.launcher import TritonServer, free_ports

    workdir = Path(tempfile.mkdtemp(prefix="imem-bench-"))
    http_port, grpc_port, metrics_port = free_ports(3)
    started = TritonServer(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host="127.0.0.1",
                           log_path=workdir / "triton.log",
                           env={"IMEM_DATA_DIR": str(workdir / "data"), **(env or {})})
    if repository:
        started.model_repository = Path(repository)
    print(f"starting tritonserver (log {workdir / 'triton.log'}) ...", flush=True)
    started.start()
    try:
        started.wait_ready(timeout=600)
        yield f"grpc://127.0.0.1:{started.grpc_port}", f"http://127.0.0.1:{started.http_port}", started
    finally:
        started.stop()


# ---- streaming over Triton gRPC ------------------------------------------------------------------------------
@dataclass
class Sample:
    ttft_ms: float
    total_ms: float
    completion_tokens: int
    prompt_tokens: int
    start: float
    end: float
    error: str = ""


async def stream_once(client, model: str, inputs: list, timeout: float = 300.0) -> Sample:
    """One request on its own gRPC stream; reads responses until the one with a finish_reason."""
    done = asyncio.Event()

    async def requests():
        yield {"model_name": model, "inputs": inputs, "request_id": uuid.uuid4().hex}
        # Our side of the stream stays open until the final response: Triton cancels the requests of a
        # stream whose client has finished sending.
        await done.wait()

    start = time.perf_counter()
    first, final, error = None, None, ""
    responses = client.stream_infer(requests(), stream_timeout=timeout)
    try:
        async for result, failure in responses:
            if failure is not None:
                error = str(failure)
                break
            if first is None and wire.scalar(result.as_numpy("text_output")):
                first = time.perf_counter()
            if wire.scalar(result.as_numpy("finish_reason")):
                final = result
                break
    except Exception as failure:  # noqa: BLE001 - reported with the sample
        error = repr(failure)
    finally:
        done.set()
        if final is None:  # a request still running is cancelled; a finished one's stream just closes
            responses.cancel()
    end = time.perf_counter()
    chunk = wire.Chunk.from_values(wire.result_values(final)) if final is not None else None
    if chunk is None and not error:
        error = "the stream ended without a final response"
    return Sample(((first or end) - start) * 1000, (end - start) * 1000, chunk.completion_tokens if chunk else 0,
                  chunk.prompt_tokens if chunk else 0, start, end, error)


def summarize_samples(samples: list[Sample], wall: float | None = None) -> dict:
    """`wall`: the seconds the samples were taken in, when they come from several separate phases (else
    first start to last end)."""
    ok = [s for s in samples if not s.error]
    if not ok:
        return {"requests": len(samples), "errors": len(samples)}
    if wall is None:
        wall = max(s.end for s in ok) - min(s.start for s in ok)
    tokens = sum(s.completion_tokens for s in ok)
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3) if wall else None,
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "completion_tokens_mean": round(tokens / len(ok), 1),
        "prompt_tokens_mean": round(sum(s.prompt_tokens for s in ok) / len(ok), 1),
        "ttft_p50_ms": round(percentile([s.ttft_ms for s in ok], 50), 2),
        "ttft_p95_ms": round(percentile([s.ttft_ms for s in ok], 95), 2),
        "ttft_p99_ms": round(percentile([s.ttft_ms for s in ok], 99), 2),
        "latency_p50_ms": round(percentile([s.total_ms for s in ok], 50), 2),
        "latency_p95_ms": round(percentile([s.total_ms for s in ok], 95), 2),
        "latency_p99_ms": round(percentile([s.total_ms for s in ok], 99), 2),
    }


async def model_stats(client, models: list[str]) -> dict:
    """Triton's cumulative per-model statistics: {model: {"success"|"queue"|"compute_infer"...: (count, ns)}}."""
    out = {}
    for model in models:
        stats = await client.get_inference_statistics(model, as_json=True)
        for entry in stats.get("model_stats", []):
            inference = entry.get("inference_stats", {})
            out[model] = {key: (int(v.get("count", 0)), int(v.get("ns", 0))) for key, v in inference.items()}
            out[model]["executions"] = (int(entry.get("execution_count", 0)), 0)
    return out


def stats_delta(before: dict, after: dict, per: int) -> dict:
    """Milliseconds per `per` requests spent in each model between two model_stats() snapshots."""
    out = {}
    for model, values in after.items():
        old = before.get(model, {})
        entry = {}
        for key in ("queue", "compute_infer"):
            if key in values:
                entry[f"{key}_ms"] = round((values[key][1] - old.get(key, (0, 0))[1]) / 1e6 / max(per, 1), 3)
        entry["calls"] = round((values["success"][0] - old.get("success", (0, 0))[0]) / max(per, 1), 2)
        entry["executions"] = round((values["executions"][0] - old.get("executions", (0, 0))[0]) / max(per, 1), 2)
        out[model] = entry
    return out


def stats_sum(total: dict, delta: dict) -> dict:
    """Two stats_delta() results added up, model by model."""
    return {model: {key: total.get(model, {}).get(key, 0) + delta.get(model, {}).get(key, 0)
                    for key in set(total.get(model, {})) | set(delta.get(model, {}))}
            for model in set(total) | set(delta)}


def run_async(coroutine):
    return asyncio.run(coroutine)
