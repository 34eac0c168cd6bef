"""`mesh.http_server(...)`: an ASGI app on uvicorn with the mesh's mTLS, in STRICT,
PERMISSIVE and DISABLE, called by sail's clients (over mTLS, from xDS) and by plain httpx
(the plaintext and forged callers that must be refused)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import sail
from sail import testing
from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE
from sail.security.ca import CertificateAuthority
from sail.security.spiffe import SpiffeId
from tests.e2e.test_http_mtls import CLIENT, REVIEWS, TD, issue, provider
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

OTHER = SpiffeId("other.org", "/ns/default/sa/productpage")


def make_app(mesh: sail.Mesh) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        peer = sail.current_request().peer  # type: ignore[union-attr]
        tls = scope["extensions"].get("tls")
        body = json.dumps({
            "mtls": peer.mtls if peer else None,
            "spiffe_id": peer.spiffe_id if peer else None,
            "principal": peer.principal if peer else None,
            "tls_version": tls and tls["tls_version"],
            "chain": len(tls["client_cert_chain"]) if tls else 0,
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return mesh.service("reviews", port=1)(app)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD)


@pytest.fixture
def server_mesh(ca: CertificateAuthority, tmp_path: Path) -> Any:
    files = issue(ca, REVIEWS, tmp_path / "reviews")
    xds = testing.XdsServer().start()
    mesh = sail.Mesh.from_bootstrap(xds.bootstrap(certificate_providers=provider(files, "0.2s")))
    assert mesh.wait_identity(10) is not None
    yield mesh, files
    mesh.close()
    xds.close()


def client_mesh(port: int, files: Path, tls: bool = True) -> tuple[testing.XdsServer, sail.Mesh]:
    xds = testing.XdsServer(resources(port, tls)).start()
    mesh = sail.Mesh.from_bootstrap(xds.bootstrap(certificate_providers=provider(files)),
                                    services=["reviews"])
    assert mesh.wait_identity(10) is not None
    return xds, mesh


def resources(port: int, tls: bool) -> list[dict[str, Any]]:
    return testing.service("reviews", {"reviews": [("127.0.0.1", port)]},
                           transport_socket=testing.upstream_tls(str(REVIEWS)) if tls else None)


def plain_get(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_strict_serves_meshed_callers_and_refuses_plaintext(
    server_mesh: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    mesh, _ = server_mesh
    with mesh.http_server(make_app(mesh), mode="STRICT") as server:
        xds, client = client_mesh(server.port, issue(ca, CLIENT, tmp_path / "client"))
        try:
            with client.client() as http:
                seen = http.get("http://reviews/", timeout=10).json()
            assert seen == {"mtls": True, "spiffe_id": str(CLIENT), "principal": str(CLIENT),
                            "tls_version": 0x0304, "chain": 1}
        finally:
            client.close()
            xds.close()
        with pytest.raises(httpx.TransportError):
            plain_get(server.port)
        wait_until(lambda: server.connections.refused_plaintext == 1, timeout=5)


def test_strict_refuses_a_foreign_ca_another_trust_domain_and_no_certificate(
    server_mesh: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    mesh, _ = server_mesh
    with mesh.http_server(make_app(mesh), mode="STRICT") as server:
        trusted_roots = ca.trust_bundle
        callers = {
            "foreign CA": issue(CertificateAuthority.generate(TD), CLIENT, tmp_path / "f"),
            "other trust domain": issue(CertificateAuthority.generate("other.org"), OTHER,
                                        tmp_path / "o"),
        }
        for files in callers.values():
            context = ssl.create_default_context(cadata=trusted_roots)
            context.check_hostname = False
            context.load_cert_chain(files / "cert-chain.pem", files / "key.pem")
            with pytest.raises(httpx.TransportError):
                httpx.get(f"https://127.0.0.1:{server.port}/", verify=context, timeout=5)
        no_cert = ssl.create_default_context(cadata=trusted_roots)
        no_cert.check_hostname = False
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{server.port}/", verify=no_cert, timeout=5)
        # (TLS 1.3: the client may see the alert before the server has counted it)
        wait_until(lambda: server.connections.refused_handshakes == 3, timeout=5)


def test_permissive_serves_mtls_and_plaintext_on_one_port(
    server_mesh: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    mesh, _ = server_mesh
    with mesh.http_server(make_app(mesh), mode="PERMISSIVE") as server:
        assert plain_get(server.port).json()["mtls"] is False
        xds, client = client_mesh(server.port, issue(ca, CLIENT, tmp_path / "client"))
        try:
            with client.client() as http:
                assert http.get("http://reviews/", timeout=10).json()["mtls"] is True
        finally:
            client.close()
            xds.close()


def test_disable_serves_plaintext_only(server_mesh: Any, ca: CertificateAuthority,
                                       tmp_path: Path) -> None:
    mesh, _ = server_mesh
    with mesh.http_server(make_app(mesh), mode="DISABLE") as server:
        assert plain_get(server.port).json() == {
            "mtls": False, "spiffe_id": None, "principal": "", "tls_version": None, "chain": 0}
        xds, client = client_mesh(server.port, issue(ca, CLIENT, tmp_path / "client"))
        try:
            testing.set_testing(True)
            with client.client() as http, pytest.raises(httpx.TransportError):
                http.get("http://reviews/", timeout=5)
        finally:
            testing.set_testing(False)
            client.close()
            xds.close()


def test_a_mode_without_an_identity_is_an_error() -> None:
    xds = testing.XdsServer().start()
    try:
        with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
            with pytest.raises(ValueError, match="no workload identity"):
                mesh.http_server(make_app(mesh), mode="STRICT")
            server = mesh.http_server(make_app(mesh))
            assert server.mode == "DISABLE"
            server.stop()
    finally:
        xds.close()


def test_disable_to_permissive_to_strict_live_with_no_failed_meshed_request(
    server_mesh: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The migration Istio users make: the server goes PERMISSIVE, clients move to mTLS,
    then the server goes STRICT; meshed traffic never fails, plaintext is refused at the
    end."""
    mesh, _ = server_mesh
    with mesh.http_server(make_app(mesh), mode="DISABLE") as server:
        xds, client = client_mesh(server.port, issue(ca, CLIENT, tmp_path / "client"),
                                  tls=False)
        failures: list[BaseException] = []
        modes: list[bool] = []
        stop = threading.Event()

        def traffic() -> None:
            with client.client() as http:
                while not stop.is_set():
                    try:
                        modes.append(http.get("http://reviews/", timeout=10).json()["mtls"])
                    except Exception as exc:
                        failures.append(exc)
                    time.sleep(0.005)

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            wait_until(lambda: len(modes) > 20, timeout=10)
            server.mode = "PERMISSIVE"
            time.sleep(0.2)
            xds.set(resources(server.port, tls=True))  # clients move to mTLS
            wait_until(lambda: modes[-1] is True, timeout=10)
            server.mode = "STRICT"
            count = len(modes)
            wait_until(lambda: len(modes) > count + 20, timeout=10)
        finally:
            stop.set()
            thread.join(10)
            client.close()
            xds.close()
        assert failures == []
        assert modes[0] is False and modes[-1] is True
        with pytest.raises(httpx.TransportError):
            plain_get(server.port)


def test_the_server_certificate_rotates_for_new_connections(
    server_mesh: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    mesh, files = server_mesh
    with mesh.http_server(make_app(mesh), mode="STRICT") as server:
        xds, client = client_mesh(server.port, issue(ca, CLIENT, tmp_path / "client"))
        try:

            def served_serial() -> int:
                with client.client() as http:  # a new client: a new connection
                    response = http.get("http://reviews/", timeout=10)
                    ssl_object = response.extensions["network_stream"].get_extra_info(
                        "ssl_object")
                    der = ssl_object.getpeercert(True)
                from cryptography import x509

                return x509.load_der_x509_certificate(der).serial_number

            before = served_serial()
            first = mesh.identity
            time.sleep(1.1)
            issue(ca, REVIEWS, files, lifetime=7200)
            wait_until(lambda: mesh.identity.not_after > first.not_after, timeout=10)
            wait_until(lambda: served_serial() != before, timeout=10)
        finally:
            client.close()
            xds.close()


def test_an_xds_enabled_server_takes_its_mode_from_the_server_listener(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The server Listener's transport sockets decide (A29 on LDS): none yet refuses
    everything; DISABLE, PERMISSIVE and STRICT as the chains say; a TLS chain sail cannot
    honour (no client certificate required) refuses everything, naming why."""
    files = issue(ca, REVIEWS, tmp_path / "reviews")
    xds = testing.XdsServer().start()
    mesh = sail.Mesh.from_bootstrap(xds.bootstrap(
        certificate_providers=provider(files),
        server_listener_resource_name_template=DEFAULT_SERVER_LISTENER_TEMPLATE,
    ))
    try:
        assert mesh.wait_identity(10) is not None
        with mesh.http_server(make_app(mesh), xds=True) as server:
            assert server.mode == "NOT_SERVING"
            with pytest.raises(httpx.TransportError):
                plain_get(server.port)
            for mode in ("DISABLE", "PERMISSIVE", "STRICT"):
                xds.set([testing.server_listener("127.0.0.1", server.port, mtls=mode)])
                wait_until(lambda mode=mode: server.mode == mode, timeout=10)
            with pytest.raises(httpx.TransportError):
                plain_get(server.port)
            clients_xds, client = client_mesh(server.port, issue(ca, CLIENT, tmp_path / "c"))
            try:
                with client.client() as http:
                    assert http.get("http://reviews/", timeout=10).json()["mtls"] is True
            finally:
                client.close()
                clients_xds.close()
            lenient = testing.server_listener("127.0.0.1", server.port, mtls="STRICT")
            socket_config = lenient["filter_chains"][0]["transport_socket"]["typed_config"]
            socket_config["require_client_certificate"] = False
            xds.set([lenient])
            wait_until(lambda: server.mode == "NOT_SERVING", timeout=10)
            assert "client certificate" in server.why
    finally:
        mesh.close()
        xds.close()
