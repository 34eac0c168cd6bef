"""A real Envoy as a client of the registry: bootstrapped with nothing but ADS at the
registry, it gets the translated config (the `sail_outbound_<port>` port listener, its
`sail_outbound` routes, the EDS clusters of the registered workloads) and routes real HTTP
by Host header to workloads that registered themselves."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.envoy import Envoy, ads_bootstrap, launch_envoy
from tests.e2e.procs import ROOT, start, stop, wait_port
from tests.e2e.test_registry import TOKEN, RunningRegistry, reviews_config
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

NODE_ID = "envoy-e2e"
N = 2000


def _start_workloads(
    registry: RunningRegistry, service: str, versions: tuple[str, ...]
) -> dict[str, subprocess.Popen[bytes]]:
    """tests.e2e.workload processes, started together (each imports sail and uvicorn, which
    takes a while) and then waited for."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for version in versions:
            ports[version] = port = free_port()
            procs[version] = start(
                [sys.executable, "-m", "uvicorn", "tests.e2e.workload:app",
                 "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning", "--no-access-log"],
                env={
                    "SERVICE": service,
                    "PORT": str(port),
                    "LABELS": f"version={version}",
                    "SAIL_REGISTRY": registry.address,
                    "SAIL_REGISTRY_TOKEN": TOKEN,
                    "PYTHONPATH": str(ROOT),
                },
            )
        for version, proc in procs.items():
            wait_port(ports[version], proc=proc)
    except BaseException:
        _stop_all(list(procs.values()))
        raise
    return procs


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process first (workloads drain on SIGTERM, in parallel so), then reap
    each by PID (SIGKILL if it takes too long)."""
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        stop(proc)


class Mesh:
    """The registry (serving an Envoy port listener), three reviews workloads and Envoy."""

    def __init__(self, registry: RunningRegistry, envoy: Envoy, listener_port: int) -> None:
        self.registry = registry
        self.envoy = envoy
        self.listener_port = listener_port
        self.url = f"http://127.0.0.1:{listener_port}/"
        self.http = httpx.Client(timeout=5.0)

    def names(self, n: int, **headers: str) -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            response = self.http.get(self.url, headers={"host": "reviews", **headers})
            assert response.status_code == 200, (response.status_code, response.text,
                                                 self.envoy.log_tail())
            counts[response.json()["name"]] += 1
        return counts

    def envoy_row(self) -> dict[str, str] | None:
        status = self.registry.call(self.registry.registry.status)
        rows = [c for c in status["clients"] if c["node_id"] == NODE_ID]
        return rows[0] if rows else None

    def synced(self) -> bool:
        """Envoy has ACKed every type at the registry's current version."""
        status = self.registry.call(self.registry.registry.status)
        rows = [c for c in status["clients"] if c["node_id"] == NODE_ID]
        return bool(
            rows and rows[0]["state"] == "SYNCED" and rows[0]["version"] == str(status["version"])
        )

    def apply(self, yaml_text: str) -> None:
        """Apply config and wait (bounded) until Envoy has ACKed the version carrying it."""
        with self.registry.admin() as admin:
            admin.apply("reviews.yaml", yaml_text)
        # The apply schedules a rebuild on the registry's loop; once it ran, wait for Envoy.
        self.registry.call(lambda: None)
        wait_until(self.synced, timeout=10)
        self.check_no_nacks()

    def check_no_nacks(self) -> None:
        nacks = self.registry.call(lambda: list(self.registry.registry.ads.nacks))
        details = "\n".join(
            f"NACK from {n.node_id} for {n.type_url} (still on version {n.version}): {n.error}"
            for n in nacks
        )
        if nacks:
            print(details)
        assert not nacks, details


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    listener_port = free_port()
    registry = RunningRegistry(envoy_listener=("127.0.0.1", listener_port))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    envoy: Envoy | None = None
    try:
        procs = _start_workloads(registry, "reviews", ("v1", "v2", "v3"))
        wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 3)
        with registry.admin() as admin:
            admin.apply("reviews.yaml", reviews_config({"v1": 80, "v2": 20}, jason="v3"))
        admin_port = free_port()
        workdir: Path = tmp_path_factory.mktemp("envoy-ads")
        envoy = launch_envoy(
            workdir,
            ads_bootstrap(registry.port, admin_port=admin_port, node_id=NODE_ID),
            port=listener_port,
            admin_port=admin_port,
        )
        running = Mesh(registry, envoy, listener_port)
        try:
            wait_until(running.synced, timeout=10)
            yield running
        finally:
            running.http.close()
    finally:
        if envoy is not None:
            envoy.stop()
        _stop_all(list(procs.values()))
        registry.stop()


def _share(counts: collections.Counter[str], name: str) -> float:
    return counts[name] / sum(counts.values())


def test_envoy_gets_the_translated_config(mesh: Mesh) -> None:
    mesh.check_no_nacks()
    row = mesh.envoy_row()
    assert row is not None and row["state"] == "SYNCED", row
    assert row["service"] == "e2e"
    status = mesh.registry.call(mesh.registry.registry.status)
    assert row["version"] == str(status["version"])
    listeners = httpx.get(f"{mesh.envoy.admin_url}/listeners", timeout=5.0).text
    assert f"sail_outbound_{mesh.listener_port}::127.0.0.1:{mesh.listener_port}" in listeners
    clusters = httpx.get(f"{mesh.envoy.admin_url}/clusters", timeout=5.0).text
    # Envoy's own count of rejected updates (LDS, CDS, RDS, EDS) agrees: none
    stats = httpx.get(
        f"{mesh.envoy.admin_url}/stats", params={"filter": "update_rejected"}, timeout=5.0
    ).text
    rejected = [line for line in stats.splitlines() if not line.endswith(": 0")]
    assert "lds.update_rejected" in stats and not rejected, stats
    for subset in ("v1", "v2", "v3"):
        assert f"outbound|9080|{subset}|reviews::127.0.0.1:" in clusters, clusters


def test_weighted_split(mesh: Mesh) -> None:
    mesh.apply(reviews_config({"v1": 80, "v2": 20}, jason="v3"))
    counts = mesh.names(N)
    assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
    assert _share(counts, "reviews-v1") == pytest.approx(0.80, abs=0.03), counts
    assert _share(counts, "reviews-v2") == pytest.approx(0.20, abs=0.03), counts


def test_header_route(mesh: Mesh) -> None:
    mesh.apply(reviews_config({"v1": 80, "v2": 20}, jason="v3"))
    assert mesh.names(100, **{"end-user": "jason"}) == {"reviews-v3": 100}
    assert "reviews-v3" not in mesh.names(100, **{"end-user": "json"})


def test_applied_split_moves_envoy(mesh: Mesh) -> None:
    mesh.apply(reviews_config({"v1": 80, "v2": 20}, jason="v3"))
    before = mesh.registry.call(lambda: mesh.registry.registry.resources.version)
    mesh.apply(reviews_config({"v2": 50, "v3": 50}))
    assert mesh.registry.call(lambda: mesh.registry.registry.resources.version) > before
    # Envoy ACKed the new routes; its worker picks them up a moment later.
    wait_until(lambda: set(mesh.names(40)) == {"reviews-v2", "reviews-v3"}, timeout=10)
    counts = mesh.names(N)
    assert set(counts) == {"reviews-v2", "reviews-v3"}, counts
    assert _share(counts, "reviews-v2") == pytest.approx(0.50, abs=0.03), counts
    # the header route went with the old config: jason gets the split too
    assert set(mesh.names(40, **{"end-user": "jason"})) == {"reviews-v2", "reviews-v3"}
    row = mesh.envoy_row()
    status = mesh.registry.call(mesh.registry.registry.status)
    assert row is not None and row["state"] == "SYNCED", row
    assert row["version"] == str(status["version"]), (row, status["version"])
    mesh.check_no_nacks()

