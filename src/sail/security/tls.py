"""TLS contexts made from a workload's credentials, and the peer identity check.

A cluster's `UpstreamTls` names certificate provider instances (gRFC A29); `ClientTls`
holds the `ssl.SSLContext` its connections use, made from those instances' current
credentials. A context is immutable once made: when a certificate rotates, the identity
thread makes a new one (`refresh`), so new connections present the new certificate while
the old ones finish on theirs (the transport pools connections per context, and a pool of
an old context drains). Making a context reads nothing from disk on the request path: the
key goes to OpenSSL through an anonymous memory file.

**The peer check.** Python's hostname check knows DNS and IP SANs only, and a mesh peer is
known by its SPIFFE ID (a URI SAN), so the context verifies the chain against the
instance's roots (`CERT_REQUIRED`, hostname check off) and then, inside the handshake
(`SSLContext.sslsocket_class` and `sslobject_class`, for sync sockets and asyncio's memory
BIOs alike), checks the certificate's SANs against the cluster's matchers, as Linkerd and
Istio do. A mismatch fails the handshake with `PeerIdentityError`, which names the identity
expected and the one presented, before a byte of the request is sent. With a SPIFFE trust
bundle map (gRFC A87) the peer must carry exactly one URI SAN, a SPIFFE ID of a trust
domain the map holds.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import weakref
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from sail.errors import SecurityError
from sail.model.tls import DownstreamTls, SanMatcher, SanType, UpstreamTls
from sail.routing.matchers import compile_string_matcher
from sail.security.spiffe import SpiffeId

if TYPE_CHECKING:
    from sail.security.providers import Credentials

__all__ = [
    "ClientTls", "ClientTlsFactory", "PeerIdentityError", "ServerTls", "TlsMaterial", "check_peer",
    "peer_sans", "refused_server_tls",
]

log = logging.getLogger("sail.security")


@attrs.frozen(eq=False)
class TlsMaterial:
    """The PEM a context was made from, for TLS stacks that take bytes rather than an
    `ssl.SSLContext` (grpcio). Compared by identity: each rotation makes a new one.

    * `roots` - the CA certificates peers are verified against.
    * `chain` - the workload's certificate chain (`b""` without one).
    * `key` - its private key.
    * `trust_domains` - with a SPIFFE trust bundle map, the trust domain a peer's SPIFFE ID
      must have; `None` when the roots apply to every peer.
    """

    roots: bytes
    chain: bytes
    key: bytes = attrs.field(repr=False)
    trust_domains: frozenset[str] | None = None


class PeerIdentityError(ssl.SSLCertVerificationError):
    """The peer's certificate verified, but it is not who the config says it must be.

    `expected` describes the accepted identities, `presented` the certificate's SANs."""

    def __init__(self, expected: str, presented: str) -> None:
        message = f"peer identity {presented} is not the expected {expected}"
        super().__init__(1, message)
        self.expected = expected
        self.presented = presented
        self.reason = "PEER_IDENTITY_MISMATCH"
        self.verify_message = message

    def __str__(self) -> str:
        return self.verify_message


def peer_sans(cert: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """`(type, value)` SANs of a `getpeercert()` dict (`DNS`, `URI`, `email`,
    `IP Address`)."""
    return tuple((str(kind), str(value)) for kind, value in cert.get("subjectAltName", ()))


class _Check:
    """The compiled SAN check of one `UpstreamTls`."""

    def __init__(self, matchers: tuple[SanMatcher, ...], trust_domains: frozenset[str] | None):
        self._tests = [(m.san_type, compile_string_matcher(m.matcher)) for m in matchers]
        self._expected = " or ".join(
            f"{m.matcher.kind.value} {m.matcher.value!r}" for m in matchers
        ) or "any certificate the roots verify"
        self._domains = trust_domains

    def __call__(self, cert: Mapping[str, Any] | None) -> None:
        sans = peer_sans(cert or {})
        presented = ", ".join(f"{k}:{v}" for k, v in sans) or "no SANs"
        if self._domains is not None:
            uris = [v for k, v in sans if k == "URI"]
            domain = _spiffe_domain(uris)
            if domain is None or domain not in self._domains:
                raise PeerIdentityError(
                    f"a SPIFFE ID of trust domain {' or '.join(sorted(self._domains))}",
                    presented,
                )
        if not self._tests:
            return
        if not sans:
            raise PeerIdentityError(self._expected, presented)
        for kind, value in sans:
            for san_type, test in self._tests:
                if (san_type is SanType.ANY or san_type.value == kind) and test(value):
                    return
        raise PeerIdentityError(self._expected, presented)


def _spiffe_domain(uris: list[str]) -> str | None:
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0]).trust_domain
    except SecurityError:
        return None


def check_peer(tls: UpstreamTls, cert: Mapping[str, Any] | None) -> None:
    """Raise `PeerIdentityError` unless `cert` (a `getpeercert()` dict) satisfies `tls`'s
    SAN matchers."""
    _Check(tls.san_matchers, None)(cert)


def _checked_classes(check: _Check) -> tuple[type[ssl.SSLSocket], type[ssl.SSLObject]]:
    class CheckedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check(self.getpeercert())

    class CheckedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until the handshake is done
            check(self.getpeercert())

    return CheckedSocket, CheckedObject


def load_chain(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`context.load_cert_chain` from memory: an anonymous memory file where the system has
    them (Linux), else a private temporary file removed at once."""
    data = chain_pem.rstrip(b"\n") + b"\n" + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sail-credentials", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # 0700
        path = os.path.join(directory, "credentials.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
            out.write(data)
        context.load_cert_chain(path)


class ClientTls:
    """The client TLS of one `UpstreamTls`: `context` is the `ssl.SSLContext` for its
    connections now (`None` until the instances have credentials; `why` says what is
    missing), and `material` the PEM it was made from (`TlsMaterial`, for grpcio). Read
    on the request path as one attribute each; replaced whole on rotation.

    **Parameters**

    * `spec` - the cluster's TLS.
    * `identity` - the credentials source of `spec.identity` (`None` without one).
    * `roots` - the credentials source of `spec.roots`.
    """

    def __init__(
        self, spec: UpstreamTls, identity: _Source | None, roots: _Source
    ) -> None:
        self.spec = spec
        self._identity = identity
        self._roots = roots
        self.context: ssl.SSLContext | None = None
        self.material: TlsMaterial | None = None
        self.why = "no credentials yet"
        self._made_from: tuple[object, object] = (None, None)
        self._lock = threading.Lock()
        self.refresh()
        for source in {id(s): s for s in (identity, roots) if s is not None}.values():
            source.subscribe(self)

    def refresh(self) -> None:
        """Make a new context if the credentials changed (the identity thread calls this)."""
        with self._lock:
            creds = self._identity.current if self._identity is not None else None
            roots = self._roots.current
            if (creds, roots) == self._made_from and self.context is not None:
                return
            try:
                context, self.material = self._make(creds, roots)
                self.context = context
                self.why = ""
            except (SecurityError, ssl.SSLError, ValueError) as exc:
                self.why = str(exc)
                log.warning("sail TLS: %s; keeping the current context", exc)
                return
            self._made_from = (creds, roots)

    def _make(
        self, creds: Credentials | None, roots: Credentials | None
    ) -> tuple[ssl.SSLContext, TlsMaterial]:
        spec = self.spec
        if roots is None or not roots.roots:
            raise SecurityError(
                f"certificate provider {spec.roots.instance!r} has no CA certificates yet"
            )
        domains: frozenset[str] | None = None
        if "" in roots.roots:
            bundle = roots.roots[""]
        elif len(roots.roots) == 1:
            domains = frozenset(roots.roots)
            bundle = next(iter(roots.roots.values()))
        else:
            raise SecurityError(
                f"certificate provider {spec.roots.instance!r}: a SPIFFE trust bundle map "
                "with more than one trust domain is not supported yet"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # the SANs are checked against the matchers instead
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=bundle.decode("ascii"))
        chain = key = b""
        if spec.identity is not None:
            if creds is None or not creds.chain_pem:
                raise SecurityError(
                    f"certificate provider {spec.identity.instance!r} has no certificate yet"
                )
            chain, key = creds.chain_pem, creds.key_pem
            load_chain(context, chain, key)
        context.sslsocket_class, context.sslobject_class = _checked_classes(
            _Check(spec.san_matchers, domains)
        )
        return context, TlsMaterial(bundle, chain, key, domains)


class ServerTls:
    """A server's TLS from one credentials source: `context` is the `ssl.SSLContext` for
    new connections now (`None` until the source has credentials), made again whole when
    the certificate rotates, so each new connection presents the current certificate and
    connections already open keep theirs (`material`: the PEM it was made from, for
    grpcio's servers). A client must present a certificate the roots
    verify (mTLS); with a SPIFFE trust bundle map, one carrying a SPIFFE ID of a trust
    domain the map holds.

    **Parameters**

    * `source` - the workload's credentials (`WorkloadIdentity`).
    """

    def __init__(self, source: _Source) -> None:
        self._source = source
        self.context: ssl.SSLContext | None = None
        self.material: TlsMaterial | None = None
        self.why = "no credentials yet"
        self._made_from: object = None
        self._lock = threading.Lock()
        self.refresh()
        source.subscribe(self)

    def refresh(self) -> None:
        with self._lock:
            creds = self._source.current
            if creds is self._made_from and self.context is not None:
                return
            try:
                context, self.material = _server_context(creds)
                self.context = context
                self.why = ""
            except (SecurityError, ssl.SSLError, ValueError) as exc:
                self.why = str(exc)
                log.warning("sail TLS: server: %s; keeping the current context", exc)
                return
            self._made_from = creds


def _server_context(creds: Credentials | None) -> tuple[ssl.SSLContext, TlsMaterial]:
    if creds is None or not creds.chain_pem:
        raise SecurityError("the workload has no certificate yet")
    if not creds.roots:
        raise SecurityError("the workload has no CA certificates to verify clients with")
    if "" not in creds.roots and len(creds.roots) > 1:
        raise SecurityError(
            "a SPIFFE trust bundle map with more than one trust domain is not supported yet"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    roots = b"".join(creds.roots.values())
    context.load_verify_locations(cadata=roots.decode("ascii"))
    load_chain(context, creds.chain_pem, creds.key_pem)
    domains = None
    if "" not in creds.roots:
        domains = frozenset(creds.roots)
        context.sslsocket_class, context.sslobject_class = _checked_classes(
            _Check((), domains)
        )
    context.set_alpn_protocols(["http/1.1"])
    return context, TlsMaterial(roots, creds.chain_pem, creds.key_pem, domains)


def refused_server_tls(tls: DownstreamTls, providers: Collection[str]) -> str | None:
    """Why a server filter chain's TLS is not what sail's servers serve (the mesh's mTLS
    with the workload's certificate: `ServerTls`), or `None` when it is. Said of chain
    `tls`, for a server whose credentials are the instances `providers`."""
    if not tls.require_client_certificate or tls.roots is None:
        return "TLS without a required client certificate is not supported (mTLS only)"
    for name in tls.providers():
        if name not in providers:
            return f"certificate provider {name!r} is not the workload's"
    return None


class _Source(Protocol):
    """What `ClientTls` needs of a credentials source (`WorkloadIdentity`)."""

    @property
    def current(self) -> Credentials | None: ...

    def subscribe(self, listener: ClientTls | ServerTls) -> None: ...


class ClientTlsFactory:
    """Makes the `ClientTls` of each distinct `UpstreamTls`, shared by the clusters that
    have the same one (held weakly: a context no cluster uses is dropped).

    **Parameters**

    * `sources` - credentials sources by certificate provider instance name.
    """

    def __init__(self, sources: Mapping[str, Any]) -> None:
        self._sources = dict(sources)
        self._made: weakref.WeakValueDictionary[UpstreamTls, ClientTls] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def __call__(self, spec: UpstreamTls) -> ClientTls:
        with self._lock:
            made = self._made.get(spec)
            if made is None:
                identity = (self._sources[spec.identity.instance]
                            if spec.identity is not None else None)
                roots = self._sources[spec.roots.instance]
                made = self._made[spec] = ClientTls(spec, identity, roots)
            return made

