"""The one exception tree of sail.

```
SailError
├── BootstrapError(SailError, ValueError)        bad or missing bootstrap: names file and field
├── ConfigError(SailError, ValueError)           a config resource that cannot be used
│   └── ResourceError(ConfigError)               one xDS resource failed validation (NACKed)
├── XdsError(SailError, ConnectionError)         the control plane cannot be reached
├── SecurityError(SailError)                     identity: an ID, certificate or token refused
│   ├── InvalidSpiffeId(SecurityError, ValueError)   not a SPIFFE ID: says which rule
│   ├── CertificateRefused(SecurityError)        the CA will not sign this CSR: says why
│   └── TokenError(SecurityError)                a join token is malformed, forged, expired
│                                                or for another identity
└── RequestError(SailError)                      a mesh request could not be sent
    ├── UnknownService(RequestError)             no listener for that host
    │   └── RejectedService(UnknownService)      its Listener or routes were rejected
    │                                            (NACKed): carries the reason
    ├── NoRoute(RequestError)                    no virtual host / route matched
    ├── NoHealthyUpstream(RequestError)          the chosen cluster has no endpoint to take it
    ├── UpstreamOverflow(RequestError)           a circuit breaker threshold is reached
    ├── DeadlineExceeded(RequestError)           the route timeout passed, over all attempts
    ├── NoCredentials(RequestError)              the cluster asks for TLS and the workload
    │                                            has no certificate for it: nothing sent
    ├── PeerIdentityMismatch(RequestError)       the endpoint's certificate is not an
    │                                            identity the cluster accepts
    └── UnsupportedRequest(RequestError)         sail will not send it as asked (https:// to
                                                 a plaintext cluster): never downgraded
```

On the HTTP path these errors reach callers as `httpx` exceptions so that an existing
`except httpx.HTTPError` keeps working: `sail.http` maps `NoHealthyUpstream` to
`sail.http.NoHealthyUpstreamError`, which subclasses both `httpx.ConnectError` and
`NoHealthyUpstream` (see `sail.http.errors`); `DeadlineExceeded` becomes an
`httpx.TimeoutException`.
"""

from __future__ import annotations

__all__ = [
    "BootstrapError",
    "CertificateRefused",
    "ConfigError",
    "DeadlineExceeded",
    "InvalidSpiffeId",
    "NoCredentials",
    "NoHealthyUpstream",
    "NoRoute",
    "PeerIdentityMismatch",
    "RejectedService",
    "RequestError",
    "ResourceError",
    "SailError",
    "SecurityError",
    "TokenError",
    "UnknownService",
    "UnsupportedRequest",
    "UpstreamOverflow",
    "XdsError",
]


class SailError(Exception):
    """Base class of every error sail raises."""


class BootstrapError(SailError, ValueError):
    """The bootstrap could not be found, parsed or validated.

    The message names where the bootstrap came from (a path or an environment variable)
    and the offending field, e.g. ``xds_servers[0].server_uri``.
    """


class ConfigError(SailError, ValueError):
    """A piece of mesh configuration cannot be used."""


class ResourceError(ConfigError):
    """One xDS resource failed validation.

    **Parameters**

    * `type_name` - the short resource type (``Listener``, ``Cluster``...).
    * `name` - the resource name, or ``""`` when it could not be read.
    * `reason` - what was wrong, naming the field.
    """

    def __init__(self, type_name: str, name: str, reason: str) -> None:
        self.type_name = type_name
        self.name = name
        self.reason = reason
        super().__init__(f"{type_name} {name!r}: {reason}")


class XdsError(SailError, ConnectionError):
    """The xDS control plane could not be reached or answered badly."""


class SecurityError(SailError):
    """An identity could not be established or was refused: a SPIFFE ID, a certificate, a
    certificate signing request or a join token. The message says which rule failed and
    never carries a secret (a token or a key)."""


class InvalidSpiffeId(SecurityError, ValueError):
    """Text that is not a SPIFFE ID (`spiffe://<trust-domain>/<path>`, as the SPIFFE ID
    standard defines it); the message names the rule it breaks."""


class CertificateRefused(SecurityError):
    """The mesh CA will not sign a certificate signing request: a bad signature or key, an
    identity the caller may not ask for, a lifetime out of bounds."""


class TokenError(SecurityError):
    """A join token that is malformed, not signed by this registry, expired, or granting
    another identity than the one asked for."""


class RequestError(SailError):
    """A request through the mesh could not be sent."""


class UnknownService(RequestError):
    """No listener exists for the requested service."""


class RejectedService(UnknownService):
    """A mesh service whose config the mesh rejected: its Listener, or the
    RouteConfiguration the Listener names, was NACKed (over ADS) or failed to decode (in
    local mode), and no earlier good version is held. The name is the mesh's, so the
    request is not sent to DNS or to a plain connection: it fails here, naming why.

    **Parameters**

    * `service` - the service (Listener) name, `host` or `host:port`.
    * `reason` - the rejection, as the NACK's `error_detail` gives it (the resource type
      and name, then the field and what is wrong with it).
    """

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"service {service!r}: its config was rejected: {reason}")


class NoRoute(RequestError):
    """The service's route configuration has no route for the request."""


class NoHealthyUpstream(RequestError):
    """The cluster chosen by the route has no endpoint that can take the request."""


class UpstreamOverflow(RequestError):
    """A circuit breaker threshold of the chosen cluster is reached: the request fails fast,
    sent nowhere (Envoy answers 503 with `x-envoy-overloaded: true`)."""


class DeadlineExceeded(RequestError):
    """The call's deadline (the route timeout, or what the caller had left) passed before a
    response arrived; no further attempt is made (Envoy answers 504)."""


class UnsupportedRequest(RequestError):
    """sail will not send this request as asked, and sends nothing rather than something
    weaker: an `https://` URL to a mesh service whose cluster has no TLS is refused
    instead of being sent in plaintext."""


class NoCredentials(RequestError):
    """The chosen cluster asks for TLS (or mTLS) and the workload has no usable
    credentials for it yet (no certificate, no CA certificates): nothing was sent, and
    nothing is sent in plaintext instead."""


class PeerIdentityMismatch(RequestError):
    """The endpoint's certificate verified against the mesh's roots, but it is not an
    identity the cluster accepts (its SAN matchers: for a mesh service, the SPIFFE IDs of
    its service accounts). The handshake was failed before any of the request was sent.

    **Attributes** (made by `of`)

    * `expected` - the identities the cluster accepts.
    * `presented` - the SANs of the certificate the endpoint presented.
    * `endpoint` - the endpoint's `host:port`.
    """

    expected = presented = endpoint = ""

    @classmethod
    def of(cls, expected: str, presented: str, endpoint: str) -> PeerIdentityMismatch:
        error = cls(f"endpoint {endpoint}: presented {presented}, expected {expected}")
        error.expected, error.presented, error.endpoint = expected, presented, endpoint
        return error
