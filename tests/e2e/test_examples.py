"""The runnable examples run, and say what their docstrings promise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.procs import ROOT

pytestmark = pytest.mark.e2e


def test_resilience_example() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "resilience" / "run.py")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    before, _, after = out.partition("takes traffic again")
    assert "ejected now: ['ratings-c']; calls ratings-c received: 3" in before
    assert "503 from ratings-c" in before  # a retried attempt, shown by CallInfo
    assert "200 from ratings-c" in after  # back after its ejection
    assert "DeadlineExceededError after 0.5" in out
    told = int(out.split("the upstream was told it had ")[1].split(" ms")[0])
    assert 450 <= told <= 500


def test_grpc_example() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "grpc" / "run.py")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # greeter-a, xDS-enabled, serves once the file holds its Listener
    assert "greeter-a serving: False (waiting for Listener 'grpc/server?" in out
    assert "greeter-a serving: True" in out
    assert "retried: 200 grpc-status 14 from" in out  # greeter-c's UNAVAILABLE, retried
    assert "answered by: {'greeter-a': 6, 'greeter-b': 6}" in out
    assert "DEADLINE_EXCEEDED after 1.0 s; the server was told it had 1.0 s" in out


def test_mtls_example() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mtls" / "run.py")],
        capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    caller = "spiffe://example.org/ns/default/sa/productpage"
    assert f"productpage is {caller}, its certificate valid for another 24 h" in out
    assert f"reviews sees {caller}" in out
    assert f"ratings sees {caller}" in out
    assert "plaintext to reviews: refused" in out
    assert "plaintext to ratings: refused (UNAVAILABLE)" in out
