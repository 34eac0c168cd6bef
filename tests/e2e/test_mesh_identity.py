"""`mesh.identity`: a certificate from the registry's CA for a join token, or from files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import sail
from sail.bootstrap import parse_bootstrap
from sail.registry.file_store import FileStore
from sail.security.ca import CertificateAuthority
from sail.security.enroll import Enrollment, write_files
from sail.security.workload import WorkloadIdentity
from tests.e2e.test_registry import RunningRegistry
from tests.e2e.test_registry_ca import REVIEWS, TD, join_token
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def test_a_join_token_gives_the_mesh_its_identity(tmp_path: Path) -> None:
    running = RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain=TD)
    try:
        token = join_token(running)
        with sail.Mesh.from_bootstrap(running.bootstrap(), join_token=token) as mesh:
            identity = mesh.wait_identity(20)
            assert identity is not None
            assert identity.spiffe_id == str(REVIEWS) and identity.source == "mesh CA"
            assert identity.not_after > time.time() + 23 * 3600  # the CA's 24 h default
        with sail.Mesh.from_bootstrap(running.bootstrap(), join_token=token[:-3] + "AAA") \
                as refused:
            assert refused.wait_identity(3) is None  # a forged token gets nothing
        with sail.Mesh.from_bootstrap(running.bootstrap()) as plain:
            assert plain.identity is None
    finally:
        running.stop()


def test_the_identity_is_renewed_at_half_life(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate(TD)
    asked: list[bool] = []

    def ask(csr: str, current: object) -> list[str]:
        asked.append(current is not None)
        if current is not None:
            return ca.renew(csr, current, 2)  # type: ignore[arg-type]
        return ca.sign(csr, REVIEWS, 2)

    keeper = WorkloadIdentity(Enrollment(ask))
    try:
        first = keeper.wait(10)
        assert first is not None
        wait_until(lambda: (keeper.identity and keeper.identity.not_after > first.not_after),
                   timeout=10)
        assert asked[0] is False and asked[1] is True  # a renewal, with the certificate
    finally:
        keeper.close()


def test_the_bootstrap_file_watcher_gives_the_mesh_its_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate(TD)
    enrollment = Enrollment(lambda csr, current: ca.sign(csr, REVIEWS, 3600))
    enrollment.obtain()
    write_files(tmp_path, enrollment)
    boot = parse_bootstrap({
        "xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "n"},
        "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": str(tmp_path / "cert-chain.pem"),
            "private_key_file": str(tmp_path / "key.pem"),
            "ca_certificate_file": str(tmp_path / "root-cert.pem")}}},
    })
    with sail.Mesh.from_bootstrap(boot) as mesh:
        identity = mesh.wait_identity(10)
        assert identity is not None and identity.spiffe_id == str(REVIEWS)
        assert identity.source == str(tmp_path / "cert-chain.pem")


FORKED = """
import os, sys, time
from sail.security.ca import CertificateAuthority
from sail.security.enroll import Enrollment
from sail.security.spiffe import SpiffeId
from sail.security.workload import WorkloadIdentity

ca = CertificateAuthority.generate("example.org")
me = SpiffeId.workload("example.org", "default", "reviews")
asks = []

def ask(csr, current):
    asks.append(os.getpid())
    return ca.renew(csr, current, 2) if current else ca.sign(csr, me, 2)

keeper = WorkloadIdentity(Enrollment(ask))
first = keeper.wait(10)
pid = os.fork()
if pid == 0:  # the child renews by itself: its thread started again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = keeper.identity
        if now and now.not_after > first.not_after and os.getpid() in asks:
            os._exit(0)
        time.sleep(0.05)
    os._exit(1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_renews_its_identity_itself() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_mesh_asks_for_the_lifetime_it_is_given_and_renews_at_half_life(
    tmp_path: Path,
) -> None:
    """Four-second certificates: the mesh renews each at about two seconds (the
    renewals stand on the certificate: `test_registry_ca.py`)."""
    running = RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain=TD)
    try:
        token = join_token(running, ttl=30)
        with sail.Mesh.from_bootstrap(running.bootstrap(), join_token=token,
                                      certificate_lifetime=4) as mesh:
            first = mesh.wait_identity(20)
            assert first is not None and first.not_after < time.time() + 5
            wait_until(lambda: (mesh.identity is not None
                                and mesh.identity.not_after > first.not_after), timeout=10)
            second = mesh.identity
            assert second is not None
            wait_until(lambda: (mesh.identity is not None
                                and mesh.identity.not_after > second.not_after), timeout=10)
    finally:
        running.stop()
