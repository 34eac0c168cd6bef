"""A real Envoy applies a VirtualService's `fault`, `headers` and `mirror` as the registry
translates them (a per-route HTTPFault config for the fault filter the port listener lists,
route header mutations, a request mirror policy).

The upstreams are small in-process HTTP servers on 127.0.0.1 that echo what they received,
reached through ServiceEntries; Envoy is bootstrapped with nothing but ADS at the registry,
as in `test_registry_envoy`, whose helpers this reuses.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.envoy import ads_bootstrap, launch_envoy
from tests.e2e.test_registry import RunningRegistry
from tests.e2e.test_registry_envoy import NODE_ID, Mesh
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

N = 1000
TEAPOT = 418  # never answered by the echo servers: only Envoy's fault filter sends it


class Echo:
    """An HTTP/1.1 server on 127.0.0.1 answering 200 with the request's headers as JSON (and
    `response_headers`), recording each request's Host."""

    def __init__(self, name: str, response_headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.name = name
        self.response_headers = response_headers
        self.hosts: list[str] = []
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                echo.hosts.append(self.headers.get("host", ""))
                pairs = [(k.lower(), v) for k, v in self.headers.items()]
                body = json.dumps(
                    {"name": echo.name, "headers": dict(pairs), "header_list": pairs}
                ).encode()
                self.send_response(200)
                for name, value in echo.response_headers:
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def service_entry(host: str, port: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"""


def fault_config(echo: Echo, shadow: Echo, *, mirror: bool = False) -> str:
    mirror_line = "    mirror: {host: shadow}\n" if mirror else ""
    return f"""{service_entry("echo", echo.port)}---
{service_entry("shadow", shadow.port)}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  http:
  - fault:
      abort: {{httpStatus: {TEAPOT}, percentage: {{value: 50}}}}
    headers:
      request:
        set: {{x-sail-fault-test: applied}}
        remove: [x-drop-me]
      response:
        set: {{x-sail-response: set}}
{mirror_line}    route:
    - destination: {{host: echo}}
"""


class FaultMesh(Mesh):
    def apply_file(self, name: str, text: str) -> None:
        with self.registry.admin() as admin:
            admin.apply(name, text)
        self.registry.call(lambda: None)
        wait_until(self.synced, timeout=10)
        self.check_no_nacks()

    def get(self, **headers: str) -> httpx.Response:
        return self.http.get(self.url, headers={"host": "echo", **headers})

    def stat(self, name: str) -> int:
        text = httpx.get(f"{self.envoy.admin_url}/stats", params={"filter": name}, timeout=5.0).text
        total = 0
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key.endswith(name):
                total += int(value)
        return total


@pytest.fixture(scope="module")
def echoes() -> Iterator[tuple[Echo, Echo]]:
    echo, shadow = Echo("echo"), Echo("shadow")
    try:
        yield echo, shadow
    finally:
        echo.stop()
        shadow.stop()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, echoes: tuple[Echo, Echo]
) -> Iterator[FaultMesh]:
    listener_port = free_port()
    registry = RunningRegistry(envoy_listener=("127.0.0.1", listener_port))
    envoy = None
    try:
        with registry.admin() as admin:
            admin.apply("echo.yaml", fault_config(*echoes))
        admin_port = free_port()
        workdir: Path = tmp_path_factory.mktemp("envoy-fault")
        envoy = launch_envoy(
            workdir,
            ads_bootstrap(registry.port, admin_port=admin_port, node_id=NODE_ID),
            port=listener_port,
            admin_port=admin_port,
        )
        running = FaultMesh(registry, envoy, listener_port)
        try:
            wait_until(running.synced, timeout=10)
            running.check_no_nacks()
            yield running
        finally:
            running.http.close()
    finally:
        if envoy is not None:
            envoy.stop()
        registry.stop()


def test_envoy_aborts_half_and_sets_the_headers(mesh: FaultMesh) -> None:
    # Envoy ACKed the version; its worker takes the routes a moment later
    wait_until(lambda: mesh.get().status_code in (200, TEAPOT), timeout=10)
    statuses: Counter[int] = Counter()
    before = mesh.stat("fault.aborts_injected")
    for _ in range(N):
        response = mesh.get(**{"x-drop-me": "1", "x-sail-fault-test": "caller"})
        statuses[response.status_code] += 1
        if response.status_code == TEAPOT:
            assert response.text == "fault filter abort", response.text
            continue
        assert response.status_code == 200, (response.status_code, response.text)
        seen = response.json()["headers"]
        assert seen.get("x-sail-fault-test") == "applied", seen  # set: the caller's replaced
        assert "x-drop-me" not in seen, seen
        assert response.headers.get("x-sail-response") == "set"
    assert set(statuses) == {200, TEAPOT}, statuses
    assert statuses[TEAPOT] / N == pytest.approx(0.5, abs=0.05), statuses
    # Envoy's own count agrees: every abort came from its fault filter
    assert mesh.stat("fault.aborts_injected") - before == statuses[TEAPOT]
    mesh.check_no_nacks()


def test_envoy_mirrors_to_the_shadow_with_the_shadow_host(
    mesh: FaultMesh, echoes: tuple[Echo, Echo]
) -> None:
    echo, shadow = echoes
    try:
        mesh.apply_file("echo.yaml", fault_config(echo, shadow, mirror=True))
        wait_until(lambda: mesh.get().status_code in (200, TEAPOT) and shadow.hosts, timeout=10)
        sent = 0
        shadow.hosts.clear()
        for _ in range(40):
            if mesh.get().status_code == 200:
                sent += 1
        # fire and forget: the copies arrive on their own time
        wait_until(lambda: len(shadow.hosts) >= sent, timeout=10)
        assert sent > 0
        assert set(shadow.hosts) == {"echo-shadow"}, Counter(shadow.hosts)
    finally:
        mesh.apply_file("echo.yaml", fault_config(echo, shadow))
