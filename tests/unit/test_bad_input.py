"""Bad config and bootstrap: a clear error or NACK, never a hang, never a traceback from
sail's own thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import sail
from sail import testing
from sail.http.errors import NoHealthyUpstreamError
from tests.helpers import wait_until


@pytest.fixture
def xds() -> Iterator[testing.XdsServer]:
    with testing.XdsServer(testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})) as s:
        yield s


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith("sail")]
    assert not crashes, [r.getMessage() for r in crashes]


def test_malformed_bootstrap_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text('{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}')
    with pytest.raises(sail.BootstrapError) as info:
        sail.Mesh.from_bootstrap(path)
    assert str(path) in str(info.value)
    assert "xds_servers[0].server_uri" in str(info.value)
    path.write_text("{not json")
    with pytest.raises(sail.BootstrapError, match="JSON"):
        sail.Mesh.from_bootstrap(path)


def test_unknown_lb_policy_is_nacked_and_last_good_kept(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        assert mesh.is_mesh_host("reviews", "reviews")
        xds.put(testing.eds_cluster("reviews-v1", lb_policy="CLUSTER_PROVIDED"))
        nack = wait_until(lambda: xds.nacks and xds.nacks[-1])
        assert "reviews-v1" in nack.error and "lb_policy" in nack.error
        assert mesh.snapshot.clusters["reviews-v1"].lb_policy.name == "round_robin"


def test_bad_regex_is_nacked_with_field(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        assert mesh.is_mesh_host("reviews", "reviews")
        bad = testing.route_config("reviews", [testing.route("reviews-v1")])
        bad["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "a(b"}}
        xds.put(bad)
        nack = wait_until(lambda: xds.nacks and xds.nacks[-1])
        assert "routes[0].match.safe_regex" in nack.error


def test_route_to_missing_cluster_fails_fast_with_names(xds: testing.XdsServer) -> None:
    xds.set(
        [
            testing.api_listener("reviews"),
            testing.route_config("reviews", [testing.route("reviews-v9")]),
        ]
    )
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh, mesh.client() as http:
        start = time.monotonic()
        with pytest.raises(NoHealthyUpstreamError) as info:
            http.get("http://reviews/")
        assert time.monotonic() - start < 5
    assert "reviews-v9" in str(info.value) and "'reviews'" in str(info.value)


def test_cluster_with_no_endpoints(xds: testing.XdsServer) -> None:
    xds.set(testing.service("reviews", {"reviews-v1": []}))
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh, mesh.client() as http:
        with pytest.raises(httpx.ConnectError) as info:
            http.get("http://reviews/")
    assert "reviews-v1" in str(info.value) and "no endpoints" in str(info.value)


def test_unknown_mesh_service_routes_nowhere_and_raises(xds: testing.XdsServer) -> None:
    xds.set(
        [
            testing.api_listener("reviews"),
            testing.route_config("reviews", [testing.route("reviews-v1", prefix="/only")]),
            *testing.service("other", {"reviews-v1": [("127.0.0.1", 1)]})[2:],
        ]
    )
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh, mesh.client() as http:
        with pytest.raises(sail.NoRoute) as info:
            http.get("http://reviews/elsewhere")
    assert "reviews" in str(info.value) and "/elsewhere" in str(info.value)
