"""The mesh CA, by attack: what it signs, and each thing it must refuse."""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sail.errors import CertificateRefused
from sail.security.ca import BACKDATE, CertificateAuthority
from sail.security.spiffe import SpiffeId

TD = "example.org"
REVIEWS = SpiffeId.workload(TD, "default", "reviews")
NOW = time.time()  # at import: the CA below is made valid from then (it backdates a minute)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD, now=NOW)


def csr(key: object = None, sans: list[x509.GeneralName] | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def leaf(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


def test_a_signed_certificate_carries_the_identity_only(ca: CertificateAuthority) -> None:
    chain = ca.sign(csr(), REVIEWS, 3600, now=NOW)
    assert len(chain) == 2 and chain[1] == ca.trust_bundle  # leaf first, then the root
    cert = leaf(chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # the SPIFFE ID, and its DNS name for hostname-only checks (grpcio's channels)
    assert san.critical and list(san.value) == [
        x509.UniformResourceIdentifier(str(REVIEWS)), x509.DNSName(REVIEWS.dns_name or ""),
    ]
    assert cert.subject == x509.Name([])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(seconds=3600 + BACKDATE)
    cert.verify_directly_issued_by(ca.cert)
    assert ca.identity_of(chain, now=NOW) == REVIEWS


def test_a_csr_naming_its_own_identity_is_signed(ca: CertificateAuthority) -> None:
    chain = ca.sign(csr(sans=[x509.UniformResourceIdentifier(str(REVIEWS))]), REVIEWS, 60)
    assert ca.identity_of(chain) == REVIEWS


@pytest.mark.parametrize(
    ("sans", "reason"),
    [
        ([x509.UniformResourceIdentifier("spiffe://example.org/ns/default/sa/admin")],
         "asks for spiffe://example.org/ns/default/sa/admin"),
        ([x509.UniformResourceIdentifier(str(REVIEWS)), x509.DNSName("reviews")],
         "grant spiffe://example.org/ns/default/sa/reviews only"),
        ([x509.DNSName("bank.example.com")], "asks for bank.example.com"),
        ([x509.UniformResourceIdentifier(str(REVIEWS)),
          x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/sa/root")],
         "asks for"),
    ],
)
def test_a_csr_for_another_identity_is_refused(
    ca: CertificateAuthority, sans: list[x509.GeneralName], reason: str
) -> None:
    with pytest.raises(CertificateRefused, match=reason):
        ca.sign(csr(sans=sans), REVIEWS, 3600)


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: CertificateAuthority) -> None:
    good = x509.load_pem_x509_csr(csr())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0xFF  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateRefused, match="signature does not verify"):
        ca.sign(forged, REVIEWS, 3600)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "not a PEM certificate signing request"),
     (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
      "not a PEM certificate signing request"),
     (b"x" * 70_000, "over 65536 bytes")],
)
def test_what_is_not_a_csr_is_refused(ca: CertificateAuthority, data: bytes, reason: str) -> None:
    with pytest.raises(CertificateRefused, match=reason):
        ca.sign(data, REVIEWS, 3600)


def test_a_weak_key_is_refused(ca: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(CertificateRefused, match="1024 bits is under 2048"):
        ca.sign(csr(weak), REVIEWS, 3600)
    with pytest.raises(CertificateRefused, match="secp521r1"):
        ca.sign(csr(ec.generate_private_key(ec.SECP521R1())), REVIEWS, 3600)


def test_another_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRefused, match="not in this CA's trust domain"):
        ca.sign(csr(), SpiffeId.workload("evil.org", "default", "reviews"), 3600)


@pytest.mark.parametrize("lifetime", [0, -1, 91 * 24 * 3600])
def test_a_lifetime_out_of_bounds_is_refused(ca: CertificateAuthority, lifetime: float) -> None:
    with pytest.raises(CertificateRefused, match="validity_duration"):
        ca.sign(csr(), REVIEWS, lifetime)


def test_a_certificate_never_outlives_its_ca() -> None:
    ca = CertificateAuthority.generate(TD, now=NOW - 10 * 365 * 24 * 3600 + 100)
    cert = leaf(ca.sign(csr(), REVIEWS, 24 * 3600, now=NOW))
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


# -- what the CA will not vouch for -----------------------------------------------------------


def test_a_certificate_from_another_ca_is_refused(ca: CertificateAuthority) -> None:
    foreign = CertificateAuthority.generate(TD)  # the same trust domain, another key
    chain = foreign.sign(csr(), REVIEWS, 3600)
    with pytest.raises(CertificateRefused, match="not issued by this mesh's CA"):
        ca.identity_of(chain)


def test_a_self_signed_leaf_is_refused(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reviews")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(datetime.datetime.now(datetime.UTC) - datetime.timedelta(1))
        .not_valid_after(datetime.datetime.now(datetime.UTC) + datetime.timedelta(1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(str(REVIEWS))]), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateRefused, match="not issued by this mesh's CA"):
        ca.identity_of(cert.public_bytes(serialization.Encoding.PEM))


def test_expired_and_not_yet_valid_certificates_are_refused(ca: CertificateAuthority) -> None:
    chain = ca.sign(csr(), REVIEWS, 60, now=NOW)
    assert ca.identity_of(chain, now=NOW + 59) == REVIEWS
    with pytest.raises(CertificateRefused, match="not valid now"):
        ca.identity_of(chain, now=NOW + 61)
    with pytest.raises(CertificateRefused, match="not valid now"):
        ca.identity_of(chain, now=NOW - BACKDATE - 1)


def test_nothing_presented_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRefused, match="none presented"):
        ca.identity_of([])
    with pytest.raises(CertificateRefused, match="not PEM"):
        ca.identity_of("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# -- keeping it and running under a company root ----------------------------------------------


def test_a_ca_survives_pem_and_keeps_verifying(ca: CertificateAuthority) -> None:
    chain = ca.sign(csr(), REVIEWS, 3600)
    certs, key = ca.to_pem()
    again = CertificateAuthority.from_pem(TD, certs.encode(), key.encode())
    assert again.trust_bundle == ca.trust_bundle
    assert again.identity_of(chain) == REVIEWS
    assert ca.identity_of(again.sign(csr(), REVIEWS, 3600)) == REVIEWS


def test_an_intermediate_under_a_company_root() -> None:
    company = CertificateAuthority.generate("corp.example")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh intermediate")])
    now = datetime.datetime.now(datetime.UTC)
    intermediate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(company.cert.subject)
        .public_key(key.public_key()).serial_number(9)
        .not_valid_before(now - datetime.timedelta(1)).not_valid_after(now + datetime.timedelta(30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            company.cert.public_key()), False)  # type: ignore[arg-type]
        .sign(company.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = intermediate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    mesh = CertificateAuthority.from_pem(TD, pem, key_pem, company.trust_bundle.encode())
    assert mesh.trust_bundle == company.trust_bundle  # workloads trust the company root
    chain = mesh.sign(csr(), REVIEWS, 3600)
    assert len(chain) == 3
    assert mesh.identity_of(chain) == REVIEWS
    with pytest.raises(CertificateRefused, match="not issued"):
        mesh.identity_of(chain[:1])  # without the intermediate nothing chains


def test_a_ca_that_does_not_fit_is_refused(ca: CertificateAuthority) -> None:
    certs, _ = ca.to_pem()
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(CertificateRefused, match="not the key of the CA certificate"):
        CertificateAuthority.from_pem(TD, certs.encode(), other_key)
    leaf_chain = ca.sign(csr(), REVIEWS, 3600)
    with pytest.raises(CertificateRefused, match="CA:FALSE"):
        CertificateAuthority.from_pem(TD, leaf_chain[0].encode(), other_key)
    with pytest.raises(CertificateRefused, match="not an unencrypted PEM private key"):
        CertificateAuthority.from_pem(TD, certs.encode(), b"garbage")
    unrelated = CertificateAuthority.generate(TD).trust_bundle.encode()
    _, key = ca.to_pem()
    with pytest.raises(CertificateRefused, match="did not issue"):
        CertificateAuthority.from_pem(TD, certs.encode(), key.encode(), unrelated)


# -- renewals ---------------------------------------------------------------------------------


def _keyed_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, csr(key)


def test_a_renewal_for_the_same_key_keeps_the_identity(ca: CertificateAuthority) -> None:
    key, request = _keyed_csr()
    chain = ca.sign(request, REVIEWS, 60, now=NOW)
    renewed = ca.renew(csr(key), chain, 3600, now=NOW + 30)
    assert ca.identity_of(renewed, now=NOW + 120) == REVIEWS


def test_a_renewal_for_another_key_is_refused(ca: CertificateAuthority) -> None:
    # Whoever saw a certificate (it travels in clear in every handshake) cannot renew it.
    _, request = _keyed_csr()
    chain = ca.sign(request, REVIEWS, 3600)
    with pytest.raises(CertificateRefused, match="for the key of the certificate it renews"):
        ca.renew(csr(), chain, 3600)


def test_renewing_what_this_ca_did_not_issue_or_what_expired_is_refused(
    ca: CertificateAuthority,
) -> None:
    key, request = _keyed_csr()
    foreign = CertificateAuthority.generate(TD).sign(request, REVIEWS, 3600)
    with pytest.raises(CertificateRefused, match="not issued by this mesh's CA"):
        ca.renew(csr(key), foreign, 3600)
    expired = ca.sign(request, REVIEWS, 60, now=NOW)
    with pytest.raises(CertificateRefused, match="not valid now"):
        ca.renew(csr(key), expired, 3600, now=NOW + 61)


def test_rotation_is_at_half_life_from_when_the_certificate_came(ca: CertificateAuthority) -> None:
    import time as clock

    from sail.security.enroll import Enrollment

    enrollment = Enrollment(lambda csr_pem, current: ca.sign(csr_pem, REVIEWS, 100),
                            rand=lambda: 0.5)
    enrollment.obtain()
    # the CA backdates notBefore by a minute; the renewal is still ~50 s away, not due now
    assert 45 < enrollment.renew_at() - clock.time() <= 50
