"""`sail cert`: a real registry's CA, the command as a process, the files it keeps renewed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sail.registry.file_store import FileStore
from sail.security.providers import FileWatcherProvider, file_watcher_from_config
from tests.e2e.procs import start, stop
from tests.e2e.test_registry import RunningRegistry
from tests.e2e.test_registry_ca import REVIEWS, TD, join_token
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SAIL = [sys.executable, "-m", "sail.cli.main"]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    running = RunningRegistry(store=FileStore(tmp_path / "state"), trust_domain=TD)
    yield running
    running.stop()


def provider(out: Path) -> FileWatcherProvider:
    return file_watcher_from_config("default", {
        "certificate_file": str(out / "cert-chain.pem"), "private_key_file": str(out / "key.pem"),
        "ca_certificate_file": str(out / "root-cert.pem")})


def test_sail_cert_once_writes_istios_files(registry: RunningRegistry, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    done = subprocess.run(
        [*SAIL, "cert", "--out", str(out), "--once", "--registry", registry.address],
        env={"SAIL_JOIN_TOKEN": join_token(registry), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    files = provider(out)
    assert files.refresh()
    creds = files.current
    assert creds is not None and creds.identity == REVIEWS
    assert registry.registry.identity is not None
    assert creds.roots[""] == registry.registry.identity.ca.trust_bundle.encode()


def test_sail_cert_without_a_good_token_fails_and_writes_nothing(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    for env in ({}, {"SAIL_JOIN_TOKEN": "sailjt1.forged.token"}):
        done = subprocess.run(
            [*SAIL, "cert", "--out", str(out), "--once", "--registry", registry.address],
            env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert not out.exists()
    assert "join token" in done.stderr


def test_sail_cert_renews_at_half_life_with_the_certificate_as_credential(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    # The token lapses (5 s) before the first renewal (6 s after the first certificate,
    # half its 12 s life): renewals stand on the certificate alone.
    proc = start([*SAIL, "cert", "--out", str(out), "--lifetime", "12",
                  "--registry", registry.address],
                 env={"SAIL_JOIN_TOKEN": join_token(registry, ttl=5)})
    try:
        # cert-chain.pem is written last (after the root and the key)
        wait_until((out / "cert-chain.pem").exists, timeout=30)
        files = provider(out)
        wait_until(files.refresh, timeout=10)
        first = files.current
        assert first is not None and first.not_after is not None
        key = (out / "key.pem").read_bytes()
        for _ in range(2):  # two renewals
            wait_until(files.refresh, timeout=20)
        now = files.current
        assert now is not None and now.not_after is not None
        assert now.chain_pem != first.chain_pem and now.identity == REVIEWS
        assert now.not_after > first.not_after
        assert (out / "key.pem").read_bytes() == key  # the key never changes
        assert proc.poll() is None
    finally:
        stop(proc)
