"""mTLS as the registry makes it from Istio config: workloads get their certificates from the
registry's CA with join tokens, a sail HTTP server takes its mode from its server Listener
(PeerAuthentication), and a sail client uses mTLS to it on its own (auto-mTLS), expecting
its SPIFFE ID. PeerAuthentication applied live, DISABLE → PERMISSIVE → STRICT, fails no
meshed request, and plaintext callers are refused once STRICT holds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import sail
from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE, parse_bootstrap
from sail.registry.remote import RemoteRegistrar
from tests.e2e.test_registry import TOKEN, RunningRegistry
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

TD = "example.org"


def peer_authentication(mode: str) -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: default, namespace: default}}\nspec:\n  mtls: {{mode: {mode}}}\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bootstrap(running: RunningRegistry, node: str) -> sail.Bootstrap:
    return parse_bootstrap({
        "xds_servers": [{"server_uri": running.address, "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": node, "cluster": "tests"},
        "server_listener_resource_name_template": DEFAULT_SERVER_LISTENER_TEMPLATE,
    })


async def echo_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    peer = sail.current_request().peer  # type: ignore[union-attr]
    body = (peer.spiffe_id or "plaintext").encode() if peer else b"unknown"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def running() -> Iterator[RunningRegistry]:
    registry = RunningRegistry(trust_domain=TD)
    yield registry
    registry.stop()


def token(running: RunningRegistry, account: str) -> str:
    with running.admin() as admin:
        return admin.create_join_token("default", account)


def test_peer_authentication_live_from_disable_to_strict(running: RunningRegistry) -> None:
    with running.admin() as admin:
        admin.apply("peer.yaml", peer_authentication("DISABLE"))
    port = free_port()
    server_mesh = sail.Mesh.from_bootstrap(
        bootstrap(running, "reviews"), join_token=token(running, "reviews"),
        registrar=RemoteRegistrar([running.address], TOKEN),
    )
    client_mesh = sail.Mesh.from_bootstrap(
        bootstrap(running, "productpage"), join_token=token(running, "productpage"),
        services=["reviews"],
    )
    try:
        assert server_mesh.wait_identity(20) is not None
        assert client_mesh.wait_identity(20) is not None
        app = server_mesh.service("reviews", port=port)(echo_peer)
        with server_mesh.http_server(app, port=port, xds=True) as server:
            wait_until(lambda: server.mode == "DISABLE", timeout=20)
            seen: list[str] = []
            failures: list[BaseException] = []
            stop = threading.Event()

            def traffic() -> None:
                with client_mesh.client() as http:
                    while not stop.is_set():
                        try:
                            seen.append(http.get("http://reviews/", timeout=10).text)
                        except Exception as exc:
                            failures.append(exc)
                        time.sleep(0.005)

            thread = threading.Thread(target=traffic)
            thread.start()
            try:
                wait_until(lambda: len(seen) > 20, timeout=20)
                assert seen[-1] == "plaintext"
                with running.admin() as admin:
                    admin.apply("peer.yaml", peer_authentication("PERMISSIVE"))
                # the workload accepts mTLS now, so its clients choose it (auto-mTLS)
                wait_until(lambda: seen[-1] == f"spiffe://{TD}/ns/default/sa/productpage",
                           timeout=20)
                assert server.mode == "PERMISSIVE"
                with running.admin() as admin:
                    admin.apply("peer.yaml", peer_authentication("STRICT"))
                wait_until(lambda: server.mode == "STRICT", timeout=20)
                count = len(seen)
                wait_until(lambda: len(seen) > count + 20, timeout=20)
            finally:
                stop.set()
                thread.join(20)
            assert failures == []
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        client_mesh.close()
        server_mesh.close()


def test_a_grpc_server_under_strict_is_called_over_mtls_on_its_own(
    running: RunningRegistry,
) -> None:
    """gRPC: the server registers its identity and that it cannot serve PERMISSIVE's two
    transports; under STRICT its Listener is mTLS and its clients' cluster expects its
    SPIFFE ID (auto-mTLS), so a sail channel calls it over mTLS with no TLS config of its
    own, and a plaintext caller is refused."""
    import grpc

    from tests.e2e.test_grpc_mtls import METHOD, handler, who

    with running.admin() as admin:
        admin.apply("peer.yaml", peer_authentication("STRICT"))
    server_mesh = sail.Mesh.from_bootstrap(
        bootstrap(running, "ratings"), join_token=token(running, "ratings"),
        registrar=RemoteRegistrar([running.address], TOKEN),
    )
    client_mesh = sail.Mesh.from_bootstrap(
        bootstrap(running, "productpage"), join_token=token(running, "productpage"),
        services=["ratings"],
    )
    try:
        assert server_mesh.wait_identity(20) is not None
        assert client_mesh.wait_identity(20) is not None
        server = server_mesh.grpc_server("ratings", xds=True)
        server.add_generic_rpc_handlers((handler(who),))
        server.start()
        try:
            wait_until(lambda: server.serving, timeout=20)
            with client_mesh.grpc_channel("ratings") as channel:
                answer = wait_until(lambda: _try(channel), timeout=20)
            assert answer == f'"spiffe://{TD}/ns/default/sa/productpage"'
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as plain, \
                    pytest.raises(grpc.RpcError):
                plain.unary_unary(METHOD)(b"", timeout=5)
        finally:
            server.stop(0).wait(10)
    finally:
        client_mesh.close()
        server_mesh.close()


def _try(channel: Any) -> str | None:
    """The caller's SPIFFE ID as the server saw it, once the mesh routes the call."""
    import json

    import grpc

    from tests.e2e.test_grpc_mtls import METHOD

    try:
        seen = json.loads(channel.unary_unary(METHOD)(b"", timeout=5))
    except grpc.RpcError:
        return None
    return json.dumps(seen["spiffe_id"]) if seen["mtls"] else None
