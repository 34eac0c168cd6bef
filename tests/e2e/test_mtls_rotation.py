"""Rotation under load: certificates that live six seconds, renewed at half-life by
`sail cert` from the registry's CA and read again every second by the meshes, while steady
traffic runs for a minute over HTTP (sync and async clients to a STRICT uvicorn server)
and gRPC (sync and aio channels to STRICT sync and aio servers). No request may fail, and
each side must see the other's certificate change."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

import sail
from sail import testing
from sail._loop import background_loop
from tests.e2e.procs import start, stop
from tests.e2e.test_http_mtls import REVIEWS, provider
from tests.e2e.test_registry import RunningRegistry
from tests.e2e.test_sail_cert import SAIL
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

TD = "example.org"
LIFETIME = "6"  # seconds; renewed at half-life, read again every second
TRAFFIC = 60.0  # seconds of steady traffic
METHOD = "/sail.test.Rotation/Serial"


def serial(pem: bytes | str) -> int:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificate(data).serial_number


class Seen:
    """Certificate serials seen by one traffic loop: the clients' by the servers, the
    server's by the client (HTTP only: grpcio's channels do not show it)."""

    def __init__(self) -> None:
        self.client_serials: set[int] = set()
        self.server_serials: set[int] = set()
        self.calls = 0
        self.failures: list[str] = []


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chain = scope["extensions"]["tls"]["client_cert_chain"]
    body = str(serial(chain[0])).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def grpc_serial(request: bytes, context: Any) -> bytes:
    return str(serial(context.auth_context()["x509_pem_cert"][0])).encode()


async def agrpc_serial(request: bytes, context: Any) -> bytes:
    return grpc_serial(request, context)


def handler(fn: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "sail.test.Rotation", {"Serial": grpc.unary_unary_rpc_method_handler(fn)}
    )


@pytest.fixture
def certificates(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """`sail cert` keeping short-lived certificates of `reviews` (the servers) and
    `productpage` (the clients) renewed."""
    registry = RunningRegistry(trust_domain=TD)
    procs = []
    try:
        dirs = []
        for account in ("reviews", "productpage"):
            with registry.admin() as admin:
                token = admin.create_join_token("default", account)
            out = tmp_path / account
            procs.append(start([*SAIL, "cert", "--out", str(out), "--lifetime", LIFETIME,
                                "--registry", registry.address],
                               env={"SAIL_JOIN_TOKEN": token}))
            dirs.append(out)
        for out in dirs:
            wait_until((out / "cert-chain.pem").exists, timeout=30)
        yield dirs[0], dirs[1]
    finally:
        for proc in procs:
            stop(proc)
        registry.stop()


def loop(seen: Seen, stop_at: float, once: Callable[[], None]) -> None:
    while time.monotonic() < stop_at:
        try:
            once()
            seen.calls += 1
        except Exception as exc:
            seen.failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.01)


def test_certificates_rotate_under_load_with_no_failed_request(
    certificates: tuple[Path, Path],
) -> None:
    server_files, client_files = certificates
    server_xds = testing.XdsServer([]).start()
    server_mesh = sail.Mesh.from_bootstrap(
        server_xds.bootstrap(certificate_providers=provider(server_files, "1s"))
    )
    assert server_mesh.wait_identity(10) is not None
    http_server = server_mesh.http_server(
        server_mesh.service("reviews", port=1)(http_app), mode="STRICT"
    )
    http_server.start()
    grpc_server = server_mesh.grpc_server("reviews", mode="STRICT")
    grpc_server.add_generic_rpc_handlers((handler(grpc_serial),))
    grpc_server.start()

    async def make_aio() -> Any:
        server = server_mesh.aio_grpc_server("reviews", mode="STRICT")
        server.add_generic_rpc_handlers((handler(agrpc_serial),))
        await server.start()
        return server

    aio_server = asyncio.run_coroutine_threadsafe(make_aio(), background_loop()).result(10)
    tls = testing.upstream_tls(str(REVIEWS))
    resources = [
        *testing.service("reviews-http", {"reviews-http": [("127.0.0.1", http_server.port)]},
                         transport_socket=tls),
        *testing.service("reviews-grpc", {"reviews-grpc": [("127.0.0.1", grpc_server.port)]},
                         transport_socket=tls),
        *testing.service("reviews-aio", {"reviews-aio": [("127.0.0.1", aio_server.port)]},
                         transport_socket=tls),
    ]
    client_xds = testing.XdsServer(resources).start()
    client_mesh = sail.Mesh.from_bootstrap(
        client_xds.bootstrap(certificate_providers=provider(client_files, "1s")),
        services=["reviews-http", "reviews-grpc", "reviews-aio"],
    )
    loops = {name: Seen() for name in ("http sync", "http async", "grpc sync", "grpc aio")}
    try:
        assert client_mesh.wait_identity(10) is not None
        stop_at = time.monotonic() + TRAFFIC
        http = client_mesh.client()
        channel = client_mesh.grpc_channel("reviews-grpc")
        call = channel.unary_unary(METHOD)

        def http_once(seen: Seen, response: Any) -> None:
            assert response.status_code == 200, response.text
            seen.client_serials.add(int(response.text))
            ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
            der = ssl_object.getpeercert(True)
            seen.server_serials.add(x509.load_der_x509_certificate(der).serial_number)

        def http_sync() -> None:
            http_once(loops["http sync"], http.get("http://reviews-http/", timeout=10))

        def grpc_sync() -> None:
            loops["grpc sync"].client_serials.add(int(call(b"", timeout=10)))

        async def async_loops() -> None:
            async with client_mesh.async_client() as ahttp, \
                    client_mesh.aio_grpc_channel("reviews-aio") as achannel:
                acall = achannel.unary_unary(METHOD)
                while time.monotonic() < stop_at:
                    for name, attempt in (
                        ("http async", lambda: ahttp.get("http://reviews-http/", timeout=10)),
                        ("grpc aio", lambda: acall(b"", timeout=10)),
                    ):
                        seen = loops[name]
                        try:
                            answer = await attempt()
                            if name == "http async":
                                http_once(seen, answer)
                            else:
                                seen.client_serials.add(int(answer))
                            seen.calls += 1
                        except Exception as exc:
                            seen.failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.01)

        threads = [threading.Thread(target=loop, args=(loops[name], stop_at, fn))
                   for name, fn in (("http sync", http_sync), ("grpc sync", grpc_sync))]
        for thread in threads:
            thread.start()
        asyncio.run(async_loops())
        for thread in threads:
            thread.join(30)
        http.close()
        channel.close()
    finally:
        client_mesh.close()
        client_xds.close()
        http_server.stop()
        grpc_server.stop(0).wait(10)
        asyncio.run_coroutine_threadsafe(aio_server.stop(0), background_loop()).result(10)
        server_mesh.close()
        server_xds.close()
    for name, seen in loops.items():
        assert seen.failures == [], (name, seen.failures[:5])
        assert seen.calls > 100, name
        # about ten renewals a minute: the servers saw the clients' certificate change
        assert len(seen.client_serials) >= 4, (name, len(seen.client_serials))
    for name in ("http sync", "http async"):
        assert len(loops[name].server_serials) >= 4, (name, loops[name].server_serials)
