"""Every `imem bench NAME` in its smallest form, run as a user runs it (the command line, or the make target
the docs show), each result checked for the figures it promises: a command nothing runs breaks silently.
(`locomo`: test_bench_locomo.py; `loadtest`: test_loadtest.py; `answers`: test_answers.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMEM = str(Path(sys.executable).parent / "imem")


def bench(name: str, *args: str, out: Path) -> dict:
    done = subprocess.run([IMEM, "bench", name, *args, "--json", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert done.returncode == 0, f"imem bench {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def make(target: str, *variables: str, out: Path) -> dict:
    done = subprocess.run(["make", "--no-print-directory", target, *variables, f"JSON={out}"], capture_output=True,
                          text=True, timeout=900, cwd=REPO, env={**os.environ, "PYTEST_ARGS": ""})
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def has(result: dict, *keys: str) -> None:
    missing = [key for key in keys if key not in result]
    assert not missing, f"missing {missing} in {sorted(result)}"
    assert result["machine"]["git_commit"], "a result names the commit it ran on"


def test_overhead_against_a_running_server(service, tmp_path):
    result = bench("overhead", "--url", service.grpc_url, "--quick", out=tmp_path / "overhead.json")
    has(result, "levels", "added_p50_ms", "throughput_ratio", "settings")
    for level in result["levels"].values():
        assert level["chat"]["errors"] == 0 and level["llm"]["errors"] == 0
        assert level["chat"]["tokens_per_s"] > 0 and level["throughput_ratio"] > 0


def test_overhead_on_the_synthetic_engine(tmp_path):
    result = bench("overhead", "--engine", "synthetic", "--quick", out=tmp_path / "overhead-synthetic.json")
    has(result, "levels", "added_p50_ms", "throughput_ratio", "synthetic", "targets")
    for level in result["levels"].values():
        assert {"offered_tokens_per_s", "bare_reaches_offered", "added_ttft_p99_ms", "cpu_ms_per_request",
                "triton_ms_per_chat_request"} <= set(level)
        assert level["cpu_ms_per_request"]["chat"]["memory_0_0"] > 0


def test_scale(tmp_path):
    result = bench("scale", "--quick", out=tmp_path / "scale.json")
    has(result, "rows", "edge_recall_p50_growth")
    assert [row["turns"] for row in result["rows"]] == [1000, 2000]


def test_prompt_cost(tmp_path):
    result = bench("prompt-cost", "--quick", out=tmp_path / "prompt-cost.json")
    has(result, "turns", "prompt_budget")
    assert all(row["fact_in_prompt"] and row["prompt_tokens"] <= result["prompt_budget"]
               for row in result["turns"].values())


def test_embedder(tmp_path):
    result = bench("embedder", "--quick", out=tmp_path / "embedder.json")
    has(result, "triton", "in_process")


def test_ingest_against_a_running_server(service, tmp_path):
    result = bench("ingest", "--url", service.grpc_url, "--quick", out=tmp_path / "ingest.json")
    has(result, "runs", "turns_per_s")
    assert result["runs"][0]["ingested"] == 200


def test_durability(tmp_path):
    result = bench("durability", "--quick", out=tmp_path / "durability.json")
    has(result, "rows")
    assert [row["flush_each_write"] for row in result["rows"]] == [False, True]


def test_backpressure_on_the_synthetic_engine(tmp_path):
    result = bench("backpressure", "--quick", out=tmp_path / "backpressure.json")
    has(result, "phases", "flood_ttft_p50_vs_calm", "recovery_latency_ratio", "server_survived", "targets")
    flood = result["phases"][1]
    assert flood["refused"] > 0 and flood["refused_checked"] > 0 and flood["refused_stored"] == 0
    # The probe beside Locust: its own refusals timed and looked up in memory, its served chats' first token.
    assert flood["probe_refused"] > 0 and flood["probe_refused_stored"] == 0 and not flood["probe_other_errors"]
    assert flood["probe_refusal_p99_ms"] is not None and all(r["probe_served"] > 0 for r in result["phases"])


@pytest.mark.parametrize("target, variables, keys", [
    # Two rounds: the second deletes a conversation of the first (their lifetimes are staggered).
    ("crash", ["ROUNDS=2"], ["rounds", "lost", "duplicates", "duplicate_numbers", "gaps", "leaks", "vectors",
                             "resurrected", "nothing_killed", "restart_failures", "deleted", "store_mib_last",
                             "restart_s_p50_last_100", "rounds_detail"]),
    ("soak", ["MINUTES=1"], ["turns", "failures", "growth_mib_per_10k_turns", "anon", "file", "samples"]),
])
def test_make_targets_on_the_synthetic_engine(target, variables, keys, tmp_path):
    result = make(target, *variables, out=tmp_path / f"{target}.json")
    has(result, *keys)
    if target == "crash":
        assert result["rounds"] == 2 and all(r["killed"] for r in result["rounds_detail"])
        assert result["deleted"] >= 1 and result["store_mib_last"] > 0
        assert all(result[kind] == 0 for kind in keys[1:10])
    else:
        assert result["turns"] > 0 and result["failures"] == 0
