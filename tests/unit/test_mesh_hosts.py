"""Which hosts go through the mesh, and that outside hosts never wait on discovery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import sail
from sail import testing
from sail.xds.resolver import LDS
from tests.helpers import wait_until


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
        time.sleep(0.1)
        # Nothing was asked: the stream was not even started.
        assert mesh.status().server is None
        assert LDS not in mesh.status().versions


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
        while "reviews" not in mesh.snapshot.routes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "reviews" in mesh.snapshot.routes


# -- a refused (NACKed) mesh name is never an outside host ----------------------------------


def _no_router(name: str) -> dict[str, Any]:
    """A Listener the codec NACKs: its HCM has no router filter."""
    listener = testing.api_listener(name)
    listener["api_listener"]["api_listener"]["http_filters"] = []
    return listener


def _bad_regex_routes(name: str) -> list[dict[str, Any]]:
    """A good Listener whose RouteConfiguration the codec NACKs (a regex RE2 rejects)."""
    resources = testing.service(name, {f"{name}-v1": [("127.0.0.1", 1)]})
    resources[1]["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "("}}
    return resources


class _Outside:
    """The transport for outside hosts, recording whatever reaches it."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return httpx.Response(200, text="outside")


def _rejected(mesh: sail.Mesh, name: str) -> sail.RejectedService | None:
    try:
        mesh.is_mesh_host(name.split(":", maxsplit=1)[0], name)
    except sail.RejectedService as exc:
        return exc
    return None


def test_nacked_listener_fails_http_with_its_reason_and_never_goes_outside() -> None:
    with testing.XdsServer([_no_router("reviews")]) as xds, sail.Mesh.from_bootstrap(
        xds.bootstrap()
    ) as mesh:
        with pytest.raises(sail.RejectedService) as raised:
            mesh.is_mesh_host("reviews", "reviews")
        assert raised.value.service == "reviews"
        assert "router filter" in raised.value.reason
        assert raised.value.reason == wait_until(lambda: xds.nacks)[0].error  # the NACK's

        outside = _Outside()
        with mesh.client(transport=httpx.MockTransport(outside)) as http:
            for _ in range(2):  # the first request and a later one (the verdict is kept)
                with pytest.raises(httpx.ConnectError) as failed:
                    http.get("http://reviews/x")
                assert isinstance(failed.value, sail.UnknownService)
                assert "router filter" in str(failed.value)
                assert isinstance(failed.value.__cause__, sail.RejectedService)
            assert http.get("http://example.com/").text == "outside"  # outside hosts still go

        async def main() -> None:
            async with mesh.async_client(transport=httpx.MockTransport(outside)) as http:
                with pytest.raises(httpx.ConnectError) as failed:
                    await http.get("http://reviews/x")
                assert isinstance(failed.value.__cause__, sail.RejectedService)
                assert "router filter" in str(failed.value)

        asyncio.run(main())
        assert outside.urls == ["http://example.com/"]


def test_nacked_listener_fails_grpc_calls_with_its_reason() -> None:
    from sail.grpc import MeshRpcError
    from sail.grpc.aio import AioMeshRpcError

    with testing.XdsServer([_no_router("reviews")]) as xds, sail.Mesh.from_bootstrap(
        xds.bootstrap(), discovery_timeout=30
    ) as mesh:
        # The first call waits for the control plane's answer, which is the NACK.
        with mesh.grpc_channel("reviews") as channel:
            hello = channel.unary_unary("/test.Greeter/Hello")
            with pytest.raises(MeshRpcError) as raised:
                hello(b"x", timeout=20)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "router filter" in raised.value.details()
            assert isinstance(raised.value.__cause__, sail.RejectedService)
        # A channel made once the refusal is known (the constructor does not raise).
        with mesh.grpc_channel("reviews") as channel:
            with pytest.raises(MeshRpcError) as raised:
                channel.unary_unary("/test.Greeter/Hello")(b"x", timeout=20)
            assert "router filter" in raised.value.details()

        async def main() -> None:
            async with mesh.aio_grpc_channel("xds:///reviews") as channel:
                with pytest.raises(AioMeshRpcError) as raised:
                    await channel.unary_unary("/test.Greeter/Hello")(b"x", timeout=20)
                assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "router filter" in raised.value.details()

        asyncio.run(main())


def test_nacked_routes_fail_with_their_reason() -> None:
    with testing.XdsServer(_bad_regex_routes("reviews")) as xds, sail.Mesh.from_bootstrap(
        xds.bootstrap()
    ) as mesh:
        rejected = _rejected(mesh, "reviews")
        assert rejected is not None
        assert rejected.reason.startswith("RouteConfiguration 'reviews'")
        with mesh.client(transport=httpx.MockTransport(_Outside())) as http:
            with pytest.raises(httpx.ConnectError, match="RouteConfiguration 'reviews'"):
                http.get("http://reviews/")


def test_a_fixed_listener_is_served_and_a_deleted_one_is_absent() -> None:
    with testing.XdsServer([_no_router("reviews"), _no_router("ratings")]) as xds, \
            sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        assert _rejected(mesh, "reviews") is not None
        assert _rejected(mesh, "ratings") is not None
        xds.set([*testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})])
        # A good version makes it a mesh host again; a refused name the server deletes
        # is one that does not exist (the usual verdict for such names), not a refused one.
        wait_until(lambda: _rejected(mesh, "reviews") is None)
        assert mesh.is_mesh_host("reviews", "reviews") is True
        wait_until(lambda: _rejected(mesh, "ratings") is None)
        assert mesh.is_mesh_host("ratings", "ratings") is False
        assert mesh.status().nacks == ()


def test_local_mode_refuses_a_bad_listener_even_once_seen_as_outside(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    good = testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})
    path.write_text(json.dumps(good))
    outside = _Outside()
    with sail.Mesh.local(path, poll_interval=0.02) as mesh, \
            mesh.client(transport=httpx.MockTransport(outside)) as http:
        assert http.get("http://ratings/").text == "outside"  # not in the file: outside
        path.write_text(json.dumps([*good, _no_router("ratings")]))
        wait_until(lambda: mesh.status().nacks)
        with pytest.raises(httpx.ConnectError, match="router filter") as failed:
            http.get("http://ratings/")
        assert isinstance(failed.value.__cause__, sail.RejectedService)
        assert str(path) in failed.value.__cause__.reason
        assert outside.urls == ["http://ratings/"]  # only the request before the change
        assert mesh.is_mesh_host("reviews", "reviews") is True
