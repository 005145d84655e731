"""A short headless Locust run (loadtest/locustfile.py, gRPC and HTTP users) against the real server."""

import json

from imem_bench import loadtest


def test_a_short_locust_run_of_both_protocols_has_no_failures(service, tmp_path):
    code = loadtest.main(["--users", "2", "--duration", "10s", "--max-tokens", "8", "--turns", "4",
                          "--url", service.grpc_url, "--http-url", service.http_url, "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["errors"] == [], summary["errors"]
    assert set(summary["protocols"]) == {"grpc", "http"}
    for protocol in summary["protocols"].values():
        assert protocol["turns"] > 0 and protocol["tokens_per_s"] > 0
        assert 0 < protocol["time_to_first_token"]["p50_ms"] <= protocol["latency"]["p99_ms"]
    assert code == 0
    assert (tmp_path / "locust-report.html").stat().st_size > 0 and (tmp_path / "locust_stats.csv").exists()
