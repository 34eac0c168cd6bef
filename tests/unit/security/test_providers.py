"""gRPC's `file_watcher` certificate provider: its config rules, loads and rotations."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sail.errors import BootstrapError, SecurityError
from sail.security.ca import CertificateAuthority
from sail.security.providers import FileWatcherProvider, file_watcher_from_config
from sail.security.spiffe import SpiffeId

TD = "example.org"
REVIEWS = SpiffeId.workload(TD, "default", "reviews")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD)


def issue(ca: CertificateAuthority, identity: SpiffeId = REVIEWS) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    chain = "".join(ca.sign(csr, identity, 3600)).encode()
    return chain, key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())


def files(tmp_path: Path, ca: CertificateAuthority) -> FileWatcherProvider:
    chain, key = issue(ca)
    (tmp_path / "cert-chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "root-cert.pem").write_text(ca.trust_bundle)
    return file_watcher_from_config("default", {
        "certificate_file": str(tmp_path / "cert-chain.pem"),
        "private_key_file": str(tmp_path / "key.pem"),
        "ca_certificate_file": str(tmp_path / "root-cert.pem"),
        "refresh_interval": "15s",
    })


@pytest.mark.parametrize(
    ("config", "reason"),
    [({"certificate_file": "c.pem"}, "go together"),
     ({"private_key_file": "k.pem", "ca_certificate_file": "r.pem"}, "go together"),
     ({}, "needs certificate_file"),
     ({"ca_certificate_file": "r.pem", "refresh_interval": 600}, "JSON duration"),
     ({"ca_certificate_file": "r.pem", "refresh_interval": "0s"}, "must be positive"),
     ({"ca_certificate_file": "r.pem", "refresh_intervall": "5s"}, "unknown field"),
     ({"ca_certificate_file": ""}, "expected a file path")],
)
def test_config_rules_are_grpcs(config: dict[str, object], reason: str) -> None:
    with pytest.raises(BootstrapError, match=reason) as info:
        file_watcher_from_config("default", config)
    assert "certificate_providers['default'].config" in str(info.value)


def test_a_load_gives_the_identity_the_key_and_the_roots(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    provider = files(tmp_path, ca)
    assert provider.refresh_interval == 15
    assert provider.refresh()
    creds = provider.current
    assert creds is not None and creds.identity == REVIEWS
    assert creds.roots == {"": ca.trust_bundle.encode()}
    assert creds.not_after is not None
    assert not provider.refresh()  # nothing changed


def test_a_rotation_is_taken_and_a_half_written_one_is_not(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    provider = files(tmp_path, ca)
    provider.refresh()
    first = provider.current
    chain, key = issue(ca)
    (tmp_path / "cert-chain.pem").write_bytes(chain)  # the key is still the old one
    assert not provider.refresh()
    assert provider.current is first  # the last good credentials keep serving
    (tmp_path / "key.pem").write_bytes(key)
    assert provider.refresh()
    assert provider.current is not None and provider.current.chain_pem == chain


def test_a_first_load_that_fails_raises_naming_the_file(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    provider = files(tmp_path, ca)
    (tmp_path / "key.pem").write_bytes(issue(ca)[1])
    with pytest.raises(SecurityError, match=r"key\.pem: not the key of the certificate"):
        provider.refresh()
    (tmp_path / "key.pem").unlink()
    with pytest.raises(SecurityError, match="No such file"):
        provider.refresh()


def test_a_certificate_without_a_spiffe_id_is_refused(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    provider = files(tmp_path, ca)
    (tmp_path / "cert-chain.pem").write_text(ca.trust_bundle)  # no URI SAN of a workload
    (tmp_path / "key.pem").write_text(ca.to_pem()[1])
    with pytest.raises(SecurityError, match=r"cert-chain\.pem: its first certificate is a CA"):
        provider.refresh()


def _bundle(ca: CertificateAuthority) -> dict[str, object]:
    der = ca.root.public_bytes(serialization.Encoding.DER)
    return {"keys": [{"use": "x509-svid", "kty": "EC",
                      "x5c": [base64.b64encode(der).decode()]}]}


def test_a87_trust_bundle_map(tmp_path: Path, ca: CertificateAuthority) -> None:
    other = CertificateAuthority.generate("partner.org")
    path = tmp_path / "bundles.json"
    path.write_text(json.dumps({"trust_domains": {TD: _bundle(ca), "partner.org": _bundle(other)}}))
    provider = file_watcher_from_config("default", {
        "spiffe_trust_bundle_map_file": str(path), "ca_certificate_file": "/ignored.pem"})
    assert provider.refresh() and provider.current is not None
    assert provider.current.roots == {TD: ca.trust_bundle.encode(),
                                      "partner.org": other.trust_bundle.encode()}
    # one bad entry invalidates the whole map (A87)
    path.write_text(json.dumps({"trust_domains": {TD: _bundle(ca),
                                                  "Bad Domain": _bundle(other)}}))
    with pytest.raises(SecurityError, match="'Bad Domain'"):
        provider.load()
    path.write_text(json.dumps({"trust_domains": {TD: {"keys": [
        {"use": "x509-svid", "x5c": ["not base64!"]}]}}}))
    with pytest.raises(SecurityError, match=r"trust domain 'example\.org'"):
        provider.load()


def test_the_bootstrap_checks_file_watcher_configs_at_parse() -> None:
    from sail.bootstrap import parse_bootstrap

    boot = {"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
            "certificate_providers": {"default": {"plugin_name": "file_watcher",
                                                  "config": {"certificate_file": "c.pem"}}}}
    with pytest.raises(BootstrapError, match=r"^b\.json: certificate_providers\['default'\]"
                                             r"\.config: certificate_file and private_key_file"):
        parse_bootstrap(json.dumps(boot), source="b.json")
    boot["certificate_providers"]["default"]["config"]["private_key_file"] = "k.pem"  # type: ignore[index]
    assert parse_bootstrap(json.dumps(boot), source="b.json").certificate_providers
