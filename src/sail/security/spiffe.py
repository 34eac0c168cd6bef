"""SPIFFE IDs: `spiffe://<trust-domain>/<path>`, and the mesh's workload identities.

A workload's identity is the SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<service
-account>`, Istio's form (`cluster.local` is Istio's default trust domain). It is the only
URI SAN of the workload's certificate, and what peers check after each handshake.

`SpiffeId.parse` applies the SPIFFE ID standard's rules (spiffe/spiffe `standards/SPIFFE-ID.md`):
the scheme is `spiffe`, lower case; the trust domain is 1-255 characters of `a-z 0-9 . - _`,
with no port or user info; the path is empty or `/`-separated segments of
`A-Z a-z 0-9 . - _`, none empty, `.` or `..`, and no trailing `/`; no query or fragment; at
most 2048 bytes in all. What breaks a rule is an `InvalidSpiffeId` naming it.
"""

from __future__ import annotations

import attrs

from sail.errors import InvalidSpiffeId

__all__ = ["SpiffeId"]

_SCHEME = "spiffe://"
_MAX_LENGTH = 2048
_MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_SEGMENT_CHARS = _TRUST_DOMAIN_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_trust_domain(name: str) -> str:
    """`name` if it is a valid trust domain; else `InvalidSpiffeId` naming the rule."""
    if not name:
        raise InvalidSpiffeId("the trust domain is empty")
    if len(name) > _MAX_TRUST_DOMAIN:
        raise InvalidSpiffeId(f"the trust domain is over {_MAX_TRUST_DOMAIN} characters")
    _only(name, _TRUST_DOMAIN_CHARS, f"the trust domain {name!r}",
          "lower-case letters, digits, '.', '-' and '_' are allowed (no port, no user info)")
    return name


def _only(text: str, allowed: frozenset[str], what: str, rule: str) -> None:
    bad = "".join(sorted(set(text) - allowed))
    if bad:
        raise InvalidSpiffeId(f"{what} has {bad!r}: only {rule}")


def _check_segment(segment: str, where: str) -> None:
    if not segment:
        raise InvalidSpiffeId(f"{where}: the path has an empty segment (or ends in '/')")
    if segment in (".", ".."):
        raise InvalidSpiffeId(f"{where}: the path has a {segment!r} segment")
    _only(segment, _SEGMENT_CHARS, f"{where}: the path segment {segment!r}",
          "letters, digits, '.', '-' and '_' are allowed")


@attrs.frozen
class SpiffeId:
    """A SPIFFE ID. `str()` gives its URI.

    **Parameters**

    * `trust_domain` - `example.org`.
    * `path` - `/ns/default/sa/reviews`, or `""` for the trust domain itself.
    """

    trust_domain: str
    path: str = ""

    def __attrs_post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        if self.path:
            if not self.path.startswith("/"):
                raise InvalidSpiffeId(f"the path {self.path!r} does not start with '/'")
            for segment in self.path[1:].split("/"):
                _check_segment(segment, _SCHEME + self.trust_domain + self.path)
        if len(str(self).encode()) > _MAX_LENGTH:
            raise InvalidSpiffeId(f"a SPIFFE ID is at most {_MAX_LENGTH} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """The SPIFFE ID `text` is, or `InvalidSpiffeId` naming the rule it breaks."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(f"a SPIFFE ID is text, not {type(text).__name__}")
        if len(text.encode("utf-8", "replace")) > _MAX_LENGTH:
            raise InvalidSpiffeId(f"a SPIFFE ID is at most {_MAX_LENGTH} bytes")
        if not text.startswith(_SCHEME):
            shown = text if len(text) <= 80 else text[:80] + "..."
            raise InvalidSpiffeId(f"{shown!r} does not start with {_SCHEME!r}")
        rest = text[len(_SCHEME):]
        for mark, what in (("?", "a query"), ("#", "a fragment")):
            if mark in rest:
                raise InvalidSpiffeId(f"{text!r} has {what}")
        domain, slash, path = rest.partition("/")
        return cls(domain, slash + path)

    @classmethod
    def workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """`spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`, Istio's form."""
        return cls(trust_domain, f"/ns/{namespace}/sa/{service_account}")

    @property
    def namespace(self) -> str | None:
        """The `<ns>` of an `/ns/<ns>/sa/<sa>` path; `None` for other paths."""
        parts = self.path.split("/")
        return parts[2] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None

    @property
    def service_account(self) -> str | None:
        """The `<sa>` of an `/ns/<ns>/sa/<sa>` path; `None` for other paths."""
        parts = self.path.split("/")
        return parts[4] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None

    @property
    def dns_name(self) -> str | None:
        """The DNS name that stands for a workload identity where only a hostname check
        is available: `<sa>.<ns>.sa.<trust-domain>` for `/ns/<ns>/sa/<sa>` (so
        `reviews.default.sa.example.org`). The mesh CA writes it as a DNS SAN beside the
        SPIFFE ID, and sail's gRPC channels check it, because grpcio's Python API has no
        certificate verifier but the hostname check (see `sail.grpc._tls`). The mapping is
        one to one: `None` when a segment has upper case (hostname checks ignore case) or
        a dot, or when the name would not be a DNS name (a label over 63, the whole over
        253 characters); such an identity has no DNS name."""
        namespace, account = self.namespace, self.service_account
        if namespace is None or account is None:
            return None
        labels = (account, namespace, "sa", *self.trust_domain.split("."))
        name = ".".join(labels)
        if (len(name) > 253 or any(not 0 < len(label) <= 63 for label in labels)
                or "." in account + namespace or name != name.lower()):
            return None
        return name

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"
