"""`sail config-dump --bootstrap ... --wait N` returns within about N seconds when the
control plane never answers: a registry still in its registration grace (it accepts the ADS
stream and says nothing), and a TCP port that accepts connections and never speaks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import ROOT
from tests.e2e.test_registry import RunningRegistry

pytestmark = pytest.mark.e2e

WAIT = 2.0
BOUND = WAIT + 5.0  # generous: interpreter start, imports, closing the xDS client


@pytest.fixture
def silent_registry() -> Iterator[str]:
    registry = RunningRegistry(registration_grace=600)  # serves nothing for ten minutes
    try:
        yield registry.address
    finally:
        registry.stop()


@pytest.fixture
def silent_socket() -> Iterator[str]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshake; nobody reads
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def dump(
    tmp_path: Path, address: str, *services: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    boot = tmp_path / "bootstrap.json"
    boot.write_text(json.dumps({
        "xds_servers": [{"server_uri": address, "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "config-dump"},
    }))
    args = [sys.executable, "-m", "sail.cli.main", "config-dump", "--bootstrap", str(boot),
            "--wait", str(WAIT)]
    for service in services:
        args += ["--service", service]
    start = time.monotonic()
    done = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=BOUND + 30, check=False
    )
    return time.monotonic() - start, done


@pytest.mark.parametrize("server", ["silent_registry", "silent_socket"])
def test_wait_bounds_the_wait(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    address = request.getfixturevalue(server)
    elapsed, done = dump(tmp_path, address, "reviews", "ratings:9080", "details")
    assert done.returncode == 0, done.stderr
    assert elapsed < BOUND, (elapsed, done.stderr)
    snapshot = json.loads(done.stdout)  # what it has: nothing
    assert snapshot["listeners"] == {}
