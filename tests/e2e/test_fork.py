"""A forked child (a pre-fork server's worker) gets its own xDS stream and keeps updating."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sail
from sail import testing
from sail.bootstrap import parse_bootstrap
from tests.e2e.procs import ROOT

pytestmark = pytest.mark.e2e


class RemoteXds:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.xds_server_proc"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def set(self, resources: list[dict[str, Any]]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(resources) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def remote() -> Iterator[RemoteXds]:
    server = RemoteXds()
    try:
        yield server
    finally:
        server.close()


def endpoints(port: int) -> list[dict[str, Any]]:
    return testing.service("reviews", {"r": [("127.0.0.1", port)]})


def bootstrap(remote: RemoteXds) -> sail.Bootstrap:
    return parse_bootstrap(
        {
            "xds_servers": [
                {"server_uri": f"127.0.0.1:{remote.port}", "channel_creds": [{"type": "insecure"}]}
            ],
            "node": {"id": "fork-test"},
        }
    )


def child_waits_for(mesh: sail.Mesh, port: int, write_fd: int) -> None:
    """In the child: report 0 once the mesh routes to `port`, 1 on timeout; never returns."""
    code = 1
    try:
        with mesh.client() as http:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                # A request through the mesh is what brings the child's stream up.
                # Nothing listens on the test ports; the pick is what matters.
                with contextlib.suppress(Exception):
                    http.get("http://reviews/", timeout=0.2)
                cla = mesh.snapshot.endpoints.get("r")
                if cla is not None and cla.endpoints[0].port == port:
                    code = 0
                    break
                time.sleep(0.05)
        os.write(write_fd, str(code).encode())
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_prefork_workers_each_start_their_own_stream(remote: RemoteXds) -> None:
    """gunicorn --preload: the mesh is built in the parent, which never uses it; each forked
    worker connects on first use and follows updates."""
    remote.set(endpoints(1001))
    mesh = sail.Mesh.from_bootstrap(bootstrap(remote))
    try:
        children = []
        for _ in range(2):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                child_waits_for(mesh, 1002, write_fd)
            os.close(write_fd)
            children.append((pid, read_fd))
        time.sleep(0.5)
        remote.set(endpoints(1002))
        for pid, read_fd in children:
            _, status = os.waitpid(pid, 0)
            assert os.read(read_fd, 8) == b"0"
            assert os.waitstatus_to_exitcode(status) == 0
            os.close(read_fd)
        assert mesh.snapshot.version == 0  # the parent never connected
    finally:
        mesh.close()
