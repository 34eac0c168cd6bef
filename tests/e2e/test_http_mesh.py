"""sail's httpx clients against real uvicorn upstreams, config from a real ADS stream."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import httpx
import pytest

import sail
from sail import testing
from sail.http.errors import NoHealthyUpstreamError
from sail.model import RouteAction
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def split(backends: dict[str, int], weights: dict[str, int]) -> list[dict[str, object]]:
    return testing.service(
        "reviews",
        {f"reviews-{n}": [("127.0.0.1", backends[n])] for n in weights},
        weights={f"reviews-{n}": w for n, w in weights.items()},
    )


@pytest.fixture
def xds(backends: dict[str, int]) -> Iterator[testing.XdsServer]:
    with testing.XdsServer(split(backends, {"a": 80, "b": 20})) as server:
        yield server


@pytest.fixture
def mesh(xds: testing.XdsServer) -> Iterator[sail.Mesh]:
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as m:
        yield m


def weight_of(mesh: sail.Mesh, cluster: str) -> int | None:
    """The weight the live route gives `cluster`."""
    route = mesh.snapshot.routes["reviews"].virtual_hosts[0].routes[0]
    action = route.action
    assert isinstance(action, RouteAction)
    return next((w.weight for w in action.weighted_clusters if w.name == cluster), None)


def shares(names: list[str]) -> dict[str, float]:
    counts = collections.Counter(names)
    return {k: v / len(names) for k, v in counts.items()}


def test_weighted_split_sync(mesh: sail.Mesh) -> None:
    with mesh.client() as http:
        names = [http.get("http://reviews/r/1").json()["name"] for _ in range(2000)]
    assert shares(names)["a"] == pytest.approx(0.80, abs=0.03)
    assert shares(names)["b"] == pytest.approx(0.20, abs=0.03)


def test_weighted_split_async(mesh: sail.Mesh) -> None:
    async def run() -> list[str]:
        async with mesh.async_client() as http:
            sem = asyncio.Semaphore(16)

            async def one() -> str:
                async with sem:
                    response = await http.get("http://reviews/r/1")
                    return str(response.json()["name"])

            return await asyncio.gather(*(one() for _ in range(2000)))

    names = asyncio.run(run())
    assert shares(names)["a"] == pytest.approx(0.80, abs=0.03)


def test_config_change_mid_traffic_moves_split_without_failures(
    mesh: sail.Mesh, xds: testing.XdsServer, backends: dict[str, int]
) -> None:
    before: list[str] = []
    after: list[str] = []
    with mesh.client() as http:
        for _ in range(600):
            before.append(http.get("http://reviews/").json()["name"])
        xds.set(split(backends, {"a": 20, "b": 80}))
        while weight_of(mesh, "reviews-b") != 80:  # traffic keeps flowing during the change
            before.append(http.get("http://reviews/").json()["name"])
        for _ in range(1500):
            after.append(http.get("http://reviews/").json()["name"])
    assert shares(before)["a"] == pytest.approx(0.80, abs=0.05)
    assert shares(after)["b"] == pytest.approx(0.80, abs=0.03)


def test_host_header_is_the_service_and_path_is_kept(mesh: sail.Mesh) -> None:
    with mesh.client() as http:
        response = http.get("http://reviews/reviews/7?x=1")
    body = response.json()
    assert body["host"] == "reviews"
    assert (body["path"], body["query"]) == ("/reviews/7", "x=1")
    assert str(response.request.url) == "http://reviews/reviews/7?x=1"


def test_outside_hosts_are_untouched(mesh: sail.Mesh, backends: dict[str, int]) -> None:
    with mesh.client() as http:
        body = http.get(f"http://127.0.0.1:{backends['c']}/direct").json()
    assert body["name"] == "c"
    assert body["host"] == f"127.0.0.1:{backends['c']}"
    assert "127.0.0.1" not in mesh.snapshot.listeners


def test_user_options_pass_through(mesh: sail.Mesh) -> None:
    with mesh.client(headers={"x-user": "1"}, timeout=3.0) as http:
        assert http.timeout.read == 3.0
        response = http.get("http://reviews/")
    assert response.request.headers["x-user"] == "1"


def test_no_healthy_upstream_is_an_httpx_connect_error(
    mesh: sail.Mesh, xds: testing.XdsServer, backends: dict[str, int]
) -> None:
    resources = split(backends, {"a": 100})
    resources[-1] = testing.load_assignment(
        "reviews-a", [("127.0.0.1", backends["a"])], health="DRAINING"
    )
    xds.set(resources)
    with mesh.client() as http:
        wait_until(lambda: "reviews-b" not in mesh.snapshot.clusters)
        with pytest.raises(httpx.ConnectError) as info:
            http.get("http://reviews/")
    assert isinstance(info.value, NoHealthyUpstreamError)
    assert isinstance(info.value, sail.NoHealthyUpstream)
    message = str(info.value)
    assert "reviews" in message and "reviews-a" in message and "DRAINING" in message


def test_departed_endpoint_pool_is_closed(
    mesh: sail.Mesh, xds: testing.XdsServer, backends: dict[str, int]
) -> None:
    with mesh.client() as http:
        for _ in range(20):
            http.get("http://reviews/")
        transport = http._transport
        before = set(transport._pools._pools)  # type: ignore[attr-defined]
        assert f"127.0.0.1:{backends['b']}" in before
        xds.set(split(backends, {"a": 100}))
        wait_until(lambda: f"127.0.0.1:{backends['b']}" not in transport._pools._pools)  # type: ignore[attr-defined]
        wait_until(lambda: not transport._pools.draining, timeout=5)  # type: ignore[attr-defined]
        assert http.get("http://reviews/").json()["name"] == "a"


def test_endpoints_leaving_under_concurrent_traffic_fail_no_request(
    mesh: sail.Mesh, xds: testing.XdsServer, backends: dict[str, int]
) -> None:
    import threading

    failures: list[str] = []
    stop = threading.Event()
    counts = collections.Counter[str]()

    def hammer(http: httpx.Client) -> None:
        while not stop.is_set():
            try:
                counts[http.get("http://reviews/").json()["name"]] += 1
            except Exception as exc:  # any failure is the bug this test looks for
                failures.append(repr(exc))

    with mesh.client() as http:
        threads = [threading.Thread(target=hammer, args=(http,)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for weights in ({"a": 50, "c": 50}, {"c": 100}, {"b": 100}, {"a": 80, "b": 20}):
                version = mesh.snapshot.version
                xds.set(split(backends, weights))
                wait_until(lambda v=version: mesh.snapshot.version > v)  # type: ignore[misc]
                seen = sum(counts.values())
                wait_until(lambda s=seen: sum(counts.values()) > s + 50)  # type: ignore[misc]
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert failures == []
    assert set(counts) == {"a", "b", "c"}
