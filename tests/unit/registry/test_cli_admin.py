"""`sail apply`, `sail delete` and `sail status` against a running registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import sail
from sail.cli.main import main
from sail.model import HealthStatus
from tests.helpers import wait_until
from tests.unit.registry.test_registry_server import REVIEWS, Running, on_loop, run

CONFIG = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
"""


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running(registration_grace=0, token="cli-token")
    on_loop(lambda: r.registry.store.put_workload(REVIEWS, HealthStatus.HEALTHY, 30))
    try:
        yield r
    finally:
        run(r.registry.stop(0))


def cli(running: Running, *args: str) -> int:
    return main([*args, "--registry", running.address, "--token", "cli-token"])


def test_apply_status_delete(
    running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "reviews.yaml"
    path.write_text(CONFIG)
    assert cli(running, "apply", "-f", str(path)) == 0
    assert str(path) in on_loop(running.registry.store.configs)
    with sail.Mesh.from_bootstrap(running.bootstrap("status-client")) as mesh:
        assert mesh.is_mesh_host("reviews", "reviews")
        wait_until(lambda: mesh.snapshot.clusters["outbound|9080||reviews"].lb_policy.name
                   == "random")

        def synced() -> bool:
            capsys.readouterr()
            assert cli(running, "status") == 0
            out = capsys.readouterr().out
            return any(
                "status-client" in line and "SYNCED" in line for line in out.splitlines()
            )

        wait_until(synced)
    assert cli(running, "delete", "-f", str(path)) == 0
    assert on_loop(running.registry.store.configs) == {}


def test_rejected_apply_and_bad_token_are_clear(
    running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace("host: reviews", "hostx: reviews"))
    assert cli(running, "apply", "-f", str(path)) == 1
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "hostx" in err
    code = main(["status", "--registry", running.address, "--token", "wrong"])
    assert code == 1
    assert "token" in capsys.readouterr().err.lower()
