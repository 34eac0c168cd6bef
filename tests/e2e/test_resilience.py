"""Retries, deadlines and circuit breakers: sail and a real Envoy, driven by the same xDS,
against the same scripted upstreams (`tests/e2e/flaky.py`), behave alike.

Each scenario starts an Envoy (static bootstrap, the scenario's routes and cluster) and a
sail mesh (local mode, the same resources), scripts the upstreams, sends the same requests
through both, and compares what the upstreams saw and what the callers got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

import sail
from sail import testing
from sail.http.errors import DeadlineExceededError, UpstreamOverflowError
from sail.resilience.deadline import inherited_deadline
from tests.e2e.envoy import Envoy, bootstrap, launch_envoy
from tests.e2e.procs import ROOT, start, stop
from tests.helpers import free_port

pytestmark = pytest.mark.e2e

NAMES = ("a", "b", "c")


class Upstreams:
    """Three flaky upstreams and their control paths."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        self.ports = dict(ports)

    def endpoints(self, *names: str) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.ports[n]) for n in (names or NAMES)]

    def mode(self, name: str, mode: str, **params: Any) -> None:
        query = {"mode": mode, **{k: str(v) for k, v in params.items()}}
        httpx.get(f"http://127.0.0.1:{self.ports[name]}/__mode", params=query).raise_for_status()

    def reset_all(self) -> None:
        for name in self.ports:
            self.mode(name, "ok")
            httpx.get(f"http://127.0.0.1:{self.ports[name]}/__clear").raise_for_status()

    def stats(self, name: str) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.ports[name]}/__stats")
        return dict(response.json())

    def requests(self, name: str) -> int:
        return int(self.stats(name)["requests"])


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    ports = {name: free_port() for name in NAMES}
    procs = [
        start([sys.executable, "-m", "tests.e2e.flaky", str(port), name],
              env={"PYTHONPATH": str(ROOT)}, port=port)
        for name, port in ports.items()
    ]
    try:
        yield Upstreams(ports)
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture
def flaky(upstreams: Upstreams) -> Iterator[Upstreams]:
    upstreams.reset_all()
    yield upstreams
    upstreams.reset_all()


def routes(**action: Any) -> dict[str, Any]:
    return testing.route_config("svc", [testing.route("svc", **action)])


@contextlib.contextmanager
def run_envoy(
    workdir: Path, route_config: Mapping[str, Any], endpoints: list[tuple[str, int]],
    cluster: Mapping[str, Any],
) -> Iterator[Envoy]:
    port, admin_port = free_port(), free_port()
    config = bootstrap(route_config, {"svc": endpoints}, port=port, admin_port=admin_port)
    config["static_resources"]["clusters"][0].update(cluster)
    envoy = launch_envoy(workdir, config, port=port, admin_port=admin_port)
    try:
        yield envoy
    finally:
        envoy.stop()


@contextlib.contextmanager
def run_mesh(
    workdir: Path, route_config: Mapping[str, Any], endpoints: list[tuple[str, int]],
    cluster: Mapping[str, Any],
) -> Iterator[sail.Mesh]:
    resources = [
        testing.api_listener("svc", routes=route_config),
        testing.eds_cluster("svc", **cluster),
        testing.load_assignment("svc", endpoints),
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    with sail.Mesh.local(path, poll_interval=0) as mesh:
        yield mesh


def envoy_stat(envoy: Envoy, name: str) -> int:
    text = httpx.get(f"{envoy.admin_url}/stats", params={"filter": name}).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


# -- retries -------------------------------------------------------------------------------------

RETRY_5XX = {
    "retry_on": "5xx",
    "num_retries": 2,
    "retry_host_predicate": testing.previous_hosts(),
    "retry_back_off": {"base_interval": "0.001s"},
}


# Outlier detection that detects and never ejects, given to Envoy and sail alike: without
# `outlier_detection` sail applies its failure accrual (a host resetting every connection
# is ejected after five) and Envoy none, and these tests compare retries, not ejections.
NO_EJECTION = {"outlier_detection": {"enforcing_consecutive_5xx": 0, "enforcing_success_rate": 0}}


def sequential(client: httpx.Client, url: str, n: int, **kwargs: Any) -> list[httpx.Response]:
    return [client.get(url, **kwargs) for _ in range(n)]


@pytest.mark.parametrize("failure", ["status", "reset"])
def test_retry_to_another_host_matches_envoy(flaky: Upstreams, tmp_path: Path,
                                             failure: str) -> None:
    """One upstream of three fails every request (503, or a reset connection). With
    `retry_on: 5xx` and `previous_hosts` every call succeeds, through Envoy and through sail,
    and the failing upstream sees the same share of attempts. (Round robin makes that half
    the calls in both: a retry takes the next host of the rotation, so the picks run
    a, b, c→a, b, c→a...)"""
    config = routes(retry_policy=RETRY_5XX)
    n = 150
    seen: dict[str, tuple[int, int, int]] = {}
    flaky.mode("c", failure, status=503)
    with run_envoy(tmp_path / "envoy", config, flaky.endpoints(), NO_EJECTION) as envoy:
        with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
            replies = sequential(client, "/work", n)
        assert [r.status_code for r in replies] == [200] * n
        seen["envoy"] = (flaky.requests("a"), flaky.requests("b"), flaky.requests("c"))
    flaky.reset_all()
    flaky.mode("c", failure, status=503)
    with run_mesh(tmp_path / "sail", config, flaky.endpoints(), NO_EJECTION) as mesh:
        with mesh.client() as client:
            replies = sequential(client, "http://svc/work", n)
        assert [r.status_code for r in replies] == [200] * n
        seen["sail"] = (flaky.requests("a"), flaky.requests("b"), flaky.requests("c"))
        retried = [r for r in replies if r.extensions["sail"].retried]
        assert all(r.extensions["sail"].attempts[0].endpoint.endswith(
            f":{flaky.ports['c']}") for r in retried)
        assert len(retried) == seen["sail"][2]
    for who, (a, b, c) in seen.items():
        assert a + b == n, (who, seen)  # every call ended on a healthy upstream, once
        assert c == pytest.approx(n / 2, abs=n * 0.1), (who, seen)
    assert seen["sail"][2] == pytest.approx(seen["envoy"][2], abs=n * 0.15), seen


def test_retries_exhausted_return_the_last_response(flaky: Upstreams, tmp_path: Path) -> None:
    """Every upstream answers 503: each call makes 1 + num_retries attempts and returns the
    last 503, through both."""
    config = routes(retry_policy={**RETRY_5XX, "num_retries": 2})
    for name in NAMES:
        flaky.mode(name, "status", status=503)
    n = 20
    with run_envoy(tmp_path / "envoy", config, flaky.endpoints(), {}) as envoy:
        with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
            statuses = [r.status_code for r in sequential(client, "/x", n)]
        envoy_total = sum(flaky.requests(x) for x in NAMES)
    flaky.reset_all()
    for name in NAMES:
        flaky.mode(name, "status", status=503)
    with run_mesh(tmp_path / "sail", config, flaky.endpoints(), {}) as mesh:
        with mesh.client() as client:
            replies = sequential(client, "http://svc/x", n)
        sail_total = sum(flaky.requests(x) for x in NAMES)
    assert statuses == [503] * n
    assert [r.status_code for r in replies] == [503] * n
    assert envoy_total == sail_total == 3 * n
    assert {len(r.extensions["sail"].attempts) for r in replies} == {3}
    # previous_hosts: the three attempts of a call went to three different upstreams
    assert all(len({a.endpoint for a in r.extensions["sail"].attempts}) == 3 for r in replies)


def test_without_a_policy_a_post_that_reached_the_server_is_not_retried(
    flaky: Upstreams, tmp_path: Path
) -> None:
    """No retry policy on the route: a POST answered 503, or cut by a reset after it was
    sent, is sent once; a connection refused (nothing sent) is retried on another host."""
    config = routes()
    flaky.mode("a", "status", status=503)
    with run_mesh(tmp_path / "sail", config, flaky.endpoints("a"), {}) as mesh:
        with mesh.client() as client:
            replies = [client.post("http://svc/order", content=b"{}") for _ in range(10)]
            assert [r.status_code for r in replies] == [503] * 10
            assert flaky.stats("a")["methods"] == {"POST": 10}
            flaky.mode("a", "reset")
            for _ in range(5):
                with pytest.raises(httpx.TransportError) as info:
                    client.post("http://svc/order", content=b"{}")
                assert not isinstance(info.value, DeadlineExceededError)
            assert flaky.stats("a")["methods"] == {"POST": 15}
    dead = ("127.0.0.1", free_port())  # nothing listens there
    flaky.reset_all()
    with run_mesh(tmp_path / "sail2", config, [dead, *flaky.endpoints("b")], {}) as mesh:
        with mesh.client() as client:
            replies = [client.post("http://svc/order", content=b"{}") for _ in range(10)]
    assert [r.status_code for r in replies] == [200] * 10
    assert flaky.requests("b") == 10
    refused = [r.extensions["sail"].attempts for r in replies if r.extensions["sail"].retried]
    assert refused, "round robin must have picked the dead endpoint at least once"
    assert all(a[0].outcome.reason == "connect-failure" for a in refused)


# -- deadlines -----------------------------------------------------------------------------------

def test_route_timeout_is_one_deadline_like_envoy(flaky: Upstreams, tmp_path: Path) -> None:
    """A 0.4 s route timeout against an upstream that takes 3 s: Envoy answers 504 after
    about 0.4 s; sail raises DeadlineExceededError after about 0.4 s. The upstream is told
    the time it has in x-envoy-expected-rq-timeout-ms."""
    config = routes(timeout="0.4s")
    flaky.mode("a", "slow", delay=3)
    with run_envoy(tmp_path / "envoy", config, flaky.endpoints("a"), {}) as envoy:
        with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
            began = time.monotonic()
            assert client.get("/slow").status_code == 504
            envoy_elapsed = time.monotonic() - began
    with run_mesh(tmp_path / "sail", config, flaky.endpoints("a"), {}) as mesh:
        with mesh.client() as client:
            began = time.monotonic()
            with pytest.raises(DeadlineExceededError, match="deadline"):
                client.get("http://svc/slow")
            sail_elapsed = time.monotonic() - began
    assert 0.35 < envoy_elapsed < 1.0
    assert 0.35 < sail_elapsed < 1.0
    timeouts = [int(t) for t in flaky.stats("a")["timeouts"]]
    assert timeouts and all(300 <= t <= 400 for t in timeouts), timeouts


def test_per_try_timeout_retries_within_the_deadline(flaky: Upstreams, tmp_path: Path) -> None:
    """per_try_timeout 0.3 s, timeout 2 s, retry_on 5xx: the first attempt hangs, the retry
    answers; the call succeeds in about 0.3 s through both."""
    config = routes(timeout="2s", retry_policy={**RETRY_5XX, "per_try_timeout": "0.3s"})
    results: dict[str, float] = {}
    for who in ("envoy", "sail"):
        flaky.reset_all()
        flaky.mode("a", "slow", delay=3, count=1)
        if who == "envoy":
            with run_envoy(tmp_path / who, config, flaky.endpoints("a", "b"), {}) as envoy:
                with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
                    # warm both connections up so that round robin starts on "a"
                    began = time.monotonic()
                    replies = [client.get("/p") for _ in range(4)]
        else:
            with run_mesh(tmp_path / who, config, flaky.endpoints("a", "b"), {}) as mesh:
                with mesh.client() as client:
                    began = time.monotonic()
                    replies = [client.get("http://svc/p") for _ in range(4)]
        results[who] = time.monotonic() - began
        assert [r.status_code for r in replies] == [200] * 4, who
        assert flaky.requests("a") + flaky.requests("b") == 5, who  # one retry in all
    for who, elapsed in results.items():
        assert 0.28 < elapsed < 1.5, (who, results)


def test_inherited_deadline_caps_the_call(flaky: Upstreams, tmp_path: Path) -> None:
    """Code serving a request whose caller has 0.3 s left (sail's servers set this from
    x-envoy-expected-rq-timeout-ms) makes a call on a route with the default 15 s: the
    call gets 0.3 s, and the next hop is told so."""
    flaky.mode("a", "slow", delay=3)
    with run_mesh(tmp_path, routes(), flaky.endpoints("a"), {}) as mesh:
        with mesh.client() as client:
            token = inherited_deadline.set(time.monotonic() + 0.3)
            try:
                began = time.monotonic()
                with pytest.raises(DeadlineExceededError):
                    client.get("http://svc/inherit")
                elapsed = time.monotonic() - began
            finally:
                inherited_deadline.reset(token)
    assert 0.25 < elapsed < 0.9
    (told,) = [int(t) for t in flaky.stats("a")["timeouts"]]
    assert 200 <= told <= 300


# -- circuit breakers ----------------------------------------------------------------------------

def test_overflow_matches_envoy(flaky: Upstreams, tmp_path: Path) -> None:
    """max_connections 1 and max_pending_requests 1, ten concurrent calls to an upstream
    that takes 1 s: two are served (one on the connection, one pending), eight overflow at
    once - Envoy answers those 503 with x-envoy-overloaded, sail raises
    UpstreamOverflowError. A first call opens the upstream connection, so that the burst
    does not race its connect (while it connects, Envoy holds the first request as pending
    and overflows the second: nine, on a loaded machine)."""
    cluster = {"circuit_breakers": {"thresholds": [
        {"max_connections": 1, "max_pending_requests": 1, "max_requests": 100}
    ]}}
    config = routes()

    async def burst(client: httpx.AsyncClient, url: str) -> list[Any]:
        (await client.get(url)).raise_for_status()  # the upstream connection, kept alive
        flaky.mode("a", "slow", delay=1)
        try:
            return await asyncio.gather(
                *(client.get(url) for _ in range(10)), return_exceptions=True
            )
        finally:
            flaky.mode("a", "ok")

    with run_envoy(tmp_path / "envoy", config, flaky.endpoints("a"), cluster) as envoy:
        async def via_envoy() -> list[Any]:
            async with httpx.AsyncClient(base_url=envoy.url, headers={"host": "svc"},
                                         timeout=10) as client:
                return await burst(client, "/cb")
        envoy_results = asyncio.run(via_envoy())
        overflow_stat = envoy_stat(envoy, "cluster.svc.upstream_rq_pending_overflow")
    envoy_overflow = [r for r in envoy_results if r.status_code == 503
                      and r.headers.get("x-envoy-overloaded") == "true"]
    with run_mesh(tmp_path / "sail", config, flaky.endpoints("a"), cluster) as mesh:
        async def via_sail() -> list[Any]:
            async with mesh.async_client(timeout=10) as client:
                return await burst(client, "http://svc/cb")
        sail_results = asyncio.run(via_sail())
        stats = mesh._dataplane.state.clusters["svc"].limits.stats
    sail_overflow = [r for r in sail_results if isinstance(r, UpstreamOverflowError)]
    assert len(envoy_overflow) == overflow_stat == 8
    assert len(sail_overflow) == stats.rq_overflow == 8
    assert "max_pending_requests (1)" in str(sail_overflow[0])
    served = [r for r in sail_results if isinstance(r, httpx.Response)]
    assert [r.status_code for r in served] == [200, 200]


# -- outlier detection ---------------------------------------------------------------------------

OUTLIER = {"outlier_detection": {
    "consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "2s",
    "max_ejection_percent": 100,
}}


def test_consecutive_5xx_ejection_and_return_match_envoy(flaky: Upstreams,
                                                          tmp_path: Path) -> None:
    """One upstream of three answers 503. consecutive_5xx 3: its third 503 ejects it, and
    no request reaches it while it is out - the same three requests in Envoy and sail.
    After base_ejection_time (2 s) and the next interval tick it takes traffic again.

    Then they differ, on purpose: sail resets a host's counters when it returns, so three
    more 503s eject it again; Envoy 1.40 keeps counting from 3 and ejects when the count
    *equals* the threshold, so a host that never succeeded is not ejected again by
    consecutive_5xx (it got every third request of phase two)."""
    config = routes()
    phases: dict[str, tuple[int, int]] = {}

    def drive(send: Any) -> tuple[int, int]:
        for _ in range(45):
            send()
        first = flaky.requests("c")
        time.sleep(3.6)  # ejection time + up to an interval
        for _ in range(45):
            send()
        return first, flaky.requests("c") - first

    flaky.mode("c", "status", status=503)
    with run_envoy(tmp_path / "envoy", config, flaky.endpoints(), OUTLIER) as envoy:
        with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
            phases["envoy"] = drive(lambda: client.get("/o"))
        assert envoy_stat(envoy, "cluster.svc.outlier_detection.ejections_enforced_total") >= 2
    flaky.reset_all()
    flaky.mode("c", "status", status=503)
    with run_mesh(tmp_path / "sail", config, flaky.endpoints(), OUTLIER) as mesh:
        with mesh.client() as client:
            phases["sail"] = drive(lambda: client.get("http://svc/o"))
        outlier = mesh._dataplane.state.clusters["svc"].outlier
        assert outlier is not None and outlier.stats.ejections_enforced_total >= 2
    assert phases["envoy"][0] == phases["sail"][0] == 3, phases
    assert phases["sail"][1] == 3, phases
    assert phases["envoy"][1] == 15, phases


# -- least request -------------------------------------------------------------------------------

def test_least_request_avoids_the_slow_host_like_envoy(flaky: Upstreams,
                                                        tmp_path: Path) -> None:
    """LEAST_REQUEST (power of two choices) with one upstream slow (0.5 s) and eight calls in
    flight: the slow one holds requests longer, so both Envoy and sail send it far less
    than the third that round robin would."""
    config = routes()
    cluster = {"lb_policy": "LEAST_REQUEST"}
    shares: dict[str, float] = {}

    async def drive(client: httpx.AsyncClient, url: str) -> None:
        async def worker() -> None:
            for _ in range(15):
                (await client.get(url)).raise_for_status()
        await asyncio.gather(*(worker() for _ in range(8)))

    for who in ("envoy", "sail"):
        flaky.reset_all()
        flaky.mode("a", "slow", delay=0.5)
        if who == "envoy":
            with run_envoy(tmp_path / who, config, flaky.endpoints(), cluster) as envoy:
                async def via_envoy() -> None:
                    async with httpx.AsyncClient(base_url=envoy.url, headers={"host": "svc"},
                                                 timeout=10) as client:
                        await drive(client, "/lr")
                asyncio.run(via_envoy())
        else:
            with run_mesh(tmp_path / who, config, flaky.endpoints(), cluster) as mesh:
                async def via_sail() -> None:
                    async with mesh.async_client(timeout=10) as client:
                        await drive(client, "http://svc/lr")
                asyncio.run(via_sail())
                hosts = mesh._dataplane.state.clusters["svc"].hosts
                assert all(hosts.host(e).active == 0 for e in
                           mesh._dataplane.state.clusters["svc"].assignment.endpoints)
        total = sum(flaky.requests(n) for n in NAMES)
        assert total == 120, who
        shares[who] = flaky.requests("a") / total
    assert shares["envoy"] < 0.25 and shares["sail"] < 0.25, shares
    assert shares["sail"] == pytest.approx(shares["envoy"], abs=0.12), shares


# -- hashing policies ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_hash_policy_maps_keys_to_the_same_upstream_as_envoy(flaky: Upstreams, tmp_path: Path,
                                                             policy: str) -> None:
    """hash_policy on the `x-user` header over three upstreams: each user sticks to one
    upstream, and - since sail builds Envoy's ring and Maglev table, with xxHash - to the
    very upstream Envoy picks for that user."""
    config = routes(hash_policy=[{"header": {"header_name": "x-user"}}])
    cluster = {"lb_policy": policy}
    users = [f"user-{i}" for i in range(40)]
    chosen: dict[str, dict[str, set[str]]] = {}
    with run_envoy(tmp_path / "envoy", config, flaky.endpoints(), cluster) as envoy:
        with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
            chosen["envoy"] = {u: {client.get("/h", headers={"x-user": u}).json()["name"]
                                   for _ in range(3)} for u in users}
    with run_mesh(tmp_path / "sail", config, flaky.endpoints(), cluster) as mesh:
        with mesh.client() as client:
            chosen["sail"] = {u: {client.get("http://svc/h", headers={"x-user": u}).json()["name"]
                                  for _ in range(3)} for u in users}
    for who, by_user in chosen.items():
        assert all(len(names) == 1 for names in by_user.values()), (who, by_user)
        assert len(set().union(*by_user.values())) == 3, who  # the keys spread over all three
    assert chosen["sail"] == chosen["envoy"]


def test_generated_cookie_makes_a_client_sticky(flaky: Upstreams, tmp_path: Path) -> None:
    """A cookie hash policy with a ttl: the first response sets the cookie (as Envoy does),
    httpx's cookie jar sends it back, and the client stays on one upstream; a client without
    the cookie jar's memory spreads."""
    config = routes(hash_policy=[{"cookie": {"name": "sticky", "ttl": "60s", "path": "/"}}])
    cluster = {"lb_policy": "RING_HASH"}
    with run_mesh(tmp_path, config, flaky.endpoints(), cluster) as mesh:
        with mesh.client() as client:
            first = client.get("http://svc/c")
            assert "sticky=" in first.headers["set-cookie"]
            names = {client.get("http://svc/c").json()["name"] for _ in range(20)}
        assert len(names) == 1
        spread = set()
        for _ in range(30):
            with mesh.client() as fresh:
                spread.add(fresh.get("http://svc/c").json()["name"])
        assert len(spread) > 1


# -- hedging -------------------------------------------------------------------------------------

HEDGED = {
    "timeout": "5s",
    "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s"},
    "hedge_policy": {"hedge_on_per_try_timeout": True},
}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_hedge_on_per_try_timeout_like_envoy(flaky: Upstreams, tmp_path: Path,
                                             mode: str) -> None:
    """Both upstreams take 1 s for their next request. per_try_timeout 0.3 s with
    hedge_on_per_try_timeout: the first attempt is not cut at 0.3 s, a second one starts
    beside it, and the first answer - the first attempt's, at about 1 s - wins. (A plain
    retry would cut the first attempt and answer from the second, at about 1.3 s.) Envoy
    and sail alike."""
    config = routes(**HEDGED)
    winners: dict[str, tuple[str, str, float]] = {}
    for who in ("envoy", "sail"):
        flaky.reset_all()
        for name in ("a", "b"):
            flaky.mode(name, "slow", delay=1.0, count=1)
        if who == "envoy":
            with run_envoy(tmp_path / who, config, flaky.endpoints("a", "b"), {}) as envoy:
                began = time.monotonic()
                reply = httpx.get(f"{envoy.url}/hedge", headers={"host": "svc"}, timeout=10)
                elapsed = time.monotonic() - began
        else:
            with run_mesh(tmp_path / who, config, flaky.endpoints("a", "b"), {}) as mesh:
                began = time.monotonic()
                if mode == "sync":
                    with mesh.client(timeout=10) as client:
                        reply = client.get("http://svc/hedge")
                else:
                    async def fetch() -> httpx.Response:
                        async with mesh.async_client(timeout=10) as client:
                            return await client.get("http://svc/hedge")
                    reply = asyncio.run(fetch())
                elapsed = time.monotonic() - began
                info = reply.extensions["sail"]
                assert len(info.attempts) == 1  # the winner; the loser was dropped unread
                cluster = mesh._dataplane.state.clusters["svc"]
                time.sleep(0.5)  # the loser finishes (sync) or was cancelled (async)
                assert cluster.limits.active == 0 and cluster.limits.retries == 0
        assert reply.status_code == 200, who
        first = min(("a", "b"), key=lambda n: flaky.stats(n)["arrivals"][0])
        second = "b" if first == "a" else "a"
        gap = flaky.stats(second)["arrivals"][0] - flaky.stats(first)["arrivals"][0]
        winners[who] = (reply.json()["name"], first, elapsed)
        # the hedge started at the per-try timeout (0.3 s after the first attempt was
        # sent; that one's arrival may lag its sending by tens of ms on a busy machine)
        assert 0.15 < gap < 0.9, (who, gap)
    for who, (name, first, elapsed) in winners.items():
        assert name == first, (who, winners)  # a plain retry would answer from the second
        assert 0.9 < elapsed < 1.6, (who, winners)


# -- fault injection, header changes, mirroring --------------------------------------------------

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FAULT_FILTER = {"name": "envoy.filters.http.fault",
                "typed_config": {"@type": FAULT_TYPE, "max_active_faults": 100,
                                 "delay": {"header_delay": {},
                                           "percentage": {"numerator": 100}}}}


@contextlib.contextmanager
def both_with_fault_filter(
    tmp_path: Path, route_config: Mapping[str, Any], endpoints: list[tuple[str, int]],
    clusters: Mapping[str, list[tuple[str, int]]] | None = None,
) -> Iterator[tuple[Envoy, sail.Mesh]]:
    """Envoy and sail with the fault filter in the HCM before the router."""
    extra = dict(clusters or {})
    port, admin_port = free_port(), free_port()
    config = bootstrap(route_config, {"svc": endpoints, **extra}, port=port,
                       admin_port=admin_port)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    hcm["http_filters"].insert(0, FAULT_FILTER)
    listener = testing.api_listener("svc", routes=route_config)
    listener["api_listener"]["api_listener"]["http_filters"].insert(0, FAULT_FILTER)
    resources = [listener, testing.eds_cluster("svc"), testing.load_assignment("svc", endpoints)]
    for name, eps in extra.items():
        resources += [testing.eds_cluster(name), testing.load_assignment(name, eps)]
    (tmp_path / "sail").mkdir(parents=True)
    path = tmp_path / "sail" / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    envoy = launch_envoy(tmp_path / "envoy", config, port=port, admin_port=admin_port)
    try:
        with sail.Mesh.local(path, poll_interval=0) as mesh:
            yield envoy, mesh
    finally:
        envoy.stop()


def test_fault_abort_and_header_changes_match_envoy(flaky: Upstreams, tmp_path: Path) -> None:
    """A route with an abort of 503 for 30 % of requests, a request header added and one
    removed, and a response header added: through Envoy and sail, about 30 % of 1,000
    requests are aborted locally (never reaching the upstream), the upstream sees the
    header changes, and the caller sees the response header."""
    route = testing.route("svc", prefix="/")
    route["typed_per_filter_config"] = {"envoy.filters.http.fault": {
        "@type": FAULT_TYPE,
        "abort": {"http_status": 503, "percentage": {"numerator": 30}},
    }}
    route["request_headers_to_add"] = [{"header": {"key": "x-added", "value": "yes"},
                                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    route["request_headers_to_remove"] = ["x-secret"]
    route["response_headers_to_add"] = [{"header": {"key": "x-served-by", "value": "mesh"}}]
    config = testing.route_config("svc", [route])
    n = 1000
    seen: dict[str, tuple[int, int]] = {}
    with both_with_fault_filter(tmp_path, config, flaky.endpoints("a")) as (envoy, mesh):
        for who in ("envoy", "sail"):
            flaky.reset_all()
            if who == "envoy":
                client = httpx.Client(base_url=envoy.url, headers={"host": "svc"})
                url = "/f"
            else:
                client = mesh.client()
                url = "http://svc/f"
            with client:
                replies = [client.get(url, headers={"x-secret": "s"}) for _ in range(n)]
            aborted = [r for r in replies if r.status_code == 503]
            assert all(r.text == "fault filter abort" for r in aborted), who
            served = [r for r in replies if r.status_code == 200]
            assert all(r.headers["x-served-by"] == "mesh" for r in served), who
            headers = flaky.stats("a")["last_headers"]
            assert headers.get("x-added") == "yes" and "x-secret" not in headers, (who, headers)
            seen[who] = (len(aborted), flaky.requests("a"))
    for who, (aborted, reached) in seen.items():
        assert aborted + reached == n, (who, seen)
        assert aborted == pytest.approx(0.3 * n, abs=0.05 * n), (who, seen)


def test_header_delay_and_mirror_match_envoy(flaky: Upstreams, tmp_path: Path) -> None:
    """The filter's header-controlled delay (`x-envoy-fault-delay-request: 300`) holds a
    request 0.3 s before it is sent; a route mirroring to cluster `shadow` sends a copy to
    it with Host `svc-shadow`, whose answer nobody waits for. Envoy and sail alike."""
    route = testing.route("svc", prefix="/")
    route["route"]["request_mirror_policies"] = [{"cluster": "shadow"}]
    config = testing.route_config("svc", [route])
    with both_with_fault_filter(tmp_path, config, flaky.endpoints("a"),
                                {"shadow": flaky.endpoints("c")}) as (envoy, mesh):
        for who in ("envoy", "sail"):
            flaky.reset_all()
            if who == "envoy":
                client = httpx.Client(base_url=envoy.url, headers={"host": "svc"})
                url = "/m"
            else:
                client = mesh.client()
                url = "http://svc/m"
            with client:
                began = time.monotonic()
                reply = client.get(url, headers={"x-envoy-fault-delay-request": "300"})
                elapsed = time.monotonic() - began
                assert reply.status_code == 200 and reply.json()["name"] == "a", who
                assert 0.28 < elapsed < 1.0, (who, elapsed)
                for _ in range(9):
                    client.get(url)
            deadline = time.monotonic() + 5
            while flaky.requests("c") < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert flaky.requests("a") == flaky.requests("c") == 10, who
            assert flaky.stats("c")["last_headers"]["host"] == "svc-shadow", who


def test_a_retry_sends_its_own_endpoints_hostname(flaky: Upstreams, tmp_path: Path) -> None:
    """auto_host_rewrite with endpoints that have hostnames: the first attempt carries its
    endpoint's hostname as Host, and a retry on another endpoint carries that one's."""
    assignment = testing.load_assignment("svc", flaky.endpoints("a", "b"))
    for lb_endpoint, name in zip(assignment["endpoints"][0]["lb_endpoints"], ("a", "b"),
                                 strict=True):
        lb_endpoint["endpoint"]["hostname"] = f"{name}.internal"
    config = routes(auto_host_rewrite=True, retry_policy=RETRY_5XX)
    resources = [testing.api_listener("svc", routes=config), testing.eds_cluster("svc"),
                 assignment]
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    flaky.mode("a", "status", status=503)
    retried = 0
    with sail.Mesh.local(path, poll_interval=0) as mesh, mesh.client() as client:
        for _ in range(4):
            reply = client.get("http://svc/h")
            assert reply.status_code == 200
            if reply.extensions["sail"].retried:  # a (503, Host a.internal), then b
                retried += 1
                assert flaky.stats("a")["last_headers"]["host"] == "a.internal"
                assert flaky.stats("b")["last_headers"]["host"] == "b.internal"
    assert retried >= 2


def test_retriable_status_codes_retry_an_answer_like_envoy(flaky: Upstreams,
                                                          tmp_path: Path) -> None:
    """retry_on `retriable-status-codes` with 429: an upstream's 429 (an answer below 500)
    is retried on the other upstream, through Envoy and sail alike."""
    config = routes(retry_policy={**RETRY_5XX, "retry_on": "retriable-status-codes",
                                  "retriable_status_codes": [429]})
    counts: dict[str, tuple[int, int]] = {}
    for who in ("envoy", "sail"):
        flaky.reset_all()
        flaky.mode("a", "status", status=429)
        if who == "envoy":
            with run_envoy(tmp_path / who, config, flaky.endpoints("a", "b"), {}) as envoy:
                with httpx.Client(base_url=envoy.url, headers={"host": "svc"}) as client:
                    statuses = [client.get("/r").status_code for _ in range(20)]
        else:
            with run_mesh(tmp_path / who, config, flaky.endpoints("a", "b"), {}) as mesh:
                with mesh.client() as client:
                    statuses = [client.get("http://svc/r").status_code for _ in range(20)]
        assert statuses == [200] * 20, who
        counts[who] = (flaky.requests("a"), flaky.requests("b"))
    assert counts["sail"][1] == counts["envoy"][1] == 20, counts
    assert counts["sail"][0] == pytest.approx(counts["envoy"][0], abs=3), counts


def test_an_attempt_interrupted_by_any_exception_is_released(
    flaky: Upstreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is no transport error (here a RuntimeError out of the endpoint's
    pool) still ends the attempt's share of the circuit counters, sync and async."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("interrupted")

    with run_mesh(tmp_path, routes(), flaky.endpoints("a"), {}) as mesh:
        monkeypatch.setattr(httpx.HTTPTransport, "handle_request", broken)
        monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", broken)
        with mesh.client() as client, pytest.raises(RuntimeError):
            client.get("http://svc/x")

        async def fetch() -> None:
            async with mesh.async_client() as client:
                await client.get("http://svc/x")

        with pytest.raises(RuntimeError):
            asyncio.run(fetch())
        cluster = mesh._dataplane.state.clusters["svc"]
        assert cluster.limits.active == 0
        assert cluster.limits.stats.rq_total == 2
