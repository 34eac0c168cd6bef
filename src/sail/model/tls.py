"""TLS on a cluster's connections and on a server's filter chain, as gRFC A29 reads Envoy's
`UpstreamTlsContext` and `DownstreamTlsContext`.

Certificates and roots come only from *certificate provider instances*, named in the
bootstrap's `certificate_providers` (A29): the config says which instance holds the
workload's certificate and which the roots, never the key material itself. The decoder
(`sail.xds.codec.decode_tls`) refuses every field A29 refuses, so what is here is enforced.
"""

from __future__ import annotations

import enum

import attrs

from sail.model.matchers import StringMatcher

__all__ = ["CertificateProviderRef", "DownstreamTls", "SanMatcher", "SanType", "UpstreamTls"]


@attrs.frozen
class CertificateProviderRef:
    """A certificate provider instance by its bootstrap name (`instance`), and the
    certificate within it (`certificate`, which the `file_watcher` plugin ignores)."""

    instance: str
    certificate: str = ""


class SanType(enum.Enum):
    """Which subject alternative names a `SanMatcher` is tried against."""

    ANY = "any"  # `match_subject_alt_names`: DNS, URI, email and IP SANs alike
    DNS = "DNS"
    URI = "URI"
    EMAIL = "email"
    IP_ADDRESS = "IP Address"


@attrs.frozen
class SanMatcher:
    """One accepted subject alternative name: `matcher` against the SANs of `san_type`."""

    matcher: StringMatcher
    san_type: SanType = SanType.ANY


@attrs.frozen
class UpstreamTls:
    """TLS to a cluster's endpoints.

    **Parameters**

    * `roots` - the instance whose CA certificates verify the endpoint (A29 requires one).
    * `identity` - the instance whose certificate the client presents (mTLS), or `None`
      for TLS without a client certificate.
    * `san_matchers` - the endpoint's certificate must carry a SAN one of them matches;
      empty accepts any certificate the roots verify (A29). For a mesh peer these are its
      SPIFFE IDs (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
    * `sni` - the server name to send, empty for none.
    """

    roots: CertificateProviderRef
    identity: CertificateProviderRef | None = None
    san_matchers: tuple[SanMatcher, ...] = ()
    sni: str = ""

    def providers(self) -> tuple[str, ...]:
        """The provider instance names this needs."""
        names = [self.roots.instance]
        if self.identity is not None:
            names.append(self.identity.instance)
        return tuple(dict.fromkeys(names))


@attrs.frozen
class DownstreamTls:
    """TLS on a server filter chain.

    **Parameters**

    * `identity` - the instance whose certificate the server presents (required).
    * `roots` - the instance whose CA certificates verify a client certificate; with one,
      the server asks for a client certificate (A29), `None` means it does not.
    * `require_client_certificate` - refuse a client that presents none (mTLS); needs
      `roots`.
    """

    identity: CertificateProviderRef
    roots: CertificateProviderRef | None = None
    require_client_certificate: bool = False

    def providers(self) -> tuple[str, ...]:
        """The provider instance names this needs."""
        names = [self.identity.instance]
        if self.roots is not None:
            names.append(self.roots.instance)
        return tuple(dict.fromkeys(names))
