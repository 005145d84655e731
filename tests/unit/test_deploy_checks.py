"""The offline checks of docker/ and deploy/ that need no downloaded tool (`make deploy-check` runs these
and the linters): a dashboard, compose file, image or setting that drifts from the code fails here."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("check", ["images", "makefile", "settings", "compose", "grafana"])
def test_deploy_check_finds_no_problem(check):
    done = subprocess.run([sys.executable, "deploy/checks.py", check], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PROBLEM" not in done.stdout
