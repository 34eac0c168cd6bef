"""A real Envoy whose bootstrap has nothing but ADS at a registry started with no Envoy
options: it gets the default loopback port listeners (`127.0.0.1_<port>`, routes named by
port, as Istio's outbound listeners) and routes real HTTP through them, by Host, to two
services sharing one port and a third on another. A port Envoy cannot bind is a NACK for
that listener, not the end of the others (nor of the registry). A sail client on the same
registry keeps asking for listeners by name and never sees the port listeners."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import sail
from sail.model import HealthStatus
from sail.registration import Workload
from tests.e2e.envoy import Envoy, ads_bootstrap, launch_envoy
from tests.e2e.test_registry import RunningRegistry
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

NODE_ID = "envoy-ports"


class _Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = int(self.server_address[1])
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # or requests through Envoy crawl
    server: _Backend

    def do_GET(self) -> None:
        body = json.dumps({"name": self.server.name, "host": self.headers["host"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Mesh:
    def __init__(self, registry: RunningRegistry, envoy: Envoy, shared: int, own: int) -> None:
        self.registry = registry
        self.envoy = envoy
        self.shared = shared  # reviews and ratings
        self.own = own  # details
        self.http = httpx.Client(timeout=5.0)

    def get(self, port: int, host: str) -> httpx.Response:
        return self.http.get(f"http://127.0.0.1:{port}/", headers={"host": host})

    def name(self, port: int, host: str) -> str:
        response = self.get(port, host)
        assert response.status_code == 200, (response.status_code, response.text,
                                             self.envoy.log_tail())
        return str(response.json()["name"])

    def row(self) -> dict[str, Any] | None:
        status = self.registry.call(self.registry.registry.status)
        rows = [c for c in status["clients"] if c["node_id"] == NODE_ID]
        return {**rows[0], "registry": str(status["version"])} if rows else None

    def synced(self) -> bool:
        row = self.row()
        return bool(row and row["state"] == "SYNCED" and row["version"] == row["registry"])

    def register(self, workload: Workload) -> str:
        lease = self.registry._run(
            self.registry.registry.store.put_workload(workload, HealthStatus.HEALTHY, 60)
        )
        self.registry.call(lambda: None)  # the rebuild it scheduled has run
        return str(lease.id)

    def deregister(self, lease_id: str) -> None:
        self.registry._run(self.registry.registry.store.remove_workload(lease_id))
        self.registry.call(lambda: None)

    def nacks(self) -> list[Any]:
        return list(self.registry.call(lambda: list(self.registry.registry.ads.nacks)))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    shared, own = free_port(), free_port()  # service ports: Envoy binds them on loopback
    registry = RunningRegistry()  # no envoy_listener: the defaults
    backends = [_Backend(n) for n in ("reviews", "ratings", "details")]
    envoy: Envoy | None = None
    try:
        for backend, port in zip(backends, (shared, shared, own), strict=True):
            registry._run(registry.registry.store.put_workload(
                Workload(backend.name, "127.0.0.1", backend.port, service_port=port),
                HealthStatus.HEALTHY, 60,
            ))
        wait_until(lambda: len(registry.call(registry.registry.store.workloads)) == 3)
        admin_port = free_port()
        envoy = launch_envoy(
            tmp_path_factory.mktemp("envoy-ports"),
            ads_bootstrap(registry.port, admin_port=admin_port, node_id=NODE_ID),
            port=shared,
            admin_port=admin_port,
        )
        running = Mesh(registry, envoy, shared, own)
        try:
            wait_until(running.synced, timeout=15)
            yield running
        finally:
            running.http.close()
    finally:
        if envoy is not None:
            envoy.stop()
        for backend in backends:
            backend.close()
        registry.stop()


def test_envoy_binds_one_loopback_listener_per_service_port(mesh: Mesh) -> None:
    assert not mesh.nacks()
    listeners = httpx.get(f"{mesh.envoy.admin_url}/listeners", timeout=5.0).text
    for port in (mesh.shared, mesh.own):
        assert f"127.0.0.1_{port}::127.0.0.1:{port}" in listeners, listeners
    assert "sail_outbound" not in listeners
    dump = httpx.get(f"{mesh.envoy.admin_url}/config_dump", timeout=5.0).json()
    routes = [
        r["route_config"]
        for c in dump["configs"] if c["@type"].endswith("RoutesConfigDump")
        for r in c.get("dynamic_route_configs", [])
    ]
    by_name = {r["name"]: r for r in routes}
    assert set(by_name) == {str(mesh.shared), str(mesh.own)}
    assert sorted(v["name"] for v in by_name[str(mesh.shared)]["virtual_hosts"]) == [
        f"ratings:{mesh.shared}", f"reviews:{mesh.shared}"
    ]


def test_two_services_on_one_port_are_chosen_by_host(mesh: Mesh) -> None:
    for _ in range(20):
        assert mesh.name(mesh.shared, "reviews") == "reviews"
        assert mesh.name(mesh.shared, "ratings") == "ratings"
    assert mesh.name(mesh.shared, f"reviews:{mesh.shared}") == "reviews"
    assert mesh.name(mesh.shared, "ratings.default.svc.cluster.local") == "ratings"
    assert mesh.name(mesh.shared, f"ratings.default.svc.cluster.local:{mesh.shared}") == "ratings"
    assert mesh.get(mesh.shared, "details").status_code == 404  # details is not on this port
    assert mesh.get(mesh.shared, "nobody").status_code == 404


def test_a_service_on_another_port_has_its_own_listener(mesh: Mesh) -> None:
    assert mesh.name(mesh.own, "details") == "details"
    assert mesh.name(mesh.own, f"details:{mesh.own}") == "details"
    assert mesh.get(mesh.own, "reviews").status_code == 404


def test_a_sail_client_on_the_same_registry_still_works(mesh: Mesh) -> None:
    with sail.Mesh.from_bootstrap(mesh.registry.bootstrap("sail-beside-envoy")) as client:
        assert client.is_mesh_host("reviews", "reviews")
        assert set(client.snapshot.listeners) == {"reviews"}  # only what it asked for
        with client.client(timeout=5.0) as http:
            assert http.get(f"http://ratings:{mesh.shared}/").json()["name"] == "ratings"
        assert not any(name.startswith("127.0.0.1_") for name in client.snapshot.listeners)


def test_a_port_envoy_cannot_bind_is_a_nack_not_an_outage(mesh: Mesh) -> None:
    busy = socket.socket()  # held without SO_REUSEPORT: Envoy's bind fails
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        backend = _Backend("busy")
        try:
            lease = mesh.register(Workload("busy", "127.0.0.1", backend.port, service_port=port))

            def nacked() -> dict[str, Any] | None:
                row = mesh.row()
                return row if row and row["state"] == "NACKED" else None

            row = wait_until(nacked, timeout=15)
            assert f"127.0.0.1_{port}" in row["reason"], row
            # the listeners Envoy did bind keep routing, and the registry keeps serving
            assert mesh.name(mesh.shared, "reviews") == "reviews"
            assert mesh.name(mesh.own, "details") == "details"
            mesh.deregister(lease)
            wait_until(mesh.synced, timeout=15)  # the next push has nothing to refuse
            assert mesh.name(mesh.shared, "ratings") == "ratings"
        finally:
            backend.close()
    finally:
        busy.close()
