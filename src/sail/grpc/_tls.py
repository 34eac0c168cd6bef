"""mTLS on gRPC subchannels: what a TLS cluster's subchannel is opened with.

grpcio's Python API takes TLS credentials as PEM bytes (`grpc.ssl_channel_credentials`)
and has no certificate verifier of its own choosing: after verifying the chain, it checks
the peer's certificate against a *hostname* (its DNS SANs, else its common name), never
against a URI SAN. sail's peer check is done there, in C-core, inside the handshake: the
hostname checked (`grpc.ssl_target_name_override`) is the DNS name of the one SPIFFE ID the
cluster accepts (`SpiffeId.dns_name`, `reviews.default.sa.example.org`), which the mesh CA
writes into every workload certificate beside the SPIFFE ID. A peer whose certificate does
not carry that name fails the handshake, and nothing is sent to it.

So a cluster's SAN matchers must name one SPIFFE ID exactly (what the registry writes for
a service with one service account, Istio's usual case); a cluster whose matchers accept
several identities, a pattern, or any certificate at all is refused with the reason
(`UnsupportedRequest`), never sent on a weaker check. Certificates from a CA that does not
write the DNS name (SPIRE, Istio's agent) serve sail's HTTP clients, whose check reads the
URI SAN itself, but not its gRPC channels: their handshakes fail (closed).

A rotation makes a new `TlsMaterial`, so new subchannels (keyed by endpoint and material)
present the new certificate, and the old ones drain (`sail.grpc._core`).
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sail.context import Peer
from sail.errors import InvalidSpiffeId, NoCredentials, PeerIdentityMismatch, UnsupportedRequest
from sail.model import StringMatchKind
from sail.model.tls import SanType
from sail.security.spiffe import SpiffeId

if TYPE_CHECKING:
    from sail.dataplane import ClusterRuntime, UpstreamTlsRuntime
    from sail.model import Endpoint
    from sail.security.tls import ServerTls, TlsMaterial

__all__ = [
    "attempt_identity", "check_cluster", "identity_error", "peer_of", "refused_peer",
    "server_credentials", "subchannel_args",
]

@attrs.frozen
class _Accepted:
    """What grpcio can check of one cluster TLS: the SPIFFE IDs its SAN matchers accept
    exactly (that have a DNS name), the sole one when there is one, and why it cannot
    check the cluster when no endpoint says which of them it is."""

    exact: Mapping[str, SpiffeId]
    sole: SpiffeId | None
    why: str


# Made once per `ClientTls` (a config update makes new ones), read per attempt.
_ACCEPTED: weakref.WeakKeyDictionary[Any, _Accepted] = weakref.WeakKeyDictionary()


def _accepted(tls: UpstreamTlsRuntime) -> _Accepted:
    found = _ACCEPTED.get(tls)
    if found is None:
        found = _ACCEPTED[tls] = _compile(tls)
    return found


def _compile(tls: UpstreamTlsRuntime) -> _Accepted:
    exact: dict[str, SpiffeId] = {}
    why = ""
    for matcher in tls.spec.san_matchers:
        rule = matcher.matcher
        if (matcher.san_type not in (SanType.ANY, SanType.URI)
                or rule.kind is not StringMatchKind.EXACT or rule.ignore_case):
            why = (f"its SAN matcher ({matcher.san_type.value} {rule.kind.value}) is not an "
                   "exact SPIFFE ID, the only peer check sail's gRPC channels can make")
            continue
        try:
            identity = SpiffeId.parse(rule.value)
        except InvalidSpiffeId as exc:
            why = f"its SAN matcher {rule.value!r} is not a SPIFFE ID: {exc}"
            continue
        if identity.dns_name is None:
            why = (f"the identity it expects, {identity}, has no DNS name for grpcio's "
                   "hostname check (an /ns/<ns>/sa/<sa> ID in lower case, without dots)")
            continue
        exact[str(identity)] = identity
    matchers = tls.spec.san_matchers
    if not matchers:
        why = ("its TLS accepts any certificate the roots verify; sail's gRPC channels check "
               "a peer by one exact SPIFFE ID (grpcio has no verifier but a hostname check)")
    elif len(matchers) > 1 and not why:
        why = (f"its TLS accepts {len(matchers)} identities and the endpoint does not say "
               "which is its own (sail's gRPC channels check one; the registry writes it)")
    sole = next(iter(exact.values())) if len(matchers) == 1 and exact else None
    return _Accepted(exact, sole, why)


def check_cluster(service: str, cluster: ClusterRuntime) -> None:
    """Raise `NoCredentials` when TLS cluster `cluster` cannot be called now because the
    workload has no credentials for it (the peer check is the attempt's:
    `attempt_identity`)."""
    tls = cluster.tls
    assert tls is not None
    if tls.material is None or tls.context is None:
        raise NoCredentials(
            f"service {service!r}: cluster {cluster.cluster.name!r} asks for TLS and this "
            f"workload has no credentials for it: {tls.why}"
        )


def attempt_identity(
    service: str, cluster: str, tls: UpstreamTlsRuntime, endpoint: Endpoint
) -> SpiffeId:
    """The identity an attempt to `endpoint` of TLS cluster `cluster` checks (grpcio
    checks its DNS name in the handshake): the endpoint's own when the cluster accepts it,
    else the cluster's sole one. `UnsupportedRequest` when the check sail's gRPC channels
    can make is not the one the cluster asks for (the module docstring)."""
    accepted = _accepted(tls)
    identity = accepted.exact.get(endpoint.identity) if endpoint.identity else None
    if identity is None:
        identity = accepted.sole
    if identity is None:
        raise UnsupportedRequest(
            f"service {service!r}: cluster {cluster!r}: {accepted.why}; refusing rather "
            "than calling it on a weaker check"
        )
    material = tls.material
    domains = material.trust_domains if material is not None else None
    if domains is not None and identity.trust_domain not in domains:
        raise UnsupportedRequest(
            f"service {service!r}: cluster {cluster!r} expects {identity}, whose trust "
            f"domain is not in the SPIFFE trust bundle map ({', '.join(sorted(domains))})"
        )
    return identity


def identity_error(
    expected: SpiffeId | None, endpoint: str, error: BaseException
) -> BaseException:
    """The error a call that gave up after `error` fails with: for a TLS attempt (that
    expected `expected`) whose handshake failed grpcio's name check, `PeerIdentityMismatch`
    naming the identity expected and the endpoint (its cause `error`); else `error`
    itself. (grpcio does not say what the peer presented.)"""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if expected is None or not callable(code) or code() is not grpc.StatusCode.UNAVAILABLE:
        return error
    if not callable(details) or "Hostname Verification" not in (details() or ""):
        return error
    mismatch = PeerIdentityMismatch.of(
        str(expected), f"a certificate without its DNS name {expected.dns_name}", endpoint
    )
    mismatch.__cause__ = error
    return mismatch


def subchannel_args(
    material: TlsMaterial, identity: SpiffeId, options: tuple[tuple[str, Any], ...]
) -> tuple[grpc.ChannelCredentials, tuple[tuple[str, Any], ...]]:
    """The credentials and options of a subchannel made from `material` whose peer must
    be `identity` (grpcio checks its DNS name)."""
    assert identity.dns_name is not None
    credentials = grpc.ssl_channel_credentials(
        material.roots, material.key or None, material.chain or None
    )
    return credentials, (*options, ("grpc.ssl_target_name_override", identity.dns_name))


# -- servers ----------------------------------------------------------------------------------


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """mTLS server credentials that follow `tls`: grpcio asks before each new connection's
    handshake (`dynamic_ssl_server_credentials`), and gets a new configuration when the
    certificate has rotated, so new connections present the current certificate and open
    ones keep theirs. A client must present a certificate the roots verify. Until the
    workload has a certificate, the server presents a throwaway self-signed one and trusts
    nothing, so every handshake fails (closed) rather than the server waiting."""
    served: list[TlsMaterial | None] = [tls.material]

    def configuration(material: TlsMaterial) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.chain)], root_certificates=material.roots
        )

    def fetch() -> Any:  # on a grpcio thread, before each handshake: one attribute read
        material = tls.material
        if material is None or material is served[0]:
            return None
        served[0] = material
        return configuration(material)

    first = served[0] if served[0] is not None else _throwaway()
    return grpc.dynamic_ssl_server_credentials(
        configuration(first), fetch, require_client_authentication=True
    )


def _throwaway() -> TlsMaterial:
    """A self-signed certificate no peer trusts, trusting only itself."""
    from sail.security.tls import TlsMaterial

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sail: no certificate yet")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsMaterial(pem, pem, key_pem)


_PEERS: dict[bytes, tuple[str | None, str]] = {}  # leaf PEM -> (SPIFFE ID, principal)
_PEERS_LIMIT = 4096


def peer_of(context: Any, mtls: bool) -> Peer:
    """The caller of a call being served (`grpc.ServicerContext`): its address, and, on a
    server with `mtls`, its SPIFFE ID and principal (the URI SAN, else the first DNS SAN,
    else the subject, as gRFC A41 reads them) from its verified certificate, parsed once
    per certificate."""
    address = _address(context.peer())
    if not mtls:
        return Peer(address)
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems:
        return Peer(address)
    pem = pems[0]
    known = _PEERS.get(pem)
    if known is None:
        known = _names(pem)
        if len(_PEERS) >= _PEERS_LIMIT:
            _PEERS.clear()
        _PEERS[pem] = known
    return Peer(address, mtls=True, spiffe_id=known[0], principal=known[1])


def _names(pem: bytes) -> tuple[str | None, str]:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None, cert.subject.rfc4514_string()
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    dns = sans.get_values_for_type(x509.DNSName)
    spiffe = uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None
    principal = uris[0] if uris else dns[0] if dns else cert.subject.rfc4514_string()
    return spiffe, principal


def _address(peer: str) -> tuple[str, int] | None:
    """`(host, port)` of grpc's peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def refused_peer(peer: Peer, tls: ServerTls) -> str | None:
    """Why a verified caller is refused anyway: with a SPIFFE trust bundle map (gRFC A87),
    a certificate without exactly one SPIFFE ID of a trust domain the map holds."""
    material = tls.material
    domains = material.trust_domains if material is not None else None
    if domains is None or not peer.mtls:
        return None
    spiffe = peer.spiffe_id
    domain = spiffe[len("spiffe://"):].partition("/")[0] if spiffe is not None else None
    if domain is None or domain not in domains:
        return (f"the caller's certificate ({peer.principal or 'no SANs'}) has no SPIFFE ID "
                f"of trust domain {' or '.join(sorted(domains))}")
    return None
