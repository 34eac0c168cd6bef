"""The HTTP exchange (`sail.http.exchange`) driven by hand: fake responses, fake errors and a
fake clock, no sockets. Each test performs the actions the exchange yields the way a shell
would, and checks the order of attempts, the waits, the counters and the attempt events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sail
from sail import testing
from sail.dataplane import ClusterRuntime
from sail.errors import DeadlineExceeded, UnsupportedRequest, UpstreamOverflow
from sail.http import exchange as exchange_module
from sail.http.exchange import Close, Flow, Launch, Launched, Mirror, Send, Sleep, Wait, exchange
from sail.resilience.call import Attempt, Call
from sail.resilience.classify import Local

ENDPOINTS = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)]
PREVIOUS_HOSTS = testing.previous_hosts()
RETRY_5XX = {
    "retry_on": "5xx,connect-failure",
    "num_retries": 2,
    "retry_host_predicate": PREVIOUS_HOSTS,
    "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
}


class Clock:
    """`time` for the exchange: `monotonic()` reads `now`, which only the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(exchange_module, "time", fake)
    return fake


class Recorder:
    """An attempt observer that checks each attempt ends exactly once."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}
        self.events: list[tuple[str, str, str]] = []
        self.next = 0

    def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
        self.next += 1
        self.open[self.next] = endpoint
        self.events.append(("start", call.service, endpoint))
        return self.next

    def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
        assert isinstance(token, int)
        assert self.open.pop(token) == attempt.endpoint, "ended twice, or the wrong attempt"
        self.events.append(("end", attempt.endpoint, attempt.outcome.reason))


@pytest.fixture
def make_mesh(tmp_path: Path) -> Iterator[Any]:
    meshes: list[sail.Mesh] = []

    def make(**action: Any) -> sail.Mesh:
        routes = testing.route_config("svc", [testing.route("svc", **action)])
        resources = [
            testing.api_listener("svc", routes=routes),
            testing.eds_cluster("svc"),
            testing.load_assignment("svc", ENDPOINTS),
            testing.eds_cluster("shadow"),
            testing.load_assignment("shadow", [("10.0.9.9", 80)]),
        ]
        path = tmp_path / f"mesh{len(meshes)}.json"
        path.write_text(json.dumps({"resources": resources}))
        mesh = sail.Mesh.local(path, poll_interval=0)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()


def start(mesh: sail.Mesh, url: str = "http://svc/x", **kwargs: Any) -> tuple[Flow, httpx.Request]:
    dataplane = mesh._dataplane
    request = httpx.Request("GET", url, **kwargs)
    return exchange(dataplane, dataplane.state, request, "svc"), request


def cluster(mesh: sail.Mesh) -> ClusterRuntime:
    return mesh._dataplane.state.clusters["svc"]


def answer(status: int, request: httpx.Request) -> httpx.Response:
    return httpx.Response(status, request=request, stream=httpx.ByteStream(b"body"))


def test_retries_go_to_other_hosts_after_a_backoff(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh(retry_policy=RETRY_5XX)
    recorder = Recorder()
    mesh.observe(recorder)
    flow, request = start(mesh)
    sent: list[str] = []
    waits: list[float] = []
    action = next(flow)
    statuses = iter([503, 503, 200])
    while True:
        if isinstance(action, Send):
            sent.append(action.authority)
            assert cluster(mesh).limits.active == 1  # the attempt counts while it is out
            reply: object = answer(next(statuses), action.request)
        elif isinstance(action, Sleep):
            waits.append(action.seconds)
            clock.now += action.seconds
            reply = None
        elif isinstance(action, Close):
            assert action.response.status_code == 503  # a retried answer is closed
            reply = None
        else:
            raise AssertionError(action)
        try:
            action = flow.send(reply)
        except StopIteration as done:
            response = done.value
            break
    assert response.status_code == 200
    assert len(set(sent)) == 3, "previous_hosts: every attempt on a host not tried yet"
    assert len(waits) == 2 and all(0 <= w <= 1.0 for w in waits)
    info = response.extensions["sail"]
    assert [a.outcome.reason for a in info.attempts] == ["503", "503", "200"]
    assert request.url == httpx.URL("http://svc/x"), "the caller keeps its own URL"
    assert cluster(mesh).limits.active == 1  # until the body is closed
    response.close()
    assert cluster(mesh).limits.active == 0
    assert cluster(mesh).limits.retries == 0
    assert not recorder.open
    assert [e[0] for e in recorder.events] == ["start", "end"] * 3


def test_the_default_policy_retries_a_connect_failure_once(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh()
    flow, _ = start(mesh)
    first = next(flow)
    assert isinstance(first, Send)
    error = httpx.ConnectError("refused", request=first.request)
    second = flow.send(error)
    if isinstance(second, Sleep):
        second = flow.send(None)
    assert isinstance(second, Send) and second.authority != first.authority
    with pytest.raises(httpx.ConnectError) as raised:
        flow.send(httpx.ConnectError("refused again", request=second.request))
    assert "gave up after 2 attempt(s)" in str(raised.value.__notes__)
    assert cluster(mesh).limits.active == 0


def test_no_retry_past_the_deadline(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh(timeout="1s", retry_policy={**RETRY_5XX, "num_retries": 5})
    flow, _ = start(mesh)
    action = next(flow)
    assert isinstance(action, Send)
    clock.now += 1.5  # the attempt took longer than the route timeout
    with pytest.raises(DeadlineExceeded):
        flow.send(httpx.ReadTimeout("slow", request=action.request))
    assert cluster(mesh).limits.active == 0 and cluster(mesh).limits.retries == 0


def test_each_attempt_gets_what_is_left_of_the_deadline(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh(timeout="2s", retry_policy=RETRY_5XX)
    flow, _ = start(mesh)
    action = next(flow)
    assert isinstance(action, Send)
    assert action.request.headers["x-envoy-expected-rq-timeout-ms"] == "2000"
    clock.now += 0.5
    action = flow.send(answer(503, action.request))
    while not isinstance(action, Send):
        if isinstance(action, Sleep):
            clock.now += action.seconds
        action = flow.send(None)
    left = int(action.request.headers["x-envoy-expected-rq-timeout-ms"])
    assert 900 <= left <= 1500


def test_an_interrupted_backoff_gives_the_retry_back(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh(retry_policy=RETRY_5XX)
    flow, _ = start(mesh)
    action = next(flow)
    assert isinstance(action, Send)
    action = flow.send(answer(503, action.request))
    assert isinstance(action, Close)
    action = flow.send(None)
    assert isinstance(action, Sleep)
    assert cluster(mesh).limits.retries == 0  # admitted; counted once its attempt starts
    with pytest.raises(KeyboardInterrupt):
        flow.throw(KeyboardInterrupt())
    assert cluster(mesh).limits.retries == 0 and cluster(mesh).limits.active == 0


def test_a_cancelled_attempt_is_released_and_reported(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh(retry_policy=RETRY_5XX)
    recorder = Recorder()
    mesh.observe(recorder)
    flow, _ = start(mesh)
    action = next(flow)
    assert isinstance(action, Send)
    with pytest.raises(KeyboardInterrupt):
        flow.throw(KeyboardInterrupt())
    assert cluster(mesh).limits.active == 0
    assert recorder.events[-1] == ("end", action.authority, Local.CANCELLED.value)
    assert not recorder.open


def test_circuit_breaker_overflow_is_sails_error(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh()
    cluster(mesh).limits.max_requests = 1
    first, _ = start(mesh)
    assert isinstance(next(first), Send)
    second, _ = start(mesh)
    with pytest.raises(UpstreamOverflow):
        next(second)
    first.close()  # abandoning the flow releases its attempt
    assert cluster(mesh).limits.active == 0


def test_https_to_a_mesh_host_is_refused_not_downgraded(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh()
    flow, _ = start(mesh, "https://svc/x")
    with pytest.raises(UnsupportedRequest, match="never downgrades"):
        next(flow)


def test_mirrors_carry_the_shadow_host(make_mesh: Any, clock: Clock) -> None:
    mesh = make_mesh(request_mirror_policies=[{"cluster": "shadow"}])
    flow, _ = start(mesh)
    action = next(flow)
    assert isinstance(action, Mirror)
    assert action.authority == "10.0.9.9:80"
    assert action.request.headers["host"] == "svc-shadow"
    assert isinstance(flow.send(None), Send)


HEDGED = {
    "timeout": "5s",
    "retry_policy": {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.3s"},
    "hedge_policy": {"hedge_on_per_try_timeout": True},
}


def test_a_hedge_starts_at_the_per_try_timeout_and_the_first_answer_wins(
    make_mesh: Any, clock: Clock
) -> None:
    mesh = make_mesh(**HEDGED)
    recorder = Recorder()
    mesh.observe(recorder)
    flow, _ = start(mesh)
    launch = next(flow)
    assert isinstance(launch, Launch)
    slow = launch.attempt
    wait = flow.send(None)
    assert isinstance(wait, Wait) and wait.timeout == pytest.approx(0.3)
    clock.now += 0.3
    hedge = flow.send(None)  # the per-try timeout fired: a second attempt, the first goes on
    assert isinstance(hedge, Launch)
    fast = hedge.attempt
    assert fast.endpoint.authority != slow.endpoint.authority
    assert cluster(mesh).limits.active == 2
    wait = flow.send(None)
    assert isinstance(wait, Wait)
    fast.response = answer(200, fast.request)
    with pytest.raises(StopIteration) as done:
        flow.send(fast)
    response = done.value.value
    assert response is fast.response
    # The slow attempt is still out: the shell closes and releases it.
    assert slow.hedge.leftovers() == []
    slow.release()
    response.close()
    assert cluster(mesh).limits.active == 0
    assert not recorder.open
    assert ("end", slow.endpoint.authority, Local.CANCELLED.value) in recorder.events


def test_a_hedged_call_returns_the_kept_failure_when_all_fail(
    make_mesh: Any, clock: Clock
) -> None:
    mesh = make_mesh(**{**HEDGED, "retry_policy": {**HEDGED["retry_policy"], "num_retries": 0}})
    flow, _ = start(mesh)
    launch = next(flow)
    assert isinstance(launch, Launch)
    only: Launched = launch.attempt
    assert isinstance(flow.send(None), Wait)
    only.response = answer(503, only.request)
    with pytest.raises(StopIteration) as done:
        flow.send(only)
    response = done.value.value
    assert response.status_code == 503
    response.close()
    assert cluster(mesh).limits.active == 0


def test_a_listener_with_a_filter_clients_do_not_apply_is_refused(
    tmp_path: Path, clock: Clock
) -> None:
    """A port listener with RBAC used as a client service (a local file can hold one): the
    codec keeps its RBAC for servers, so the data plane refuses to send through it rather
    than skip the policy."""
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"},
    }
    listener = testing.server_listener(
        "127.0.0.1", 8080, name="svc", http_filters=[rbac],
        routes=[testing.route("svc")],
    )
    resources = [listener, testing.eds_cluster("svc"), testing.load_assignment("svc", ENDPOINTS)]
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    with sail.Mesh.local(path, poll_interval=0) as mesh:
        assert "svc" in mesh._dataplane.state.services
        flow, _ = start(mesh)
        with pytest.raises(UnsupportedRequest, match=r"envoy\.filters\.http\.rbac"):
            next(flow)


# -- sail's defaults, with no retry policy and no outlier detection in the config ----------


def drive(mesh: sail.Mesh, reply: Any, method: str = "GET") -> tuple[httpx.Response, list[str]]:
    """One request through the exchange, each `Send` answered by `reply(authority,
    request)` (a response or a transport error), sleeps skipped; the response and the
    authorities sent to."""
    dataplane = mesh._dataplane
    request = httpx.Request(method, "http://svc/x")
    flow = exchange(dataplane, dataplane.state, request, "svc")
    sent: list[str] = []
    result: object = None
    while True:
        try:
            action = flow.send(result)
        except StopIteration as done:
            return done.value, sent
        result = None
        if isinstance(action, Send):
            sent.append(action.authority)
            result = reply(action.authority, action.request)
        else:
            assert isinstance(action, Sleep | Close), action


def dropped(authority: str, request: httpx.Request) -> object:
    if authority == "10.0.0.1:80":
        return httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
    return answer(200, request)


def test_by_default_a_dropped_connection_is_retried_for_an_idempotent_method(
    make_mesh: Any,
) -> None:
    mesh = make_mesh()
    for method in ("GET", "PUT", "DELETE"):
        for _ in range(3):  # round robin: one of them starts on the dropping host
            response, sent = drive(mesh, dropped, method)
            assert response.status_code == 200
            if sent[0] == "10.0.0.1:80":
                assert len(sent) == 2 and sent[1] != sent[0]


def test_by_default_a_dropped_connection_is_not_retried_for_a_post(make_mesh: Any) -> None:
    mesh = make_mesh()
    failures = 0
    for _ in range(3):
        try:
            drive(mesh, dropped, "POST")
        except httpx.ReadError:
            failures += 1  # the server may have acted on it: never sent twice by default
    assert failures == 1


def test_by_default_a_host_refusing_connections_is_ejected_after_five(make_mesh: Any) -> None:
    mesh = make_mesh()

    def refusing(authority: str, request: httpx.Request) -> object:
        if authority == "10.0.0.1:80":
            return httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return answer(200, request)

    first: list[str] = []
    for _ in range(30):
        response, sent = drive(mesh, refusing)
        assert response.status_code == 200  # retried on another host every time
        first.append(sent[0])
    assert cluster(mesh).ejected == {"10.0.0.1:80"}
    assert first.count("10.0.0.1:80") == 5, "five refused connections in a row, then out"
    assert "10.0.0.1:80" not in first[first.index("10.0.0.1:80") + 13:]


def test_by_default_answers_never_eject_a_host(make_mesh: Any) -> None:
    mesh = make_mesh()

    def failing(authority: str, request: httpx.Request) -> object:
        return answer(503 if authority == "10.0.0.1:80" else 200, request)

    for _ in range(30):
        drive(mesh, failing)
    assert cluster(mesh).ejected == frozenset(), "an application's 503s are not the mesh's"
