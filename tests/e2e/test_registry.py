"""The registry end to end: real workloads register themselves, config is applied with the
admin API, and a sail client follows it."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sail
from sail._loop import background_loop
from sail.bootstrap import parse_bootstrap
from sail.registry.file_store import FileStore
from sail.registry.remote import AdminClient
from sail.registry.server import Registry
from sail.registry.store import MemoryStore, Store
from tests.e2e.procs import ROOT, start, stop
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e
TOKEN = "test-token"


class RunningRegistry:
    def __init__(
        self, port: int = 0, store_factory: Callable[[], Store] = MemoryStore, **kwargs: Any
    ) -> None:
        kwargs.setdefault("registration_grace", 0)
        self.store_factory = store_factory
        kwargs.setdefault("store", store_factory())
        self.registry = Registry(token=TOKEN, **kwargs)
        self.port = self._run(self.registry.start(f"127.0.0.1:{port}"))
        self.address = f"127.0.0.1:{self.port}"

    @staticmethod
    def _run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, background_loop()).result(10)

    def call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        return self._run(run())

    def admin(self) -> AdminClient:
        return AdminClient(self.address, TOKEN)

    def bootstrap(self, node_id: str = "test-client") -> sail.Bootstrap:
        return parse_bootstrap(
            {
                "xds_servers": [
                    {"server_uri": self.address, "channel_creds": [{"type": "insecure"}]}
                ],
                "node": {"id": node_id, "cluster": "tests"},
            }
        )

    def stop(self) -> None:
        self._run(self.registry.stop(0))


@pytest.fixture
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningRegistry]:
    """An in-process registry; parametrized indirectly with "file", a `FileStore` under
    `tmp_path/state` (`running.store_factory` opens it again), else in memory."""
    kind = getattr(request, "param", "memory")
    kwargs: dict[str, Any] = {}
    if kind == "file":
        kwargs["store_factory"] = lambda: FileStore(tmp_path / "state")
    running = RunningRegistry(**kwargs)
    try:
        yield running
    finally:
        running.stop()


def workload(registry: RunningRegistry, service: str, version: str) -> subprocess.Popen[bytes]:
    port = free_port()
    return start(
        [sys.executable, "-m", "uvicorn", "tests.e2e.workload:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env={
            "SERVICE": service,
            "PORT": str(port),
            "LABELS": f"version={version}",
            "SAIL_REGISTRY": registry.address,
            "SAIL_REGISTRY_TOKEN": TOKEN,
            "PYTHONPATH": str(ROOT),
        },
        port=port,
    )


def split_config(
    host: str,
    versions: tuple[str, ...],
    weights: dict[str, int],
    *,
    jason: str | None = None,
) -> str:
    """A DestinationRule with a subset per version (by `version` label) and a VirtualService
    splitting `host` by `weights`, sending `end-user: jason` to subset `jason` if given."""
    subsets = "\n".join(f"  - name: {v}\n    labels: {{version: {v}}}" for v in versions)
    routes = "\n".join(
        f"    - destination: {{host: {host}, subset: {v}}}\n      weight: {w}"
        for v, w in weights.items()
    )
    header_rule = (
        f"""  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: {host}, subset: {jason}}}
"""
        if jason
        else ""
    )
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  subsets:
{subsets}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
{header_rule}  - route:
{routes}
"""


def reviews_config(weights: dict[str, int], *, jason: str | None = None) -> str:
    return split_config("reviews", ("v1", "v2", "v3"), weights, jason=jason)


@pytest.fixture
def reviews(registry: RunningRegistry) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {v: workload(registry, "reviews", v) for v in ("v1", "v2", "v3")}
    try:
        wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 3)
        yield procs
    finally:
        for proc in procs.values():
            stop(proc)


def names(http: Any, n: int, **kwargs: Any) -> collections.Counter[str]:
    return collections.Counter(
        http.get("http://reviews/r", **kwargs).json()["name"] for _ in range(n)
    )


def test_sail_client_follows_applied_config(
    registry: RunningRegistry, reviews: dict[str, subprocess.Popen[bytes]]
) -> None:
    with registry.admin() as admin:
        admin.apply("reviews.yaml", reviews_config({"v1": 80, "v2": 20}, jason="v3"))
    with sail.Mesh.from_bootstrap(registry.bootstrap()) as mesh, mesh.client() as http:
        counts = names(http, 2000)
        assert counts["reviews-v1"] / 2000 == pytest.approx(0.80, abs=0.03)
        assert counts["reviews-v2"] / 2000 == pytest.approx(0.20, abs=0.03)
        assert set(names(http, 50, headers={"end-user": "jason"})) == {"reviews-v3"}
        with registry.admin() as admin:
            admin.apply("reviews.yaml", reviews_config({"v2": 50, "v3": 50}))
        wait_until(lambda: set(names(http, 40)) == {"reviews-v2", "reviews-v3"})
        counts = names(http, 2000)
        assert counts["reviews-v2"] / 2000 == pytest.approx(0.50, abs=0.03)
        status = registry.call(registry.registry.status)
        rows = [c for c in status["clients"] if c["node_id"] == "test-client"]
        assert rows and rows[0]["state"] == "SYNCED"
        assert rows[0]["version"] == str(status["version"])


def test_killed_workload_leaves_within_ttl(
    registry: RunningRegistry, reviews: dict[str, subprocess.Popen[bytes]]
) -> None:
    os.kill(reviews["v3"].pid, signal.SIGKILL)
    start_time = time.monotonic()
    wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 2, timeout=8)
    assert time.monotonic() - start_time < 5  # ttl 3 s + the 1 s sweep


def test_bad_config_is_refused_and_last_good_kept(
    registry: RunningRegistry, reviews: dict[str, subprocess.Popen[bytes]]
) -> None:
    with registry.admin() as admin:
        admin.apply("reviews.yaml", reviews_config({"v1": 100}))
        with pytest.raises(sail.ConfigError, match=r"reviews\.yaml.*weight"):
            admin.apply("reviews.yaml", reviews_config({"v1": 60, "v2": 20}))
        with pytest.raises(sail.ConfigError, match=r"bad-host\.yaml.*ratings"):
            admin.apply(
                "bad-host.yaml",
                """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: to-ratings}
spec:
  hosts: [details]
  http:
  - route:
    - destination: {host: ratings}
""",
            )
    with sail.Mesh.from_bootstrap(registry.bootstrap()) as mesh, mesh.client() as http:
        assert set(names(http, 20)) == {"reviews-v1"}


class Hammer:
    """Threads sending through one sail client until stopped; records every failure."""

    def __init__(self, http: Any, threads: int = 3) -> None:
        import threading

        self.http = http
        self.failures: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.counts[self.http.get("http://reviews/r").json()["name"]] += 1
            except Exception as exc:  # any failure is what these tests look for
                self.failures.append(repr(exc))
            time.sleep(0.002)

    def total(self) -> int:
        return sum(self.counts.values())

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def test_graceful_drain_fails_no_request(
    registry: RunningRegistry, reviews: dict[str, subprocess.Popen[bytes]]
) -> None:
    with sail.Mesh.from_bootstrap(registry.bootstrap()) as mesh, mesh.client() as http:
        hammer = Hammer(http)
        try:
            wait_until(lambda: hammer.counts["reviews-v3"] > 20)
            reviews["v3"].send_signal(signal.SIGTERM)
            reviews["v3"].wait(15)  # drains first: DRAINING, quiet period, then exits
            wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 2)
            seen = hammer.total()
            wait_until(lambda: hammer.total() > seen + 100)
        finally:
            hammer.stop()
    assert hammer.failures == []


@pytest.mark.parametrize("registry", ["file", "memory"], indirect=True)
def test_registry_restart_clients_keep_serving_and_workloads_return(
    reviews: dict[str, subprocess.Popen[bytes]], registry: RunningRegistry
) -> None:
    durable = isinstance(registry.registry.store, FileStore)
    with registry.admin() as admin:
        admin.apply("reviews.yaml", reviews_config({"v1": 100}))
    port = registry.port
    with sail.Mesh.from_bootstrap(registry.bootstrap()) as mesh, mesh.client() as http:
        hammer = Hammer(http)
        try:
            wait_until(lambda: hammer.counts["reviews-v1"] > 20)
            registry.stop()
            seen = hammer.total()
            wait_until(lambda: hammer.total() > seen + 100)  # served from the last config
            # The same port again, with a new store (the file store reading its file):
            # workloads re-register on their next heartbeat (answered NOT_FOUND) within
            # the registration grace.
            registry.__init__(  # type: ignore[misc]
                port=port, registration_grace=2.5, store_factory=registry.store_factory)
            wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 3)
            if durable:
                # The applied config survived: v1 keeps all the traffic, past the grace
                # and the rebuilds the re-registrations cause.
                assert "reviews.yaml" in registry.call(registry.registry.store.configs)
                time.sleep(4)
                before = dict(hammer.counts)
                wait_until(lambda: hammer.total() > sum(before.values()) + 200)
                grown = {k for k, v in hammer.counts.items() if v > before.get(k, 0)}
                assert grown == {"reviews-v1"}
            else:
                # The applied config died with the memory store: the default route takes
                # all three.
                wait_until(lambda: len(hammer.counts) == 3, timeout=20)
        finally:
            hammer.stop()
    assert hammer.failures == []
