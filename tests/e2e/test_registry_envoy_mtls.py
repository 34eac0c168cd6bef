"""A real Envoy in a STRICT mesh: fed by the registry, with certificates from `sail cert`
named in its node metadata (`SAIL_CERT_DIR`), it calls a sail HTTP server over mTLS (the
registry turns the cluster's certificate provider instances into Envoy's watched files),
and the sail server sees Envoy's SPIFFE ID. An Envoy without certificates gets nothing
through: it refuses the TLS cluster rather than send plaintext."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sail
from sail.registry.remote import RemoteRegistrar
from tests.e2e.envoy import Envoy, ads_bootstrap, launch_envoy
from tests.e2e.test_grpc_mtls_interop import sail_cert
from tests.e2e.test_registry import TOKEN, RunningRegistry
from tests.e2e.test_registry_mtls import bootstrap, echo_peer, peer_authentication, token
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

TD = "example.org"


@pytest.fixture
def running() -> Iterator[tuple[RunningRegistry, int]]:
    listener_port = free_port()
    registry = RunningRegistry(trust_domain=TD, envoy_listener=("127.0.0.1", listener_port))
    with registry.admin() as admin:
        admin.apply("peer.yaml", peer_authentication("STRICT"))
    yield registry, listener_port
    registry.stop()


def envoy_with(registry: RunningRegistry, listener_port: int, workdir: Path,
               metadata: dict[str, Any]) -> Envoy:
    admin_port = free_port()
    return launch_envoy(
        workdir, ads_bootstrap(registry.port, admin_port=admin_port, node_id="envoy-mtls",
                               node_metadata=metadata),
        port=listener_port, admin_port=admin_port,
    )


@contextlib.contextmanager
def strict_reviews(registry: RunningRegistry, app: Any) -> Iterator[None]:
    """A sail HTTP server of `reviews` running `app`, with a certificate from the
    registry's CA, serving once its Listener says STRICT."""
    port = free_port()
    mesh = sail.Mesh.from_bootstrap(
        bootstrap(registry, "reviews"), join_token=token(registry, "reviews"),
        registrar=RemoteRegistrar([registry.address], TOKEN),
    )
    try:
        assert mesh.wait_identity(20) is not None
        with mesh.http_server(mesh.service("reviews", port=port)(app), port=port,
                              xds=True) as server:
            wait_until(lambda: server.mode == "STRICT", timeout=20)
            yield
    finally:
        mesh.close()


def test_envoy_calls_a_strict_sail_server_over_mtls(
    running: tuple[RunningRegistry, int], tmp_path: Path
) -> None:
    registry, listener_port = running
    envoy: Envoy | None = None
    try:
        with strict_reviews(registry, echo_peer):
            certs = sail_cert(registry, "productpage", tmp_path / "certs")
            envoy = envoy_with(registry, listener_port, tmp_path / "envoy",
                               {"SAIL_CERT_DIR": str(certs)})
            url = f"http://127.0.0.1:{listener_port}/"

            def through_envoy() -> str | None:
                try:
                    response = httpx.get(url, headers={"host": "reviews"}, timeout=5)
                except httpx.TransportError:
                    return None
                return response.text if response.status_code == 200 else None

            seen = wait_until(through_envoy, timeout=30)
            assert seen == f"spiffe://{TD}/ns/default/sa/productpage", envoy.log_tail()
            nacks = registry.call(lambda: list(registry.registry.ads.nacks))
            assert not [n for n in nacks if n.node_id == "envoy-mtls"], nacks
    finally:
        if envoy is not None:
            envoy.stop()


def test_an_envoy_without_certificates_sends_nothing_in_plaintext(
    running: tuple[RunningRegistry, int], tmp_path: Path
) -> None:
    registry, listener_port = running
    hits: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        hits.append(scope["type"])
        await echo_peer(scope, receive, send)

    envoy: Envoy | None = None
    try:
        with strict_reviews(registry, app):
            envoy = envoy_with(registry, listener_port, tmp_path / "envoy", {})
            # Envoy refuses the TLS cluster it cannot serve (a NACK naming it)...
            wait_until(lambda: any(
                n.node_id == "envoy-mtls" for n in
                registry.call(lambda: list(registry.registry.ads.nacks))), timeout=20)
            # ...so nothing reaches the server, in plaintext or otherwise
            response = httpx.get(f"http://127.0.0.1:{listener_port}/",
                                 headers={"host": "reviews"}, timeout=5)
            assert response.status_code >= 500
            assert "http" not in hits
    finally:
        if envoy is not None:
            envoy.stop()


def test_a_sail_client_calls_an_envoy_sidecar_over_mtls(
    running: tuple[RunningRegistry, int], tmp_path: Path
) -> None:
    """The other direction: an Envoy inbound sidecar (a TLS listener requiring client
    certificates, files from `sail cert`) in front of a plaintext app, registered as a
    STRICT workload with its identity. A sail client uses mTLS to it on its own
    (auto-mTLS), checks the Envoy's SPIFFE ID, and the Envoy forwards the client's SPIFFE
    ID to the app (`x-forwarded-client-cert`)."""
    import threading

    import uvicorn

    from sail.registration import Workload
    from tests.e2e.envoy import bootstrap as static_bootstrap

    registry, _ = running
    certs = sail_cert(registry, "ratings", tmp_path / "certs")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        body = headers.get(b"x-forwarded-client-cert", b"none")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    app_port, envoy_port, admin_port = free_port(), free_port(), free_port()
    upstream = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=app_port,
                                             log_level="warning", lifespan="off"))
    thread = threading.Thread(target=upstream.run, daemon=True)
    thread.start()
    wait_until(lambda: upstream.started, timeout=10)
    config = static_bootstrap(
        {"name": "inbound", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
        {"app": [("127.0.0.1", app_port)]}, port=envoy_port, admin_port=admin_port)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/"
                 "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(certs / "cert-chain.pem")},
                                  "private_key": {"filename": str(certs / "key.pem")}}],
            "validation_context": {"trusted_ca": {"filename": str(certs / "root-cert.pem")}},
        }}}
    hcm = chain["filters"][0]["typed_config"]
    hcm["forward_client_cert_details"] = "SANITIZE_SET"
    hcm["set_current_client_cert_details"] = {"uri": True}
    envoy = launch_envoy(tmp_path / "envoy", config, port=envoy_port, admin_port=admin_port)
    registrar = RemoteRegistrar([registry.address], TOKEN)
    client = sail.Mesh.from_bootstrap(
        bootstrap(registry, "productpage"), join_token=token(registry, "productpage"),
        services=["ratings"],
    )
    try:
        registrar.register(Workload("ratings", "127.0.0.1", envoy_port,
                                    identity=f"spiffe://{TD}/ns/default/sa/ratings",
                                    permissive=False))
        assert client.wait_identity(20) is not None
        with client.client() as http:
            def answer() -> str | None:
                try:
                    response = http.get("http://ratings/", timeout=5)
                except httpx.TransportError:
                    return None
                return response.text if response.status_code == 200 else None

            seen = wait_until(answer, timeout=30)
        assert f"URI=spiffe://{TD}/ns/default/sa/productpage" in seen, seen
        with pytest.raises(httpx.TransportError):  # the sidecar takes no plaintext
            httpx.get(f"http://127.0.0.1:{envoy_port}/", timeout=5)
    finally:
        client.close()
        registrar.close()
        envoy.stop()
        upstream.should_exit = True
        thread.join(10)
