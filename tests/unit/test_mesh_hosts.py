"""Which hosts go through the mesh, and that outside hosts never wait on discovery."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import sail
from sail import testing
from sail.xds.resolver import LDS


@pytest.fixture
def xds() -> Iterator[testing.XdsServer]:
    with testing.XdsServer(testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})) as s:
        yield s


def test_outside_hosts_are_decided_without_asking(xds: testing.XdsServer) -> None:
    # A server that never answers would make any lookup wait the full timeout.
    with sail.Mesh.from_bootstrap(xds.bootstrap(), discovery_timeout=30) as mesh:
        start = time.monotonic()
        for host in ("example.com", "127.0.0.1", "::1", "localhost", "api.github.io"):
            assert mesh.is_mesh_host(host, host) is False
        assert time.monotonic() - start < 0.1
        client = mesh._source.client  # type: ignore[attr-defined]
        time.sleep(0.1)
        assert client.status().names.get(LDS, frozenset()) == frozenset()


def test_single_label_names_are_asked_once(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap(), discovery_timeout=30) as mesh:
        start = time.monotonic()
        assert mesh.is_mesh_host("reviews", "reviews") is True
        assert mesh.is_mesh_host("nosuch", "nosuch") is False
        # Absent after one round trip, not after the 15 s does-not-exist timer.
        assert time.monotonic() - start < 5
        assert "nosuch" in mesh.snapshot.absent


def test_mesh_domains_make_dotted_names_candidates(xds: testing.XdsServer) -> None:
    xds.put(*testing.service("ratings.svc.local", {"ratings": [("127.0.0.1", 2)]}))
    with sail.Mesh.from_bootstrap(xds.bootstrap(), mesh_domains=["svc.local"]) as mesh:
        assert mesh.is_mesh_host("ratings.svc.local", "ratings.svc.local") is True
        assert mesh.is_mesh_host("ratings.svc.other", "ratings.svc.other") is False


def test_prefetched_services_do_not_wait(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap(), services=["reviews"]) as mesh:
        deadline = time.monotonic() + 5
        while "reviews" not in mesh._dataplane.state.services and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "reviews" in mesh._dataplane.state.services
