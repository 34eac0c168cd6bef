"""mTLS between sail's gRPC channels (sync and aio) and sail's gRPC servers
(`mesh.grpc_server(mode="STRICT")`, `mesh.aio_grpc_server(...)`), with certificates from
the mesh CA as `file_watcher` files: the good case, rotation, and the attacks that must be
refused."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import sail
from sail import testing
from sail._loop import background_loop
from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE
from sail.errors import PeerIdentityMismatch, UnsupportedRequest
from sail.security.ca import CertificateAuthority
from sail.security.spiffe import SpiffeId
from tests.e2e.test_http_mtls import CLIENT, RATINGS, REVIEWS, TD, issue, provider
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SERVICE = "sail.test.Who"
METHOD = f"/{SERVICE}/Who"


def who(request: bytes, context: Any) -> bytes:
    """The caller as the server's request context says."""
    ctx = sail.current_request()
    peer = ctx.peer if ctx is not None else None
    return json.dumps(None if peer is None else {
        "mtls": peer.mtls, "spiffe_id": peer.spiffe_id, "principal": peer.principal,
    }).encode()


async def awho(request: bytes, context: Any) -> bytes:
    return who(request, context)


def handler(fn: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(fn)}
    )


class Server:
    """A sail gRPC server of `reviews` serving the mesh's mTLS (STRICT), sync or aio."""

    def __init__(self, files: Path, aio: bool = False) -> None:
        self.xds = testing.XdsServer([]).start()
        self.mesh = sail.Mesh.from_bootstrap(
            self.xds.bootstrap(certificate_providers=provider(files, "1s"))
        )
        assert self.mesh.wait_identity(10) is not None
        self.aio = aio
        if aio:
            async def make() -> Any:
                server = self.mesh.aio_grpc_server("reviews", mode="STRICT")
                server.add_generic_rpc_handlers((handler(awho),))
                await server.start()
                return server

            self.server = asyncio.run_coroutine_threadsafe(make(), background_loop()).result(10)
        else:
            self.server = self.mesh.grpc_server("reviews", mode="STRICT")
            self.server.add_generic_rpc_handlers((handler(who),))
            self.server.start()
        self.port = self.server.port

    def close(self) -> None:
        if self.aio:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), background_loop()).result(10)
        else:
            self.server.stop(0).wait(10)
        self.mesh.close()
        self.xds.close()


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD)


@pytest.fixture
def client_files(ca: CertificateAuthority, tmp_path: Path) -> Path:
    return issue(ca, CLIENT, tmp_path / "client")


@pytest.fixture(params=["sync", "aio"])
def server(request: Any, ca: CertificateAuthority, tmp_path: Path) -> Iterator[Server]:
    running = Server(issue(ca, REVIEWS, tmp_path / "reviews"), aio=request.param == "aio")
    yield running
    running.close()


def client_mesh(
    port: int, files: Path, *expected: SpiffeId, refresh: str = "600s",
    endpoint_identity: SpiffeId | None = None,
) -> tuple[testing.XdsServer, sail.Mesh]:
    xds = testing.XdsServer(testing.service(
        "reviews", {"reviews": [("127.0.0.1", port)]},
        transport_socket=testing.upstream_tls(*(str(e) for e in expected)),
        identities=[str(endpoint_identity)] if endpoint_identity else (),
    )).start()
    mesh = sail.Mesh.from_bootstrap(
        xds.bootstrap(certificate_providers=provider(files, refresh)), services=["reviews"]
    )
    assert mesh.wait_identity(10) is not None
    return xds, mesh


def call(mesh: sail.Mesh, aio: bool = False) -> dict[str, Any]:
    if aio:
        async def run() -> bytes:
            async with mesh.aio_grpc_channel("reviews") as channel:
                return await channel.unary_unary(METHOD)(b"", timeout=10)  # type: ignore[no-any-return]

        return json.loads(asyncio.run(run()))  # type: ignore[no-any-return]
    with mesh.grpc_channel("reviews") as channel:
        return json.loads(channel.unary_unary(METHOD)(b"", timeout=10))  # type: ignore[no-any-return]


@pytest.mark.parametrize("aio_client", [False, True], ids=["sync-channel", "aio-channel"])
def test_a_tls_cluster_is_called_over_mtls_and_the_server_knows_the_caller(
    server: Server, client_files: Path, aio_client: bool
) -> None:
    xds, mesh = client_mesh(server.port, client_files, REVIEWS)
    try:
        seen = call(mesh, aio_client)
        assert seen == {"mtls": True, "spiffe_id": str(CLIENT), "principal": str(CLIENT)}
    finally:
        mesh.close()
        xds.close()


def test_a_server_with_another_identity_is_refused_in_the_handshake(
    server: Server, client_files: Path
) -> None:
    """Same CA, but the cluster expects `ratings`: grpcio's check of the identity's DNS
    name fails the handshake, and no call reaches the server."""
    xds, mesh = client_mesh(server.port, client_files, RATINGS)
    try:
        testing.set_testing(True)
        with pytest.raises(grpc.RpcError) as caught:
            call(mesh)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        mismatch = caught.value.__cause__
        assert isinstance(mismatch, PeerIdentityMismatch), repr(caught.value)
        assert mismatch.expected == str(RATINGS)
        assert mismatch.endpoint == f"127.0.0.1:{server.port}"
        assert "Hostname Verification" in repr(mismatch.__cause__)
    finally:
        testing.set_testing(False)
        mesh.close()
        xds.close()


def test_a_server_from_a_foreign_ca_is_refused(tmp_path: Path, client_files: Path) -> None:
    impostor = Server(issue(CertificateAuthority.generate(TD), REVIEWS, tmp_path / "forged"))
    xds, mesh = client_mesh(impostor.port, client_files, REVIEWS)
    try:
        testing.set_testing(True)
        with pytest.raises(grpc.RpcError) as caught:
            call(mesh)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        testing.set_testing(False)
        mesh.close()
        xds.close()
        impostor.close()


def test_strict_refuses_plaintext_a_foreign_client_and_no_client_certificate(
    server: Server, ca: CertificateAuthority, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{server.port}"
    attempts: dict[str, grpc.Channel] = {
        "plaintext": grpc.insecure_channel(target),
        "no client certificate": grpc.secure_channel(
            target, grpc.ssl_channel_credentials(ca.trust_bundle.encode()),
            (("grpc.ssl_target_name_override", REVIEWS.dns_name),),
        ),
    }
    forged = issue(CertificateAuthority.generate(TD), CLIENT, tmp_path / "forged")
    attempts["a client from a foreign CA"] = grpc.secure_channel(
        target, grpc.ssl_channel_credentials(
            ca.trust_bundle.encode(), (forged / "key.pem").read_bytes(),
            (forged / "cert-chain.pem").read_bytes(),
        ), (("grpc.ssl_target_name_override", REVIEWS.dns_name),),
    )
    for what, channel in attempts.items():
        with channel, pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(METHOD)(b"", timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, what


def test_a_cluster_accepting_several_identities_is_refused_not_weakened(
    server: Server, client_files: Path
) -> None:
    """grpcio checks one name per subchannel: a cluster that would accept `reviews` or
    `ratings` is refused with the reason, never called with a weaker check."""
    xds, mesh = client_mesh(server.port, client_files, REVIEWS, RATINGS)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            call(mesh)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert isinstance(caught.value.__cause__, UnsupportedRequest)
        assert "2 identities" in caught.value.details()
    finally:
        mesh.close()
        xds.close()


@pytest.mark.parametrize("says", ["reviews", "ratings", "productpage"])
def test_the_endpoint_says_which_of_the_accepted_identities_it_has(
    server: Server, client_files: Path, says: str
) -> None:
    """A cluster accepting `reviews` or `ratings`, with the endpoint's identity from EDS:
    its own (reviews) is called; another accepted one (ratings) is checked and fails the
    handshake; one the cluster does not accept is refused before any handshake."""
    identity = {"reviews": REVIEWS, "ratings": RATINGS, "productpage": CLIENT}[says]
    xds, mesh = client_mesh(server.port, client_files, REVIEWS, RATINGS,
                            endpoint_identity=identity)
    try:
        testing.set_testing(True)
        if says == "reviews":
            assert call(mesh)["spiffe_id"] == str(CLIENT)
            return
        with pytest.raises(grpc.RpcError) as caught:
            call(mesh)
        cause = caught.value.__cause__
        if says == "ratings":
            assert isinstance(cause, PeerIdentityMismatch) and cause.expected == str(RATINGS)
        else:
            assert isinstance(cause, UnsupportedRequest) and "2 identities" in str(cause)
    finally:
        testing.set_testing(False)
        mesh.close()
        xds.close()


def test_strict_needs_an_identity_and_permissive_is_refused_for_grpc() -> None:
    with testing.XdsServer([]).start() as xds:
        with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
            with pytest.raises(ValueError, match="identity"):
                mesh.grpc_server("reviews", mode="STRICT")
            with pytest.raises(ValueError, match="PERMISSIVE"):
                mesh.grpc_server("reviews", mode="PERMISSIVE")


def serial_seen_by_server(port: int, files: Path, ca: CertificateAuthority) -> int:
    """The serial of the certificate the server presents to a new connection."""
    context = ssl.create_default_context(cadata=ca.trust_bundle)
    context.check_hostname = False
    context.load_cert_chain(files / "cert-chain.pem", files / "key.pem")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            context.wrap_socket(raw) as tls:
        from cryptography import x509

        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def test_rotation_new_connections_present_new_certificates_and_no_call_fails(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Both sides rotate their files (read again every second): calls keep succeeding on
    one long-lived mesh channel, the server's new connections present its new certificate,
    and the server sees the client's new one."""
    server_files = issue(ca, REVIEWS, tmp_path / "reviews")
    running = Server(server_files)
    client_files = issue(ca, CLIENT, tmp_path / "client")
    xds, mesh = client_mesh(running.port, client_files, REVIEWS, refresh="1s")
    try:
        before = serial_seen_by_server(running.port, client_files, ca)
        with mesh.grpc_channel("reviews") as channel:
            who_is = channel.unary_unary(METHOD)
            assert json.loads(who_is(b"", timeout=10))["spiffe_id"] == str(CLIENT)
            before_rotation = set(channel._subchannels)
            first = mesh.identity
            assert first is not None
            issue(ca, REVIEWS, server_files)  # new key pairs, new serials
            issue(ca, CLIENT, client_files, lifetime=7200)  # a later not_after
            wait_until(lambda: (mesh.identity is not None
                                and mesh.identity.not_after > first.not_after), timeout=15)
            wait_until(
                lambda: serial_seen_by_server(running.port, client_files, ca) != before,
                timeout=15,
            )
            for _ in range(20):
                assert json.loads(who_is(b"", timeout=10))["mtls"] is True
            # the new certificate is on a new subchannel; the old one was retired
            now = set(channel._subchannels)
            assert now and not now & before_rotation
            assert all(material is not None for _, material, _ in now)
    finally:
        mesh.close()
        xds.close()
        running.close()


def test_an_xds_enabled_server_serves_the_transport_its_listener_asks_for(
    ca: CertificateAuthority, client_files: Path, tmp_path: Path
) -> None:
    """A STRICT server Listener opens the port with mTLS (a plaintext caller is refused, a
    meshed one served); PERMISSIVE's chain for TLS connections never matches a gRPC server
    (A36), so its plaintext chain is served; a Listener that later asks for the other
    transport makes the server not serve, naming why, rather than serve the old one."""
    files = issue(ca, REVIEWS, tmp_path / "reviews")
    xds = testing.XdsServer().start()
    mesh = sail.Mesh.from_bootstrap(xds.bootstrap(
        certificate_providers=provider(files),
        server_listener_resource_name_template=DEFAULT_SERVER_LISTENER_TEMPLATE,
    ))
    try:
        assert mesh.wait_identity(10) is not None
        server = mesh.grpc_server("reviews", xds=True)
        server.add_generic_rpc_handlers((handler(who),))
        server.start()
        assert server.workload.identity == str(REVIEWS)  # clients will expect it
        assert server.workload.permissive is False
        xds.set([testing.server_listener("127.0.0.1", server.port, mtls="STRICT")])
        wait_until(lambda: server.serving, timeout=10)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            with pytest.raises(grpc.RpcError):
                plain.unary_unary(METHOD)(b"", timeout=5)
        clients_xds, client = client_mesh(server.port, client_files, REVIEWS)
        try:
            assert call(client)["spiffe_id"] == str(CLIENT)
        finally:
            client.close()
            clients_xds.close()
        xds.set([testing.server_listener("127.0.0.1", server.port, mtls="DISABLE")])
        wait_until(lambda: not server.serving, timeout=10)
        assert server.serving_state is not None
        assert "restart the server" in server.serving_state.reason
        server.stop(0).wait(10)

        plain_server = mesh.grpc_server("reviews", xds=True)
        plain_server.add_generic_rpc_handlers((handler(who),))
        plain_server.start()
        xds.set([testing.server_listener("127.0.0.1", plain_server.port, mtls="PERMISSIVE")])
        wait_until(lambda: plain_server.serving, timeout=10)
        with grpc.insecure_channel(f"127.0.0.1:{plain_server.port}") as plain:
            assert json.loads(plain.unary_unary(METHOD)(b"", timeout=5))["mtls"] is False
        plain_server.stop(0).wait(10)
    finally:
        mesh.close()
        xds.close()
