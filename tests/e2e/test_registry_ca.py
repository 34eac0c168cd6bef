"""The registry's mesh CA over its API, by attack: a real registry on loopback, real CSRs."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sail.errors import CertificateRefused, ConfigError
from sail.registry.file_store import FileStore
from sail.registry.remote import AdminClient, RegistryError, create_certificate
from sail.security.ca import CertificateAuthority
from sail.security.spiffe import SpiffeId
from tests.e2e.test_registry import TOKEN, RunningRegistry

pytestmark = pytest.mark.e2e

TD = "example.org"
REVIEWS = SpiffeId.workload(TD, "default", "reviews")


def csr(sans: list[x509.GeneralName] | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    running = RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain=TD)
    yield running
    running.stop()


def join_token(running: RunningRegistry, ttl: float | None = None) -> str:
    with running.admin() as admin:
        return admin.create_join_token("default", "reviews", ttl)


def code_of(exc: pytest.ExceptionInfo[RegistryError]) -> grpc.StatusCode:
    return exc.value.code


def test_a_join_token_gets_a_certificate_for_its_identity(registry: RunningRegistry) -> None:
    chain = create_certificate(registry.address, join_token(registry), csr(), 600)
    ca = registry.registry.identity
    assert ca is not None
    assert ca.ca.identity_of(chain) == REVIEWS
    cert = x509.load_pem_x509_certificate(chain[0].encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(seconds=660)
    assert chain[-1] == ca.ca.trust_bundle  # leaf first, root last, as Istio's CA answers


def test_no_token_a_forged_token_and_the_admin_token_are_refused(
    registry: RunningRegistry,
) -> None:
    forged = join_token(registry)[:-4] + "AAAA"
    for credential, reason in [("", "missing 'authorization'"), (forged, "MAC does not verify"),
                               (TOKEN, "not a join token")]:
        with pytest.raises(RegistryError, match=reason) as info:
            create_certificate(registry.address, credential, csr())
        assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED


def test_an_expired_token_is_refused(registry: RunningRegistry) -> None:
    token = join_token(registry, ttl=1)
    time.sleep(1.2)
    with pytest.raises(RegistryError, match="expired") as info:
        create_certificate(registry.address, token, csr())
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED


def test_a_csr_for_another_identity_is_refused(registry: RunningRegistry) -> None:
    admin_id = x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/sa/admin")
    with pytest.raises(RegistryError, match=r"grant spiffe://example\.org/ns/default/sa/reviews") \
            as info:
        create_certificate(registry.address, join_token(registry), csr([admin_id]))
    assert code_of(info) == grpc.StatusCode.PERMISSION_DENIED


def test_a_join_token_opens_nothing_else(registry: RunningRegistry) -> None:
    token = join_token(registry)
    with AdminClient(registry.address, token) as impostor:
        with pytest.raises(RegistryError, match="wrong bearer token"):
            impostor.apply("evil.yaml", "")
        with pytest.raises(RegistryError, match="wrong bearer token"):
            impostor.create_join_token("kube-system", "admin")


def test_making_a_token_needs_the_admin_token_and_a_valid_identity(
    registry: RunningRegistry,
) -> None:
    with AdminClient(registry.address, None) as anonymous:
        with pytest.raises(RegistryError, match="missing 'authorization'"):
            anonymous.create_join_token("default", "reviews")
    with registry.admin() as admin:
        with pytest.raises(ConfigError, match="only letters"):
            admin.create_join_token("default", "rev iews")
        with pytest.raises(ConfigError, match="'ttl' must be a positive"):
            admin.create_join_token("default", "reviews", -5)


def test_a_bad_body_is_invalid_argument(registry: RunningRegistry) -> None:
    with pytest.raises(ConfigError, match="'csr' must be a PEM"):
        create_certificate(registry.address, join_token(registry), "")
    with pytest.raises(RegistryError, match="not a PEM certificate signing request") as info:
        create_certificate(registry.address, join_token(registry), "-----BEGIN nothing")
    assert code_of(info) == grpc.StatusCode.PERMISSION_DENIED


def test_a_registry_without_a_ca_says_so(tmp_path: Path) -> None:
    running = RunningRegistry(store=FileStore(tmp_path / "plain"))
    try:
        with running.admin() as admin, pytest.raises(RegistryError, match="runs no CA"):
            admin.create_join_token("default", "reviews")
        with pytest.raises(RegistryError, match="runs no CA") as info:
            create_certificate(running.address, "whatever", csr())
        assert code_of(info) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        running.stop()


def test_the_ca_and_its_tokens_survive_a_restart(tmp_path: Path) -> None:
    first = RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain=TD)
    try:
        assert first.registry.identity is not None
        bundle = first.registry.identity.ca.trust_bundle
        token = join_token(first)
        port = first.port
    finally:
        first.stop()
    again = RunningRegistry(port, store=FileStore(tmp_path / "state"), trust_domain=TD)
    try:
        assert again.registry.identity is not None
        assert again.registry.identity.ca.trust_bundle == bundle
        chain = create_certificate(again.address, token, csr())  # the secret survived too
        assert CertificateAuthority.from_pem(
            TD, *(p.encode() for p in again.registry.identity.ca.to_pem())
        ).identity_of(chain) == REVIEWS
    finally:
        again.stop()
    with pytest.raises(CertificateRefused, match=r"holds the CA of trust domain 'example\.org'"):
        RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain="other.org")


def test_a_ca_from_files(tmp_path: Path) -> None:
    company = CertificateAuthority.generate(TD)
    certs, key = company.to_pem()
    (tmp_path / "ca.pem").write_text(certs)
    (tmp_path / "ca.key").write_text(key)
    running = RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain=TD,
                              ca_cert=tmp_path / "ca.pem", ca_key=tmp_path / "ca.key")
    try:
        chain = create_certificate(running.address, join_token(running), csr())
        assert company.identity_of(chain) == REVIEWS
    finally:
        running.stop()
