"""The control plane over mTLS (gRFC A65): a registry serving ADS and its API with a
server certificate for 127.0.0.1 and requiring client certificates of the mesh CA; sail's
xDS client and registrar dial it with the bootstrap's `channel_creds` `tls` files. A client
without a certificate, with one of another CA, or in plaintext gets nothing."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import sail
from sail.bootstrap import parse_bootstrap
from sail.errors import BootstrapError
from sail.registration import Workload
from sail.registry.remote import (
    AdminClient,
    RegistryError,
    RemoteRegistrar,
    create_certificate,
)
from sail.security.ca import CertificateAuthority
from sail.xds.credentials import channel_credentials
from tests.e2e.procs import ROOT
from tests.e2e.test_http_mtls import CLIENT, REVIEWS, TD, issue, provider
from tests.e2e.test_registry import TOKEN, RunningRegistry
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def serving_certificate(out: Path) -> tuple[Path, Path, Path]:
    """An operator's CA and a certificate it signs for 127.0.0.1: `(chain, key, CA)`."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control plane CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (out / "registry.pem").write_bytes(cert.public_bytes(pem))
    (out / "registry.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    return out / "registry.pem", out / "registry.key", out / "ca.pem"


@pytest.fixture
def mesh_ca() -> CertificateAuthority:
    return CertificateAuthority.generate(TD)


@pytest.fixture
def running(
    mesh_ca: CertificateAuthority, tmp_path: Path
) -> Iterator[tuple[RunningRegistry, Path]]:
    chain, key, server_ca = serving_certificate(tmp_path / "control-plane")
    client_ca = tmp_path / "mesh-root.pem"
    client_ca.write_text(mesh_ca.trust_bundle)
    registry = RunningRegistry(tls=(chain, key, client_ca))
    yield registry, server_ca
    registry.stop()


def tls_bootstrap(address: str, server_ca: Path, files: Path | None) -> sail.Bootstrap:
    config: dict[str, Any] = {"ca_certificate_file": str(server_ca)}
    if files is not None:
        config |= {"certificate_file": str(files / "cert-chain.pem"),
                   "private_key_file": str(files / "key.pem")}
    boot: dict[str, Any] = {
        "xds_servers": [{"server_uri": address,
                         "channel_creds": [{"type": "tls", "config": config}]}],
        "node": {"id": "productpage", "cluster": "tests"},
    }
    if files is not None:  # the workload's certificate serves its data plane too
        boot["certificate_providers"] = provider(files)
    return parse_bootstrap(boot)


def test_ads_and_registration_over_mtls(
    running: tuple[RunningRegistry, Path], mesh_ca: CertificateAuthority, tmp_path: Path
) -> None:
    registry, server_ca = running
    files = issue(mesh_ca, CLIENT, tmp_path / "client")
    boot = tls_bootstrap(registry.address, server_ca, files)
    registrar = RemoteRegistrar(registry.address, TOKEN,
                                credentials=channel_credentials(boot.xds_servers[0].creds))
    try:
        registrar.register(Workload("productpage", "127.0.0.1", 9080))
    finally:
        registrar.close()
    with sail.Mesh.from_bootstrap(boot, services=["productpage"]) as mesh:
        wait_until(lambda: mesh.status().connected, timeout=15)
        # the workload registered over mTLS came back over ADS: its cluster's endpoints
        wait_until(lambda: "type.googleapis.com/envoy.config.endpoint.v3."
                   "ClusterLoadAssignment" in mesh.status().versions, timeout=15)
        assert mesh.status().server == registry.address


def test_a_registration_over_mtls_is_bound_to_the_callers_certificate(
    running: tuple[RunningRegistry, Path], mesh_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The workload's identity is the one its certificate proves: unclaimed, it is set;
    claimed as another (to be expected by another service's clients), it is refused."""
    registry, server_ca = running
    files = issue(mesh_ca, CLIENT, tmp_path / "client")
    creds = channel_credentials(tls_bootstrap(registry.address, server_ca, files)
                                .xds_servers[0].creds)
    registrar = RemoteRegistrar(registry.address, TOKEN, credentials=creds)
    try:
        registrar.register(Workload("productpage", "127.0.0.1", 9080))
        stored = registry.call(registry.registry.store.workloads)
        assert [w.identity for w, _ in stored] == [str(CLIENT)]
        with pytest.raises(RegistryError, match="claims identity") as caught:
            registrar.register(Workload("reviews", "127.0.0.1", 9081, identity=str(REVIEWS)))
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
        # a service of another name takes it only if its WorkloadGroup names the account
        with pytest.raises(RegistryError, match="no WorkloadGroup default/reviews") as caught:
            registrar.register(Workload("reviews", "127.0.0.1", 9081))
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
        with AdminClient(registry.address, TOKEN, credentials=creds) as admin:
            admin.apply("group.yaml", WORKLOAD_GROUP.format(name="reviews", sa="productpage"))
            registry.call(lambda: None)  # the apply's rebuild has run
            registrar.register(Workload("reviews", "127.0.0.1", 9081))
            admin.apply("group2.yaml", WORKLOAD_GROUP.format(name="productpage", sa="ratings"))
            registry.call(lambda: None)
        with pytest.raises(RegistryError, match="takes service account 'ratings'"):
            registrar.register(Workload("productpage", "127.0.0.1", 9082))
    finally:
        registrar.close()


WORKLOAD_GROUP = """apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: {name}, namespace: default}}
spec:
  template: {{serviceAccount: {sa}}}
"""


@pytest.mark.parametrize("client", ["no certificate", "another CA", "plaintext"])
def test_a_client_the_registry_cannot_verify_gets_nothing(
    running: tuple[RunningRegistry, Path], tmp_path: Path, client: str
) -> None:
    registry, server_ca = running
    if client == "plaintext":
        boot = registry.bootstrap()
    else:
        files = None if client == "no certificate" else issue(
            CertificateAuthority.generate(TD), CLIENT, tmp_path / "forged")
        boot = tls_bootstrap(registry.address, server_ca, files)
    with sail.Mesh.from_bootstrap(boot, services=["reviews"]) as mesh:
        time.sleep(2)
        assert not mesh.status().connected
    # the registry's API (here CreateCertificate) refuses the connection as ADS does
    with pytest.raises(RegistryError) as caught:
        create_certificate(registry.address, "a token", "a CSR", timeout=3,
                           credentials=channel_credentials(boot.xds_servers[0].creds))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(("config", "error"), [
    ({"certificate_file": "/x.pem"}, "certificate_file and private_key_file go together"),
    ({"ca_certificate_file": ""}, "ca_certificate_file: expected a file path"),
    ({"ca_file": "/x.pem"}, "unknown field(s) ca_file"),
    ({"refresh_interval": 5}, "refresh_interval: expected a duration"),
])
def test_bad_tls_channel_creds_are_refused_naming_the_field(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(BootstrapError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_bootstrap({
            "xds_servers": [{"server_uri": "127.0.0.1:1",
                             "channel_creds": [{"type": "tls", "config": config}]}],
            "node": {"id": "n"},
        })


def enrolling_registry(
    mesh_ca: CertificateAuthority, tmp_path: Path
) -> tuple[RunningRegistry, Path]:
    """A registry whose CA is `mesh_ca`, requiring client certificates of it on its port,
    with an enrollment port beside it; and the CA file of its serving certificate."""
    chain, key, server_ca = serving_certificate(tmp_path / "control-plane")
    ca_cert, ca_key = tmp_path / "mesh-ca.pem", tmp_path / "mesh-ca.key"
    ca_cert.write_text(mesh_ca.trust_bundle)
    ca_key.write_bytes(mesh_ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    registry = RunningRegistry(trust_domain=TD, ca_cert=ca_cert, ca_key=ca_key,
                               tls=(chain, key, ca_cert), enroll_address="127.0.0.1:0")
    return registry, server_ca


def test_a_workload_enrolls_on_the_enrollment_port_then_joins_over_mtls(
    mesh_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A registry that requires client certificates, with an enrollment port beside it:
    `sail cert` gets a first certificate there with a join token (TLS, no client
    certificate), and a mesh whose A65 credentials are those files then gets its config
    over mTLS. The mTLS port itself gives nothing to a caller without a certificate."""
    registry, server_ca = enrolling_registry(mesh_ca, tmp_path)
    try:
        enroll = f"127.0.0.1:{registry.registry.enroll_port}"
        out = tmp_path / "certs"
        with AdminClient(registry.address, TOKEN, credentials=channel_credentials(
                tls_bootstrap(registry.address, server_ca, None).xds_servers[0].creds)) \
                as admin:
            assert not _answers(admin)  # the mTLS port: no certificate, no answer
        token = _join_token(registry, tmp_path, server_ca)
        done = subprocess.run(
            [sys.executable, "-m", "sail.cli.main", "cert", "--out", str(out), "--once",
             "--registry", enroll, "--ca-file", str(server_ca)],
            env={"SAIL_JOIN_TOKEN": token, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with sail.Mesh.from_bootstrap(tls_bootstrap(registry.address, server_ca, out),
                                      services=["reviews"]) as mesh:
            wait_until(lambda: mesh.status().connected, timeout=15)
            assert mesh.wait_identity(10) is not None
    finally:
        registry.stop()


def _answers(admin: AdminClient) -> bool:
    try:
        admin.status()
    except RegistryError:
        return False
    return True


def _join_token(registry: RunningRegistry, tmp_path: Path, server_ca: Path) -> str:
    """A join token, asked over mTLS with an operator's certificate of the mesh CA."""
    assert registry.registry.identity is not None
    operator = issue(registry.registry.identity.ca, CLIENT, tmp_path / "operator")
    creds = channel_credentials(tls_bootstrap(registry.address, server_ca, operator)
                                .xds_servers[0].creds)
    with AdminClient(registry.address, TOKEN, credentials=creds) as admin:
        return admin.create_join_token("default", "reviews")


def test_a_mesh_enrolls_with_a_join_token_then_dials_the_mtls_registry_with_it(
    mesh_ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No files: the mesh gets its first certificate at the enrollment port (join token,
    `ca_address`) and presents it, from memory, to the mTLS registry for its config (A65
    `tls` credentials without certificate files: the workload's own, when the registry
    asks for one)."""
    registry, server_ca = enrolling_registry(mesh_ca, tmp_path)
    try:
        token = _join_token(registry, tmp_path, server_ca)
        enroll = f"127.0.0.1:{registry.registry.enroll_port}"
        boot = tls_bootstrap(registry.address, server_ca, None)
        with sail.Mesh.from_bootstrap(boot, join_token=token, ca_address=enroll,
                                      services=["reviews"]) as mesh:
            identity = mesh.wait_identity(20)
            assert identity is not None and identity.source == "mesh CA"
            wait_until(lambda: mesh.status().connected, timeout=15)
        # its registrar too: the first calls (no certificate yet) fail the handshake, then
        # a new channel presents it, and the workload is registered bound to it
        monkeypatch.setenv("SAIL_REGISTRY_TOKEN", TOKEN)
        with sail.Mesh.from_bootstrap(boot, join_token=token, ca_address=enroll,
                                      register=True) as mesh:
            mesh.registrar.register(Workload("reviews", "127.0.0.1", 9080))
            assert mesh.wait_identity(20) is not None
            wait_until(lambda: [w.identity for w, _ in registry.call(
                registry.registry.store.workloads)] == [str(REVIEWS)], timeout=20)
        # without the certificate (no join token), the same bootstrap gets nothing
        with sail.Mesh.from_bootstrap(boot, services=["reviews"]) as anonymous:
            time.sleep(2)
            assert not anonymous.status().connected
    finally:
        registry.stop()
