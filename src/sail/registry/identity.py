"""The registry's identity service: its mesh CA and the join tokens it grants.

`sail registry --trust-domain example.org` runs it. At start the registry takes its CA:

* given (`--ca-cert FILE --ca-key FILE`): an intermediate under a company root, with the
  chain above it after it in the certificate file (the production setup); or
* from its store: the first registry to start on a store generates a root and stores it
  with `Store.create_value`, and every later start, or replica on the same etcd, loads
  that one (so a restart keeps the mesh's trust, and replicas share it). With
  `--store memory` the CA lives as long as the process.

A second value, the join-token secret, is made the same way. A store that holds a CA for
another trust domain is refused at start (`CertificateRefused`): changing the trust
domain re-keys the whole mesh, which is a decision, not a flag change.

Calls (`sail.registry.api`): `CreateCertificate` signs a workload's CSR for the identity
its join token grants, or renews a certificate the CA issued (`current_chain`, the CSR for
the same key); `CreateJoinToken` (an operator call) makes a token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any

from sail.errors import CertificateRefused, InvalidSpiffeId
from sail.registry.store import Store
from sail.security.ca import DEFAULT_MAX_LIFETIME, CertificateAuthority
from sail.security.spiffe import SpiffeId
from sail.security.tokens import DEFAULT_TOKEN_LIFETIME, issue_token, new_secret, verify_token

__all__ = ["DEFAULT_CERT_LIFETIME", "MeshIdentity"]

log = logging.getLogger("sail.registry.identity")

DEFAULT_CERT_LIFETIME = 24 * 3600.0
"""A workload certificate's lifetime when the CSR asks for none (Istio's 24 h)."""

CA_VALUE = "ca"
TOKEN_SECRET_VALUE = "join-token-secret"


class MeshIdentity:
    """A registry's CA and join-token secret (see the module docstring).

    **Parameters**

    * `ca` - the CA that signs workload certificates.
    * `token_secret` - the key join tokens are MACed with.
    """

    def __init__(self, ca: CertificateAuthority, token_secret: bytes) -> None:
        self.ca = ca
        self._secret = token_secret

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    @classmethod
    async def open(
        cls, store: Store, trust_domain: str, *, ca_cert: Path | None = None,
        ca_key: Path | None = None, max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> MeshIdentity:
        """The CA given in files, or the store's (made there if it has none)."""
        if (ca_cert is None) != (ca_key is None):
            raise CertificateRefused("--ca-cert and --ca-key go together")
        if ca_cert is not None and ca_key is not None:
            try:
                cert_pem, key_pem = ca_cert.read_bytes(), ca_key.read_bytes()
            except OSError as exc:
                raise CertificateRefused(f"CA files: {exc}") from None
            ca = CertificateAuthority.from_pem(trust_domain, cert_pem, key_pem,
                                               max_lifetime=max_lifetime)
            log.info("mesh CA for %s from %s (%s)", trust_domain, ca_cert,
                     ca.cert.subject.rfc4514_string())
        else:
            ca = await _stored_ca(store, trust_domain, max_lifetime)
        secret_text = await store.create_value(
            TOKEN_SECRET_VALUE, base64.b64encode(new_secret()).decode())
        try:
            secret = base64.b64decode(secret_text, validate=True)
        except (binascii.Error, ValueError):
            raise CertificateRefused(
                f"the store's {TOKEN_SECRET_VALUE!r} is not base64") from None
        return cls(ca, secret)

    # -- the calls ------------------------------------------------------------------------

    def create_certificate(self, body: dict[str, Any], token: str | None) -> dict[str, Any]:
        """`CreateCertificate`: `{csr, validity_duration}` with a join token → `{cert_chain}`.
        Raises `TokenError` or `CertificateRefused` (the API answers UNAUTHENTICATED or
        PERMISSION_DENIED / INVALID_ARGUMENT) and `ValueError` for a malformed body."""
        csr, lifetime = _csr_and_lifetime(body)
        identity = verify_token(self._secret, token)
        chain = self.ca.sign(csr, identity, lifetime)
        log.info("signed a certificate for %s (%g s)", identity, lifetime)
        return {"cert_chain": chain}

    def renew_certificate(self, body: dict[str, Any]) -> dict[str, Any]:
        """`CreateCertificate` with `current_chain`: a renewal, for the identity of that
        certificate and the same key (`CertificateAuthority.renew`)."""
        csr, lifetime = _csr_and_lifetime(body)
        current = body.get("current_chain")
        if not isinstance(current, list) or not all(isinstance(c, str) for c in current):
            raise ValueError("'current_chain' must be a list of PEM certificates, leaf first")
        chain = self.ca.renew(csr, current, lifetime)
        log.info("renewed a certificate (%g s)", lifetime)
        return {"cert_chain": chain}

    def create_join_token(self, body: dict[str, Any]) -> dict[str, Any]:
        """`CreateJoinToken`: `{namespace, service_account, ttl}` → `{token, identity,
        expires_in}`."""
        namespace, account = body.get("namespace"), body.get("service_account")
        if not isinstance(namespace, str) or not isinstance(account, str):
            raise ValueError("'namespace' and 'service_account' must be strings")
        ttl = body.get("ttl", DEFAULT_TOKEN_LIFETIME)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise ValueError("'ttl' must be a positive number of seconds")
        try:
            identity = SpiffeId.workload(self.trust_domain, namespace, account)
        except InvalidSpiffeId as exc:
            raise ValueError(f"no identity for that: {exc}") from None
        token = issue_token(self._secret, identity, lifetime=float(ttl))
        log.info("made a join token for %s (%g s)", identity, float(ttl))
        return {"token": token, "identity": str(identity), "expires_in": float(ttl)}

    def check_token(self, token: str | None) -> SpiffeId:
        """The identity a join token grants (`TokenError` if none)."""
        return verify_token(self._secret, token)


def _csr_and_lifetime(body: dict[str, Any]) -> tuple[str, float]:
    csr = body.get("csr")
    if not isinstance(csr, str) or not csr:
        raise ValueError("'csr' must be a PEM certificate signing request")
    lifetime = body.get("validity_duration", 0)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
        raise ValueError("'validity_duration' must be a number of seconds")
    return csr, float(lifetime) or DEFAULT_CERT_LIFETIME


async def _stored_ca(store: Store, trust_domain: str, max_lifetime: float
                     ) -> CertificateAuthority:
    fresh = CertificateAuthority.generate(trust_domain, max_lifetime=max_lifetime)
    certs, key = fresh.to_pem()
    text = await store.create_value(CA_VALUE, json.dumps(
        {"trust_domain": trust_domain, "cert": certs, "key": key}))
    try:
        stored = json.loads(text)
        held, cert_pem, key_pem = stored["trust_domain"], stored["cert"], stored["key"]
    except (ValueError, TypeError, KeyError):
        raise CertificateRefused(f"the store's {CA_VALUE!r} value is unreadable") from None
    if held != trust_domain:
        raise CertificateRefused(
            f"the store holds the CA of trust domain {held!r}, not {trust_domain!r}: "
            "start with that trust domain (changing it re-keys the whole mesh)")
    if text != json.dumps({"trust_domain": trust_domain, "cert": certs, "key": key}):
        log.info("mesh CA for %s loaded from the store", trust_domain)
    else:
        log.info("mesh CA for %s generated and stored", trust_domain)
    return CertificateAuthority.from_pem(trust_domain, cert_pem.encode(), key_pem.encode(),
                                         max_lifetime=max_lifetime)

