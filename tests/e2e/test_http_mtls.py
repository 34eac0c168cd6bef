"""mTLS from sail's httpx clients to a real TLS server (uvicorn requiring client
certificates), with the cluster's TLS from xDS (gRFC A29) and the certificates from a
`file_watcher` provider: the good case, and the attacks that must be refused."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import sail
from sail import testing
from sail.http import NoCredentialsError, PeerIdentityMismatchError, UnsupportedRequestError
from sail.security.ca import CertificateAuthority
from sail.security.enroll import Enrollment, write_files
from sail.security.spiffe import SpiffeId
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

TD = "example.org"
CLIENT = SpiffeId(TD, "/ns/default/sa/productpage")
REVIEWS = SpiffeId(TD, "/ns/default/sa/reviews")
RATINGS = SpiffeId(TD, "/ns/default/sa/ratings")


def issue(ca: CertificateAuthority, identity: SpiffeId, out: Path, lifetime: float = 3600) -> Path:
    """Files as Istio's agent writes them, for `identity`, signed by `ca`."""
    enrollment = Enrollment(lambda csr, current: ca.sign(csr, identity, lifetime))
    enrollment.obtain()
    write_files(out, enrollment)
    return out


def provider(directory: Path, refresh: str = "600s") -> dict[str, Any]:
    return {"default": {"plugin_name": "file_watcher", "config": {
        "certificate_file": str(directory / "cert-chain.pem"),
        "private_key_file": str(directory / "key.pem"),
        "ca_certificate_file": str(directory / "root-cert.pem"),
        "refresh_interval": refresh,
    }}}


class TlsServer:
    """uvicorn on loopback, serving TLS with `files` and requiring a client certificate
    signed by `client_roots`; counts the requests that reach the app."""

    def __init__(self, files: Path, client_roots: Path) -> None:
        self.hits = 0

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            self.hits += 1
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off",
            ssl_certfile=str(files / "cert-chain.pem"), ssl_keyfile=str(files / "key.pem"),
            ssl_ca_certs=str(client_roots / "root-cert.pem"), ssl_cert_reqs=ssl.CERT_REQUIRED,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        wait_until(lambda: self.server.started, timeout=10)

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD)


@pytest.fixture
def client_files(ca: CertificateAuthority, tmp_path: Path) -> Path:
    return issue(ca, CLIENT, tmp_path / "client")


@pytest.fixture
def reviews(ca: CertificateAuthority, tmp_path: Path, client_files: Path) -> Iterator[TlsServer]:
    server = TlsServer(issue(ca, REVIEWS, tmp_path / "reviews"), client_files)
    yield server
    server.close()


def mesh_for(port: int, client_files: Path, *expected: SpiffeId) -> tuple[testing.XdsServer,
                                                                          sail.Mesh]:
    xds = testing.XdsServer(testing.service(
        "reviews", {"reviews": [("127.0.0.1", port)]},
        transport_socket=testing.upstream_tls(*(str(e) for e in expected)),
    )).start()
    mesh = sail.Mesh.from_bootstrap(
        xds.bootstrap(certificate_providers=provider(client_files)), services=["reviews"]
    )
    assert mesh.wait_identity(10) is not None
    return xds, mesh


def test_a_tls_cluster_is_called_over_mtls(reviews: TlsServer, client_files: Path) -> None:
    xds, mesh = mesh_for(reviews.port, client_files, REVIEWS)
    try:
        with mesh.client() as client:
            # the server requires a client certificate: a 200 means sail presented one
            for url in ("http://reviews/", "https://reviews/"):
                response = client.get(url, timeout=10)
                assert response.status_code == 200 and response.text == "ok"
            stream = response.extensions["network_stream"]
            peer = stream.get_extra_info("ssl_object").getpeercert()
            assert ("URI", str(REVIEWS)) in peer["subjectAltName"]
        assert reviews.hits == 2
    finally:
        mesh.close()
        xds.close()


def test_a_peer_with_another_identity_is_refused_before_the_request(
    reviews: TlsServer, client_files: Path
) -> None:
    """The server's certificate verifies (same CA) but names `reviews`, and the cluster
    expects `ratings`: the handshake fails, nothing reaches the app."""
    xds, mesh = mesh_for(reviews.port, client_files, RATINGS)
    try:
        testing.set_testing(True)
        with mesh.client() as client, pytest.raises(PeerIdentityMismatchError) as caught:
            client.get("https://reviews/", timeout=10)
        error = caught.value
        assert isinstance(error, httpx.ConnectError)
        assert error.expected == f"exact {str(RATINGS)!r}"
        assert error.presented == f"URI:{REVIEWS}, DNS:{REVIEWS.dns_name}"
        assert error.endpoint == f"127.0.0.1:{reviews.port}"

        async def call() -> None:
            async with mesh.async_client() as client:
                await client.get("http://reviews/", timeout=10)

        with pytest.raises(PeerIdentityMismatchError):
            asyncio.run(call())
        assert reviews.hits == 0
    finally:
        testing.set_testing(False)
        mesh.close()
        xds.close()


def test_a_server_from_a_foreign_ca_is_refused(
    tmp_path: Path, client_files: Path
) -> None:
    """Right identity, wrong CA: the chain does not verify against the mesh's roots."""
    impostor = TlsServer(issue(CertificateAuthority.generate(TD), REVIEWS, tmp_path / "forged"),
                         client_files)
    xds, mesh = mesh_for(impostor.port, client_files, REVIEWS)
    try:
        testing.set_testing(True)
        with mesh.client() as client, pytest.raises(httpx.ConnectError) as caught:
            client.get("http://reviews/", timeout=10)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)
        assert impostor.hits == 0
    finally:
        testing.set_testing(False)
        mesh.close()
        xds.close()
        impostor.close()


def test_a_client_from_a_foreign_ca_is_refused_by_the_server(
    ca: CertificateAuthority, reviews: TlsServer, tmp_path: Path
) -> None:
    """The server side of the same attack: sail's client has a certificate for a
    trusted-looking identity from another CA, and trusts the server's CA; the server
    refuses the handshake."""
    forged = issue(CertificateAuthority.generate(TD), CLIENT, tmp_path / "forged-client")
    (forged / "root-cert.pem").write_bytes(ca.trust_bundle.encode())  # trusts the server
    xds, mesh = mesh_for(reviews.port, forged, REVIEWS)
    try:
        testing.set_testing(True)
        with mesh.client() as client, pytest.raises(httpx.TransportError):
            client.get("http://reviews/", timeout=10)
        assert reviews.hits == 0
    finally:
        testing.set_testing(False)
        mesh.close()
        xds.close()


def test_https_to_a_plaintext_cluster_is_refused_and_no_credentials_send_nothing(
    tmp_path: Path, client_files: Path
) -> None:
    xds = testing.XdsServer(testing.service("plain", {"plain": [("127.0.0.1", 9)]})).start()
    try:
        with sail.Mesh.from_bootstrap(xds.bootstrap(), services=["plain"]) as mesh, \
                mesh.client() as client, pytest.raises(UnsupportedRequestError, match="no TLS"):
            client.get("https://plain/", timeout=10)
        xds.set(testing.service("plain", {"plain": [("127.0.0.1", 9)]},
                                transport_socket=testing.upstream_tls(str(REVIEWS))))
        missing = tmp_path / "missing"
        with sail.Mesh.from_bootstrap(xds.bootstrap(certificate_providers=provider(missing)),
                                      services=["plain"]) as mesh, mesh.client() as client:
            with pytest.raises(NoCredentialsError, match="no credentials"):
                client.get("http://plain/", timeout=10)
    finally:
        xds.close()


def test_a_rotated_client_certificate_is_used_by_new_connections(
    ca: CertificateAuthority, reviews: TlsServer, client_files: Path
) -> None:
    xds = testing.XdsServer(testing.service(
        "reviews", {"reviews": [("127.0.0.1", reviews.port)]},
        transport_socket=testing.upstream_tls(str(REVIEWS)),
    )).start()
    mesh = sail.Mesh.from_bootstrap(
        xds.bootstrap(certificate_providers=provider(client_files, "0.2s")), services=["reviews"]
    )
    try:
        first = mesh.wait_identity(10)
        assert first is not None
        with mesh.client() as client:
            assert client.get("http://reviews/", timeout=10).status_code == 200
            time.sleep(1.1)  # a later not_after for the new certificate
            issue(ca, CLIENT, client_files, lifetime=7200)
            wait_until(lambda: (mesh.identity is not None
                                and mesh.identity.not_after > first.not_after), timeout=10)
            for _ in range(20):  # no request fails across the rotation
                assert client.get("http://reviews/", timeout=10).status_code == 200
        assert reviews.hits == 21
    finally:
        mesh.close()
        xds.close()
