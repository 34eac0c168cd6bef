"""The certificate attacks, HTTP and gRPC, both directions: a caller presenting a bad
certificate to a STRICT sail server (HTTP on uvicorn, gRPC on grpcio), and a server
presenting one to sail's clients (httpx transports, gRPC channels). Bad means expired, not
yet valid, self-signed, from a foreign CA, or of another trust domain; each is refused in
the handshake, and nothing reaches the app."""

from __future__ import annotations

import datetime
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sail
from sail import testing
from sail.security.ca import CertificateAuthority
from sail.security.enroll import Enrollment, write_files
from sail.security.spiffe import SpiffeId
from tests.e2e.test_grpc_mtls import METHOD, client_mesh, handler, who
from tests.e2e.test_http_mtls import CLIENT, REVIEWS, TD, TlsServer, issue, provider

pytestmark = pytest.mark.e2e

ATTACKS = ["expired", "not yet valid", "self-signed", "foreign CA", "another trust domain"]


def bad_files(kind: str, ca: CertificateAuthority, identity: SpiffeId, out: Path) -> Path:
    """Files (as Istio's agent writes them) holding a certificate that is bad as `kind`
    says, for `identity`; `root-cert.pem` is the good CA's, so the holder trusts its
    peer."""
    now = time.time()
    if kind in ("expired", "not yet valid"):
        issued = now - 7200 if kind == "expired" else now + 7200
        enrollment = Enrollment(lambda csr, current: ca.sign(csr, identity, 3600, now=issued))
        enrollment.obtain()
        write_files(out, enrollment)
    elif kind in ("foreign CA", "another trust domain"):
        domain = TD if kind == "foreign CA" else "other.org"
        issue(CertificateAuthority.generate(domain), SpiffeId(domain, identity.path), out)
    else:
        out.mkdir(parents=True)
        key = ec.generate_private_key(ec.SECP256R1())
        stamp = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(stamp - datetime.timedelta(minutes=1))
            .not_valid_after(stamp + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(str(identity)),
                x509.DNSName(identity.dns_name or "")]), critical=True)
            .sign(key, hashes.SHA256())
        )
        (out / "cert-chain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    (out / "root-cert.pem").write_bytes(ca.trust_bundle.encode())
    return out


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD)


# -- a bad caller against a STRICT sail server ------------------------------------------------


class StrictServers:
    """A sail HTTP server and a sail gRPC server, both STRICT, counting what reaches them."""

    def __init__(self, files: Path) -> None:
        self.hits = 0
        self.xds = testing.XdsServer([]).start()
        self.mesh = sail.Mesh.from_bootstrap(
            self.xds.bootstrap(certificate_providers=provider(files))
        )
        assert self.mesh.wait_identity(10) is not None

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            self.hits += 1
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        self.http = self.mesh.http_server(app, mode="STRICT").start()

        def counted(request: bytes, context: Any) -> bytes:
            self.hits += 1
            return who(request, context)

        self.grpc = self.mesh.grpc_server("reviews", mode="STRICT")
        self.grpc.add_generic_rpc_handlers((handler(counted),))
        self.grpc.start()

    def close(self) -> None:
        self.http.stop()
        self.grpc.stop(0).wait(10)
        self.mesh.close()
        self.xds.close()


@pytest.fixture
def strict(ca: CertificateAuthority, tmp_path: Path) -> Iterator[StrictServers]:
    servers = StrictServers(issue(ca, REVIEWS, tmp_path / "reviews"))
    yield servers
    servers.close()


def http_call(port: int, files: Path) -> None:
    context = ssl.create_default_context(cafile=str(files / "root-cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(files / "cert-chain.pem", files / "key.pem")
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            context.wrap_socket(raw) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")
        if not tls.recv(1024):  # TLS 1.3: a refused client certificate shows on read
            raise ConnectionError("closed")


def grpc_call(port: int, files: Path) -> None:
    credentials = grpc.ssl_channel_credentials(
        (files / "root-cert.pem").read_bytes(), (files / "key.pem").read_bytes(),
        (files / "cert-chain.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, (
            ("grpc.ssl_target_name_override", REVIEWS.dns_name),)) as channel:
        channel.unary_unary(METHOD)(b"", timeout=5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("kind", ATTACKS)
def test_a_strict_server_refuses_a_bad_client_certificate(
    strict: StrictServers, ca: CertificateAuthority, tmp_path: Path, kind: str, protocol: str
) -> None:
    good = issue(ca, CLIENT, tmp_path / "good")
    bad = bad_files(kind, ca, CLIENT, tmp_path / "bad")
    call: Callable[[int, Path], None] = http_call if protocol == "http" else grpc_call
    port = strict.http.port if protocol == "http" else strict.grpc.port
    call(port, good)  # the control: a good certificate is served
    assert strict.hits == 1
    with pytest.raises((ssl.SSLError, ConnectionError, grpc.RpcError)):
        call(port, bad)
    assert strict.hits == 1


# -- a bad server against sail's clients ------------------------------------------------------


def grpc_server_with(files: Path, roots: bytes) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler(who),))
    credentials = grpc.ssl_server_credentials(
        [((files / "key.pem").read_bytes(), (files / "cert-chain.pem").read_bytes())],
        root_certificates=roots, require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.mark.parametrize("kind", ATTACKS)
def test_sail_clients_refuse_a_server_with_a_bad_certificate(
    ca: CertificateAuthority, tmp_path: Path, kind: str
) -> None:
    client_files = issue(ca, CLIENT, tmp_path / "client")
    bad = bad_files(kind, ca, REVIEWS, tmp_path / "bad")
    http_server = TlsServer(bad, client_files)
    grpc_server, grpc_port = grpc_server_with(bad, ca.trust_bundle.encode())
    http_xds, http_mesh = client_mesh(http_server.port, client_files, REVIEWS)
    grpc_xds, grpc_mesh = client_mesh(grpc_port, client_files, REVIEWS)
    try:
        testing.set_testing(True)
        with http_mesh.client() as client, pytest.raises(httpx.ConnectError):
            client.get("http://reviews/", timeout=10)
        assert http_server.hits == 0
        with grpc_mesh.grpc_channel("reviews") as channel, pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(METHOD)(b"", timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        testing.set_testing(False)
        for mesh, xds in ((http_mesh, http_xds), (grpc_mesh, grpc_xds)):
            mesh.close()
            xds.close()
        http_server.close()
        grpc_server.stop(0).wait(5)
