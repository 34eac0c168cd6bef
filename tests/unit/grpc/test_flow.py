"""The gRPC flows (`sail.grpc._flow`) driven by hand, as a shell drives them: fake attempt
failures, a fake clock, no grpcio server. Each test checks what the flow says to do next,
the counters the call holds, and that the observers hear every attempt end once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import sail
from sail.errors import DeadlineExceeded, NoHealthyUpstream, UnknownService, UpstreamOverflow
from sail.grpc._core import ChannelCore
from sail.grpc._errors import StatusError
from sail.grpc._flow import OUTSIDE, Done, Fail, Sleep, Wait
from sail.grpc._replay import REPLAY_LIMIT, Replay, read
from tests.unit.grpc.grpc_helpers import (
    FAULT_TYPE,
    RETRY,
    Clock,
    Observer,
    RpcFailure,
    assert_clean,
    cluster,
    connect_failure,
    core_of,
    fixed_jitter,
    hosts_active,
    sent,
    slept,
    stream,
    unary,
    unavailable,
)

MakeMesh = Callable[..., sail.Mesh]


# -- unary: retries, back-off, budget ------------------------------------------------------------


def test_retries_go_to_untried_endpoints_after_growing_back_offs(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = unary(core_of(mesh))
    first = sent(flow.start())
    fixed_jitter(flow, 0.5)
    assert first.number == 1 and first.timeout is None
    assert cluster(mesh).limits.active == 1  # the attempt counts while it is out
    assert hosts_active(mesh) == {first.endpoint.authority: 1}

    back_off = slept(flow.failed(unavailable()))
    assert back_off.seconds == pytest.approx(0.05)  # half of 0.1 s: retry 1
    assert cluster(mesh).limits.active == 0
    assert cluster(mesh).limits.retries == 0  # not counted while it backs off
    clock.now += back_off.seconds
    second = sent(flow.waited())
    assert second.number == 2
    assert cluster(mesh).limits.retries == 1  # counted while its attempt is out

    back_off = slept(flow.failed(unavailable()))
    assert back_off.seconds == pytest.approx(0.1)  # half of 0.2 s: retry 2
    clock.now += back_off.seconds
    third = sent(flow.waited())
    assert third.number == 3

    done = flow.answered(b"reply")
    assert isinstance(done, Done) and done.value == b"reply"
    tried = [a.endpoint.authority for a in (first, second, third)]
    assert len(set(tried)) == 3, "previous_hosts: each retry on an endpoint not tried yet"
    info = flow.info
    assert info is not None and info.service == "svc:50051" and info.cluster == "svc"
    assert [a.endpoint for a in info.attempts] == tried
    assert observer.reasons == ["200 grpc-status 14", "200 grpc-status 14", "200"]
    assert not observer.open
    assert_clean(mesh)


def test_the_last_failure_is_the_attempts_own_error_with_the_attempts_noted(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = unary(core_of(mesh))
    action = flow.start()
    errors = [unavailable(f"no {n}") for n in range(3)]
    for error in errors:
        sent(action)
        action = flow.failed(error)
        if isinstance(action, Sleep):
            clock.now += action.seconds
            action = flow.waited()
    assert isinstance(action, Fail)
    assert action.error is errors[-1]  # grpcio's error, as grpcio raised it
    assert "sail: gave up after 3 attempt(s)" in action.error.__notes__[0]
    assert len(observer.events) == 6 and not observer.open
    assert_clean(mesh)


def test_without_a_policy_only_a_connect_failure_is_retried_once(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh()
    flow = unary(core_of(mesh))
    first = sent(flow.start())
    action = flow.failed(connect_failure())
    if isinstance(action, Sleep):
        clock.now += action.seconds
        action = flow.waited()
    second = sent(action)
    assert second.endpoint != first.endpoint
    final = flow.failed(connect_failure())
    assert isinstance(final, Fail) and isinstance(final.error, RpcFailure)
    assert_clean(mesh)

    answered = unary(core_of(mesh))
    sent(answered.start())
    error = unavailable()
    final = answered.failed(error)  # a server's answer: never retried without a policy
    assert isinstance(final, Fail) and final.error is error
    assert_clean(mesh)


def test_a_retry_needs_room_in_the_budget_and_gives_it_back(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY},
                     cluster={"circuit_breakers": {"thresholds": [{"max_retries": 1}]}})
    core = core_of(mesh)
    a, b = unary(core), unary(core)
    sent(a.start())
    sent(b.start())
    slept(a.failed(unavailable()))  # a is admitted; its back-off holds no retry
    assert cluster(mesh).limits.retries == 0
    sent(a.waited())
    assert cluster(mesh).limits.retries == 1  # a's retry is out: it holds the one retry
    refused = b.failed(unavailable())
    assert isinstance(refused, Fail), "no room in the budget: no retry"
    assert cluster(mesh).limits.retries == 1  # held until the retry's attempt ends
    assert isinstance(a.answered(b"ok"), Done)
    assert_clean(mesh)


def test_a_circuit_breaker_fails_the_next_attempt_and_gives_the_retry_back(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY},
                     cluster={"circuit_breakers": {"thresholds": [{"max_requests": 1}]}})
    core = core_of(mesh)
    a = unary(core)
    sent(a.start())
    slept(a.failed(unavailable()))
    other = unary(core)
    sent(other.start())  # takes the one request slot during a's back-off
    refused = a.waited()
    assert isinstance(refused, Fail) and isinstance(refused.error, UpstreamOverflow)
    assert "max_requests" in str(refused.error)
    assert isinstance(other.answered(b"ok"), Done)
    assert_clean(mesh)


def test_no_endpoint_left_for_a_retry_fails_the_call(
    make_mesh: MakeMesh, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    flow = unary(core_of(mesh))
    sent(flow.start())
    slept(flow.failed(unavailable()))

    def nothing(*args: Any) -> Any:
        raise NoHealthyUpstream("cluster 'svc': no healthy endpoint")

    monkeypatch.setattr("sail.grpc._flow.repick", nothing)
    final = flow.waited()
    assert isinstance(final, Fail) and isinstance(final.error, NoHealthyUpstream)
    assert_clean(mesh)


# -- deadlines ------------------------------------------------------------------------------------


def test_each_attempt_gets_what_is_left_of_the_deadline(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    flow = unary(core_of(mesh), timeout=1.0)
    first = sent(flow.start())
    fixed_jitter(flow, 0.5)
    assert first.timeout == pytest.approx(1.0)
    clock.now += 0.4
    back_off = slept(flow.failed(unavailable()))
    clock.now += back_off.seconds
    second = sent(flow.waited())
    assert second.timeout == pytest.approx(0.6 - back_off.seconds)
    clock.now += 0.6  # past the deadline: a failure now is the deadline's
    final = flow.failed(unavailable())
    assert isinstance(final, Fail) and isinstance(final.error, DeadlineExceeded)
    assert "the deadline passed after 2 attempt(s)" in str(final.error)
    assert_clean(mesh)


def test_a_back_off_that_would_end_past_the_deadline_is_not_waited(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    flow = unary(core_of(mesh), timeout=1.0)
    sent(flow.start())
    fixed_jitter(flow, 0.5)
    clock.now += 0.99  # 10 ms left, the back-off would be 50 ms
    error = unavailable()
    final = flow.failed(error)
    assert isinstance(final, Fail) and final.error is error
    assert_clean(mesh)


def test_the_deadline_passed_during_the_back_off_stops_the_retry(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    flow = unary(core_of(mesh), timeout=1.0)
    sent(flow.start())
    fixed_jitter(flow, 0.5)
    slept(flow.failed(unavailable()))
    clock.now += 2.0  # the process slept longer than asked
    final = flow.waited()
    assert isinstance(final, Fail) and isinstance(final.error, DeadlineExceeded)
    assert_clean(mesh)


def test_an_attempt_timer_that_fired_is_a_timeout(make_mesh: MakeMesh, clock: Clock) -> None:
    """DEADLINE_EXCEEDED after the whole per-try timeout is grpcio's own timer (a local
    timeout, not an answer): kept as grpcio raised it, not replaced by sail's."""
    mesh = make_mesh(route={"retry_policy": {**RETRY, "retry_on": "deadline-exceeded"}})
    flow = unary(core_of(mesh), timeout=0.5)
    first = sent(flow.start())
    clock.now += first.timeout or 0
    error = RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    final = flow.failed(error)
    assert isinstance(final, Fail) and final.error is error
    info = flow.info
    assert info is not None and info.attempts[0].outcome.reason == "timeout"


def test_max_stream_duration_caps_the_deadline(make_mesh: MakeMesh, clock: Clock) -> None:
    mesh = make_mesh(route={"max_stream_duration": {"max_stream_duration": "0.3s"}})
    assert sent(unary(core_of(mesh)).start()).timeout == pytest.approx(0.3)
    assert sent(unary(core_of(mesh), timeout=10).start()).timeout == pytest.approx(0.3)
    assert sent(unary(core_of(mesh), timeout=0.1).start()).timeout == pytest.approx(0.1)


# -- the prelude: faults, bad input, outside, discovery -------------------------------------


def fault_filter(**fault: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE, **fault}}


def gauge(mesh: sail.Mesh) -> int:
    faults = mesh._dataplane.state.services["svc:50051"].faults
    assert faults is not None
    return int(faults.gauge.active)


def test_a_fault_abort_fails_with_its_status_and_sends_nothing(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    abort = {"abort": {"grpc_status": 8, "percentage": {"numerator": 100}}}
    mesh = make_mesh(http_filters=[fault_filter(**abort)])
    mesh.observe(observer)
    final = unary(core_of(mesh)).start()
    assert isinstance(final, Fail) and isinstance(final.error, StatusError)
    assert final.error.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fault filter abort" in str(final.error)
    assert observer.events == [] and gauge(mesh) == 0
    assert_clean(mesh)


def test_a_fault_delay_is_slept_before_the_first_attempt(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    delay = {"delay": {"fixed_delay": "0.3s", "percentage": {"numerator": 100}}}
    mesh = make_mesh(http_filters=[fault_filter(**delay)])
    flow = unary(core_of(mesh))
    assert slept(flow.start()).seconds == pytest.approx(0.3)
    assert gauge(mesh) == 1 and cluster(mesh).limits.active == 0
    clock.now += 0.3
    sent(flow.waited())
    assert gauge(mesh) == 0
    assert isinstance(flow.answered(b"ok"), Done)
    assert_clean(mesh)


def test_bad_method_path_unknown_service_and_outside(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh()
    bad = unary(core_of(mesh), method="Get").start()
    assert isinstance(bad, Fail) and isinstance(bad.error, StatusError)
    assert bad.error.status is grpc.StatusCode.UNIMPLEMENTED
    unknown = unary(core_of(mesh, "nosuch:50051")).start()
    assert isinstance(unknown, Fail) and isinstance(unknown.error, UnknownService)
    assert "'nosuch:50051'" in str(unknown.error)
    assert unary(core_of(mesh, "127.0.0.1:50051")).start() is OUTSIDE
    assert stream(core_of(mesh, "localhost:1")).start() is OUTSIDE


class Discovering(ChannelCore):
    """A target the control plane has just been asked about: `locate()` says to wait."""

    event = threading.Event()
    answer: str = "known"

    def locate(self) -> Any:
        return self.event

    def settled(self) -> Any:
        if self.answer == "unknown":
            raise UnknownService(f"service {self.service!r}: the mesh has no listener for it")
        return None if self.answer == "outside" else self.dataplane.state


def test_a_first_call_waits_for_the_control_plane(make_mesh: MakeMesh, clock: Clock) -> None:
    mesh = make_mesh()
    core = Discovering(mesh._seam, "svc:50051")
    flow = unary(core, timeout=3.0)
    wait = flow.start()
    assert isinstance(wait, Wait) and wait.event is core.event
    assert wait.seconds == 3.0  # the call's timeout, under the discovery timeout
    assert isinstance(unary(core).start(), Wait)
    assert unary(core).start().seconds == mesh._seam.discovery_timeout  # type: ignore[union-attr]
    sent(flow.waited())
    assert isinstance(flow.answered(b"ok"), Done)
    core.answer = "outside"
    flow = unary(core)
    flow.start()
    assert flow.waited() is OUTSIDE
    core.answer = "unknown"
    flow = unary(core)
    flow.start()
    final = flow.waited()
    assert isinstance(final, Fail) and isinstance(final.error, UnknownService)
    assert_clean(mesh)


# -- streams: committed at the first message -----------------------------------------------------


def test_a_stream_is_retried_until_its_first_message_then_committed(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = stream(core_of(mesh))
    first = sent(flow.start())
    back_off = slept(flow.failed(unavailable()))
    flow.closed(first)  # the failed attempt's inner call is over
    clock.now += back_off.seconds
    second = sent(flow.waited())
    assert not flow.committed
    flow.received()
    assert flow.committed
    assert observer.reasons == ["200 grpc-status 14", "200"]
    assert cluster(mesh).limits.active == 1  # the stream is open until its call ends
    flow.received()  # later messages change nothing
    error = unavailable("broke mid-stream")
    final = flow.failed(error)
    assert isinstance(final, Fail) and final.error is error  # no retry after the commit
    assert not getattr(error, "__notes__", None)
    flow.closed(second)
    flow.closed(second)  # once per attempt, however often the shell says it
    assert observer.reasons == ["200 grpc-status 14", "200"] and not observer.open
    assert_clean(mesh)


def test_a_stream_that_ends_without_a_message_is_a_success(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = stream(core_of(mesh))
    only = sent(flow.start())
    flow.received()  # the end of the stream, OK
    flow.closed(only)
    assert observer.reasons == ["200"]
    assert_clean(mesh)


# -- replayed requests ---------------------------------------------------------------------------


def test_a_retry_sends_the_buffered_requests_again(make_mesh: MakeMesh, clock: Clock) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    pulled: list[bytes] = []

    def requests() -> Any:
        for part in (b"1", b"2", b"3"):
            pulled.append(part)
            yield part

    replay = Replay(requests(), threading.Lock())
    flow = unary(core_of(mesh), replay=replay)
    sent(flow.start())
    first = read(replay)
    assert [next(first), next(first)] == [b"1", b"2"]  # the attempt fails mid-way
    back_off = slept(flow.failed(unavailable()))
    clock.now += back_off.seconds
    sent(flow.waited())
    assert list(read(replay)) == [b"1", b"2", b"3"]
    assert pulled == [b"1", b"2", b"3"], "the source is read once"
    assert isinstance(flow.answered(b"ok"), Done)
    assert_clean(mesh)


def test_past_the_replay_limit_a_call_is_not_retried(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    big = b"x" * (REPLAY_LIMIT // 2 + 1)
    replay = Replay(iter([big, big, b"tail"]), threading.Lock())
    flow = stream(core_of(mesh), replay=replay)
    attempt = sent(flow.start())
    assert list(read(replay)) == [big, big, b"tail"]
    assert replay.overflowed and replay.kept == []
    error = connect_failure()  # even a failure that sent nothing: what was read is gone
    final = flow.failed(error)
    assert isinstance(final, Fail) and final.error is error
    flow.closed(attempt)
    assert_clean(mesh)


# -- cancellation, at each stage -----------------------------------------------------------------


def test_cancelled_in_flight_the_attempt_is_abandoned(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = unary(core_of(mesh))
    sent(flow.start())
    flow.cancel()
    flow.cancel()  # idempotent
    assert observer.reasons == ["cancelled"] and not observer.open
    assert_clean(mesh)
    late = flow.answered(b"too late")  # the shell's attempt ended after all
    assert isinstance(late, Fail) and isinstance(late.error, StatusError)
    assert late.error.status is grpc.StatusCode.CANCELLED
    assert observer.reasons == ["cancelled"]  # not ended a second time
    assert_clean(mesh)


def test_cancelled_during_a_back_off_the_retry_never_starts(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = unary(core_of(mesh))
    sent(flow.start())
    slept(flow.failed(unavailable()))
    flow.cancel()
    assert cluster(mesh).limits.retries == 0
    assert cluster(mesh).limits.stats.rq_retry == 0  # admitted, never started
    assert observer.reasons == ["200 grpc-status 14"]  # ended once, nothing abandoned
    after = flow.waited()
    assert isinstance(after, Fail) and isinstance(after.error, StatusError)
    assert_clean(mesh)


def test_cancelled_during_the_fault_delay_the_fault_ends(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    delay = {"delay": {"fixed_delay": "5s", "percentage": {"numerator": 100}}}
    mesh = make_mesh(http_filters=[fault_filter(**delay)])
    mesh.observe(observer)
    flow = unary(core_of(mesh))
    slept(flow.start())
    flow.cancel()
    assert gauge(mesh) == 0 and observer.events == []
    assert isinstance(flow.waited(), Fail)
    assert_clean(mesh)


def test_cancelled_during_discovery_or_before_the_start(
    make_mesh: MakeMesh, clock: Clock
) -> None:
    mesh = make_mesh()
    flow = unary(Discovering(mesh._seam, "svc:50051"))
    assert isinstance(flow.start(), Wait)
    flow.cancel()
    assert isinstance(flow.waited(), Fail)
    early = unary(core_of(mesh))
    early.cancel()
    assert isinstance(early.start(), Fail)
    assert_clean(mesh)


def test_a_stream_cancelled_before_its_commit_is_abandoned(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = stream(core_of(mesh))
    attempt = sent(flow.start())
    flow.cancel()
    assert observer.reasons == ["cancelled"]
    assert cluster(mesh).limits.active == 1  # until the inner call says it is over
    error = RpcFailure(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
    final = flow.failed(error)
    assert isinstance(final, Fail) and final.error is error  # not retried
    flow.closed(attempt)
    assert observer.reasons == ["cancelled"] and not observer.open
    assert_clean(mesh)


def test_a_stream_cancelled_after_its_commit_changes_nothing(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = stream(core_of(mesh))
    attempt = sent(flow.start())
    flow.received()
    flow.cancel()
    assert observer.reasons == ["200"]  # ended once, at the commit
    flow.closed(attempt)
    assert_clean(mesh)


def test_a_stream_cancelled_during_its_back_off(
    make_mesh: MakeMesh, clock: Clock, observer: Observer
) -> None:
    mesh = make_mesh(route={"retry_policy": RETRY})
    mesh.observe(observer)
    flow = stream(core_of(mesh))
    attempt = sent(flow.start())
    slept(flow.failed(unavailable()))
    flow.closed(attempt)
    flow.cancel()
    assert isinstance(flow.waited(), Fail)
    assert observer.reasons == ["200 grpc-status 14"] and not observer.open
    assert_clean(mesh)
