"""The mesh CA: signs short-lived X.509 workload certificates for SPIFFE identities.

```python
ca = CertificateAuthority.generate("example.org")            # a new root
chain = ca.sign(csr_pem, SpiffeId.workload("example.org", "default", "reviews"), 86400)
ca.identity_of(chain)                                         # the SPIFFE ID it vouches for
```

A workload makes its own key and sends a certificate signing request (CSR); the CA never
sees a private key but its own. What the CA signs, and what it refuses
(`CertificateRefused`, naming the rule):

* The CSR must be PEM, its signature valid (the caller holds the key), its key EC P-256 or
  P-384, RSA of at least 2048 bits, or Ed25519.
* The identity is decided by the caller's credentials (a join token, or the certificate it
  renews), never by the CSR: a CSR may name no SAN, or exactly that identity as its one URI
  SAN; any other SAN (another SPIFFE ID, a DNS name, an IP) is refused. The identity must be
  in the CA's trust domain.
* The lifetime is positive and at most `max_lifetime` (default 90 days, Istio's
  `MAX_WORKLOAD_CERT_TTL`); it is cut to the CA certificate's own expiry.

The certificate: an empty subject and the SPIFFE ID as its only URI SAN, critical (RFC 5280
asks for that when the subject is empty; Istio's CA does the same), with the identity's DNS
name (`SpiffeId.dns_name`, `reviews.default.sa.example.org`) as a DNS SAN beside it for
peers that can check a hostname only (grpcio's channels), `CA:FALSE`, key usage
digital signature and key encipherment, extended key usage server and client auth, a random
128-bit serial, valid from one minute before issue (peers' clocks may lag). The chain
returned is leaf first, then the CA certificate and any certificates above it (Istio's
`cert_chain` order), so a peer that trusts the root verifies it.

The root: `generate` makes an EC P-256 key and a self-signed CA certificate valid for ten
years. For production, give `from_pem` an intermediate signed by the company's own root,
with the chain above it: workloads then trust the company root (`trust_bundle`).
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sail.errors import CertificateRefused, InvalidSpiffeId
from sail.security.spiffe import SpiffeId, check_trust_domain

__all__ = ["DEFAULT_MAX_LIFETIME", "CertificateAuthority"]

DEFAULT_MAX_LIFETIME = 90 * 24 * 3600.0
"""The longest workload certificate the CA signs unless told otherwise (Istio's default
`MAX_WORKLOAD_CERT_TTL`, 90 days)."""

ROOT_LIFETIME = 10 * 365 * 24 * 3600.0
BACKDATE = 60.0  # seconds a certificate is valid before it is issued, for skewed clocks
_MAX_CSR = 64 * 1024

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _hash_for(key: object) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _sans(identity: SpiffeId) -> list[x509.GeneralName]:
    """The SPIFFE ID, and its DNS name when it has one (`SpiffeId.dns_name`)."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(identity))]
    if identity.dns_name is not None:
        sans.append(x509.DNSName(identity.dns_name))
    return sans


def _check_key(key: object) -> None:
    """A workload key the CA signs for: EC P-256/P-384, RSA ≥ 2048, Ed25519."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CertificateRefused(f"CSR: EC curve {key.curve.name} is not P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CertificateRefused(f"CSR: an RSA key of {key.key_size} bits is under 2048")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateRefused(f"CSR: a {type(key).__name__} is not a key the CA signs for")


def _load_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem) if pem.strip() else []
    except ValueError as exc:
        raise CertificateRefused(f"{what}: not PEM certificates: {exc}") from None


class CertificateAuthority:
    """Signs workload certificates of one trust domain (see the module docstring).

    **Parameters**

    * `trust_domain` - the identities it vouches for are `spiffe://<trust_domain>/...`.
    * `cert`, `key` - the CA certificate and its private key.
    * `chain` - the certificates above `cert`, nearest first, ending with the root (empty
      when `cert` is the root).
    * `max_lifetime` - the longest certificate it signs, in seconds.
    """

    def __init__(
        self,
        trust_domain: str,
        cert: x509.Certificate,
        key: CaKey,
        chain: Sequence[x509.Certificate] = (),
        *,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> None:
        try:
            self.trust_domain = check_trust_domain(trust_domain)
        except InvalidSpiffeId as exc:
            raise CertificateRefused(f"trust domain: {exc}") from None
        self.cert = cert
        self.key = key
        self.chain = tuple(chain)
        self.max_lifetime = max_lifetime
        self._check()
        self._chain_pem = [_pem(c) for c in (cert, *self.chain)]
        self._verifier_store = Store([self.root])

    def _check(self) -> None:
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise CertificateRefused("CA certificate: no basicConstraints CA:TRUE") from None
        if not constraints.value.ca:
            raise CertificateRefused("CA certificate: basicConstraints is CA:FALSE")
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ours = self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if public != ours:
            raise CertificateRefused("CA key: it is not the key of the CA certificate")
        below = self.cert
        for above in self.chain:
            try:
                below.verify_directly_issued_by(above)
            except (ValueError, TypeError, InvalidSignature):
                raise CertificateRefused(
                    f"CA chain: {above.subject.rfc4514_string()!r} did not issue "
                    f"{below.subject.rfc4514_string()!r}"
                ) from None
            below = above

    # -- making and keeping one -----------------------------------------------------------

    @classmethod
    def generate(
        cls, trust_domain: str, *, now: float | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> CertificateAuthority:
        """A new self-signed root for `trust_domain`: EC P-256, valid for ten years."""
        check_trust_domain(trust_domain)
        issued = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sail mesh root CA {trust_domain}"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(issued - BACKDATE))
            .not_valid_after(_utc(issued + ROOT_LIFETIME))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(SpiffeId(trust_domain)))]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, cert, key, max_lifetime=max_lifetime)

    @classmethod
    def from_pem(
        cls, trust_domain: str, cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b"",
        *, max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> CertificateAuthority:
        """A CA from PEM: its certificate (the first in `cert_pem`; any after it are taken
        as the chain above it), its unencrypted private key, and optionally the chain above
        it up to the root. `CertificateRefused` names what does not fit."""
        certs = _load_chain(cert_pem, "CA certificate") + _load_chain(chain_pem, "CA chain")
        if not certs:
            raise CertificateRefused("CA certificate: no certificate in the PEM")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateRefused(f"CA key: not an unencrypted PEM private key: {exc}") \
                from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                          | ed25519.Ed25519PrivateKey):
            raise CertificateRefused(f"CA key: a {type(key).__name__} cannot sign")
        return cls(trust_domain, certs[0], key, certs[1:], max_lifetime=max_lifetime)

    def to_pem(self) -> tuple[str, str]:
        """`(certificates, key)` as PEM: the CA certificate then the chain above it, and the
        private key, unencrypted (keep it where only the registry can read it)."""
        key = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return "".join(self._chain_pem), key

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor: the last certificate of the chain (the CA's own when it is
        the root)."""
        return self.chain[-1] if self.chain else self.cert

    @property
    def trust_bundle(self) -> str:
        """What workloads trust, as PEM: the root (`root-cert.pem` in Istio's files)."""
        return _pem(self.root)

    # -- signing --------------------------------------------------------------------------

    def sign(
        self, csr_pem: bytes | str, identity: SpiffeId, lifetime: float,
        *, now: float | None = None,
    ) -> list[str]:
        """Sign `csr_pem` for `identity`: the chain as PEM strings, leaf first. The
        identity comes from the caller's credentials; see the module docstring for what is
        refused (`CertificateRefused`)."""
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        if len(data) > _MAX_CSR:
            raise CertificateRefused(f"CSR: over {_MAX_CSR} bytes")
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError as exc:
            raise CertificateRefused(f"CSR: not a PEM certificate signing request: {exc}") \
                from None
        if not csr.is_signature_valid:
            raise CertificateRefused("CSR: its signature does not verify (who sent it does "
                                     "not hold the key)")
        try:
            public = csr.public_key()
        except ValueError as exc:
            raise CertificateRefused(f"CSR: unusable public key: {exc}") from None
        _check_key(public)
        if identity.trust_domain != self.trust_domain:
            raise CertificateRefused(
                f"{identity} is not in this CA's trust domain {self.trust_domain!r}")
        self._check_requested(csr, identity)
        if not 0 < lifetime <= self.max_lifetime:
            raise CertificateRefused(
                f"validity_duration: {lifetime:g} s is not in (0, {self.max_lifetime:g}] s")
        issued = time.time() if now is None else now
        not_after = min(_utc(issued + lifetime), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(_utc(issued - BACKDATE))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(_sans(identity)), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.cert.public_key()), critical=False)  # type: ignore[arg-type]
        )
        leaf = builder.sign(self.key, _hash_for(self.key))
        return [_pem(leaf), *self._chain_pem]

    def renew(
        self, csr_pem: bytes | str, current_chain: Sequence[str] | str | bytes,
        lifetime: float, *, now: float | None = None,
    ) -> list[str]:
        """Sign `csr_pem` again for the identity of `current_chain`, a certificate this CA
        issued that is valid at `now`: a renewal needs no join token. The CSR must be for
        the key of that certificate, so that its signature proves that the caller holds the
        key (EST's re-enrollment, RFC 7030 4.2.2), whoever else saw the certificate.
        `CertificateRefused` names what fails."""
        identity = self.identity_of(current_chain, now=now)
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            asked = x509.load_pem_x509_csr(data).public_key()
        except ValueError as exc:
            raise CertificateRefused(f"CSR: not a PEM certificate signing request: {exc}") \
                from None
        text = current_chain if isinstance(current_chain, str | bytes) else "".join(current_chain)
        leaf = _load_chain(text.encode() if isinstance(text, str) else text, "certificate")[0]
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if asked.public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
            raise CertificateRefused(
                "CSR: a renewal must be for the key of the certificate it renews (its "
                "signature is the proof that the caller holds that key)")
        return self.sign(data, identity, lifetime, now=now)

    @staticmethod
    def _check_requested(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return
        except ValueError as exc:
            raise CertificateRefused(f"CSR: unreadable extensions: {exc}") from None
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        others = [n for n in sans if not isinstance(n, x509.UniformResourceIdentifier)]
        if others or len(uris) > 1 or (uris and uris[0] != str(identity)):
            asked = ", ".join(str(getattr(n, "value", n)) for n in sans)
            raise CertificateRefused(
                f"CSR: asks for {asked}, and the credentials presented grant {identity} only")

    # -- checking what it issued ----------------------------------------------------------

    def identity_of(self, chain_pem: Sequence[str] | str | bytes, *, now: float | None = None
                    ) -> SpiffeId:
        """The SPIFFE ID a certificate this CA issued vouches for (its chain leaf first, as
        `sign` returns it or as a TLS peer presents it), after checking that it chains to
        this CA's root, is valid at `now` and is a client certificate. `CertificateRefused`
        says why not."""
        if isinstance(chain_pem, str | bytes):
            text = chain_pem.encode() if isinstance(chain_pem, str) else chain_pem
        else:
            text = "".join(chain_pem).encode()
        certs = _load_chain(text, "certificate")
        if not certs:
            raise CertificateRefused("certificate: none presented")
        leaf, intermediates = certs[0], certs[1:]
        at = _utc(time.time() if now is None else now)
        verifier = PolicyBuilder().store(self._verifier_store).time(at).build_client_verifier()
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise CertificateRefused(f"certificate: not issued by this mesh's CA, or not "
                                     f"valid now: {exc}") from None
        return spiffe_id_of(leaf)


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a workload certificate: its one URI SAN (A87 and Istio refuse a
    leaf with more than one)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        raise CertificateRefused("certificate: no subjectAltName, so no SPIFFE ID") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertificateRefused(
            f"certificate: {len(uris)} URI SANs; a workload certificate has exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise CertificateRefused(f"certificate: its URI SAN is not a SPIFFE ID: {exc}") \
            from None
