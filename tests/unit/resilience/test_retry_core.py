"""The sans-I/O retry core: classification, back-off, budgets, deadlines, the call state
machine. Property tests (hypothesis) for the arithmetic."""

from __future__ import annotations

import random

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sail.errors import DeadlineExceeded, UpstreamOverflow
from sail.model import (
    CircuitBreakers,
    Cluster,
    HeaderMatcher,
    PathMatch,
    PathMatchKind,
    ResetHeader,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    Thresholds,
    VirtualHost,
)
from sail.resilience.call import Call
from sail.resilience.classify import Local, Outcome, is_failure, retry_condition
from sail.resilience.deadline import call_deadline, inherited_deadline
from sail.resilience.limits import ClusterLimits
from sail.resilience.retry import (
    DEFAULT_POLICY,
    backoff,
    rate_limited_wait,
    set_testing,
)
from sail.routing import Router

# -- classification ----------------------------------------------------------------------------

CASES = [
    # (retry_on, outcome, expected condition)
    ({"5xx"}, Outcome(503), "5xx"),
    ({"5xx"}, Outcome(500), "5xx"),
    ({"5xx"}, Outcome(404), None),
    ({"5xx"}, Outcome(local=Local.RESET), "5xx"),
    ({"5xx"}, Outcome(local=Local.TIMEOUT), "5xx"),
    ({"gateway-error"}, Outcome(502), "gateway-error"),
    ({"gateway-error"}, Outcome(500), None),
    ({"gateway-error"}, Outcome(local=Local.CONNECT_FAILURE), "gateway-error"),
    ({"reset"}, Outcome(503), None),
    ({"reset"}, Outcome(local=Local.RESET), "reset"),
    ({"connect-failure"}, Outcome(local=Local.CONNECT_FAILURE), "connect-failure"),
    ({"connect-failure"}, Outcome(local=Local.RESET), None),
    ({"refused-stream"}, Outcome(local=Local.REFUSED_STREAM), "refused-stream"),
    ({"refused-stream"}, Outcome(local=Local.CONNECT_FAILURE), None),
    ({"retriable-4xx"}, Outcome(409), "retriable-4xx"),
    ({"retriable-4xx"}, Outcome(429), None),
    ({"unavailable"}, Outcome(200, grpc_status=14), "unavailable"),
    ({"unavailable"}, Outcome(200, grpc_status=13), None),
    ({"internal", "cancelled"}, Outcome(200, grpc_status=1), "cancelled"),
    ({"resource-exhausted"}, Outcome(200, grpc_status=8), "resource-exhausted"),
    ({"deadline-exceeded"}, Outcome(200, grpc_status=4), "deadline-exceeded"),
    (set(), Outcome(503), None),
]


@pytest.mark.parametrize(("retry_on", "outcome", "expected"), CASES)
def test_retry_condition(retry_on: set[str], outcome: Outcome, expected: str | None) -> None:
    assert retry_condition(outcome, RetryPolicy(retry_on=frozenset(retry_on))) == expected


def test_retriable_status_codes_and_headers() -> None:
    policy = RetryPolicy(
        retry_on=frozenset({"retriable-status-codes", "retriable-headers"}),
        retriable_status_codes=frozenset({429}),
        retriable_headers=(
            HeaderMatcher("x-retry", string_match=StringMatcher(StringMatchKind.EXACT, "yes")),
        ),
    )
    assert retry_condition(Outcome(429), policy) == "retriable-status-codes"
    assert retry_condition(Outcome(200, headers={"x-retry": "yes"}), policy) == (
        "retriable-headers"
    )
    assert retry_condition(Outcome(200, headers={"x-retry": "no"}), policy) is None
    assert retry_condition(Outcome(428), policy) is None


def test_is_failure() -> None:
    assert is_failure(Outcome(503))
    assert is_failure(Outcome(local=Local.CONNECT_FAILURE))
    assert is_failure(Outcome(200, grpc_status=14))
    assert not is_failure(Outcome(200, grpc_status=5))  # NOT_FOUND is the caller's
    assert not is_failure(Outcome(404))


def test_only_unsent_failures_never_reached_the_server() -> None:
    assert not Local.CONNECT_FAILURE.reached_server
    assert not Local.REFUSED_STREAM.reached_server
    assert Local.RESET.reached_server and Local.TIMEOUT.reached_server


# -- policy selection and back-off ---------------------------------------------------------------

def _route(policy: RetryPolicy | None) -> Route:
    return Route(RouteMatch(PathMatch(PathMatchKind.PREFIX, "/")),
                 RouteAction(cluster="c", retry_policy=policy))


def test_route_policy_wins_over_virtual_host_whole() -> None:
    vh_policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=4)
    route_policy = RetryPolicy(retry_on=frozenset({"reset"}))

    def resolved(route: Route, vh_retry: RetryPolicy | None) -> RetryPolicy | None:
        vh = VirtualHost("v", ("*",), (route,), retry_policy=vh_retry)
        result = Router.build(RouteConfig("r", (vh,))).route("svc", "/", {})
        return result.policy.retry

    assert resolved(_route(route_policy), vh_policy) is route_policy
    assert resolved(_route(None), vh_policy) is vh_policy
    assert resolved(_route(None), None) is None  # the transport then applies DEFAULT_POLICY
    assert DEFAULT_POLICY.retry_on == {"connect-failure", "refused-stream"}


@given(
    base=st.floats(0.001, 1.0),
    factor=st.floats(1.0, 20.0),
    retry=st.integers(1, 80),
    r=st.floats(0.0, 0.999999),
)
def test_backoff_bounds(base: float, factor: float, retry: int, r: float) -> None:
    """Retry n waits in [0, min(base * 2**(n-1), max)), max defaulting to 10 x base."""
    explicit = RetryPolicy(base_interval=base, max_interval=base * factor)
    wait = backoff(explicit, retry, lambda: r)
    assert 0 <= wait <= min(base * 2 ** (retry - 1), base * factor)
    default = RetryPolicy(base_interval=base)
    assert 0 <= backoff(default, retry, lambda: r) <= min(base * 2 ** (retry - 1), 10 * base)


def test_backoff_doubles_until_the_cap() -> None:
    policy = RetryPolicy(base_interval=0.025)
    ceilings = [backoff(policy, n, lambda: 1.0) for n in range(1, 7)]
    assert ceilings == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25])


def test_rate_limited_wait() -> None:
    policy = RetryPolicy(
        reset_headers=(ResetHeader("retry-after"), ResetHeader("x-ratelimit-reset",
                                                               "unix_timestamp")),
        rate_limited_max_interval=10.0,
    )
    assert rate_limited_wait(policy, {"retry-after": "2"}, lambda: 0.0) == 2.0
    assert rate_limited_wait(policy, {"retry-after": "2"}, lambda: 0.999) == pytest.approx(3.0,
                                                                                            0.01)
    # too long, so skipped; the next header is used
    headers = {"retry-after": "60", "x-ratelimit-reset": "1005"}
    assert rate_limited_wait(policy, headers, lambda: 0.0, lambda: 1000.0) == 5.0
    assert rate_limited_wait(policy, {"retry-after": "soon"}, lambda: 0.0) is None
    assert rate_limited_wait(policy, {}, lambda: 0.0) is None
    assert rate_limited_wait(RetryPolicy(), {"retry-after": "1"}, lambda: 0.0) is None


# -- budgets and circuit breakers ----------------------------------------------------------------

def _limits(**thresholds: object) -> ClusterLimits:
    cluster = Cluster("c", circuit_breakers=CircuitBreakers((Thresholds(**thresholds),)))  # type: ignore[arg-type]
    return ClusterLimits("c", cluster)


@given(
    active=st.integers(0, 10_000),
    percent=st.floats(0.0, 100.0),
    minimum=st.integers(0, 100),
)
def test_retry_budget_arithmetic(active: int, percent: float, minimum: int) -> None:
    limits = _limits(retry_budget=RetryBudget(percent, minimum))
    limits.active = active
    expected = max(minimum, int(percent * active / 100))
    assert limits.retry_limit() == expected
    granted = 0
    while limits.try_retry():
        granted += 1
        assert granted <= expected
    assert granted == expected == limits.retries
    assert limits.stats.rq_retry_overflow == 1


def test_default_is_a_budget_and_max_retries_is_flat() -> None:
    default = ClusterLimits("c")
    default.active = 100
    assert default.retry_limit() == 20
    default.active = 1
    assert default.retry_limit() == 3
    flat = _limits(max_retries=5)
    flat.active = 1000
    assert flat.retry_limit() == 5
    both = _limits(max_retries=5, retry_budget=RetryBudget(50.0, 1))
    both.active = 100
    assert both.retry_limit() == 50  # the budget wins, as in Envoy


def test_overflow_thresholds() -> None:
    limits = _limits(max_connections=1, max_pending_requests=1, max_requests=100)
    assert limits.overflow() is None
    limits.active = 1
    assert limits.overflow() is None  # the second waits as pending
    limits.active = 2
    assert "max_pending_requests (1)" in (limits.overflow() or "")
    limits = _limits(max_requests=2)
    limits.active = 2
    assert "max_requests (2)" in (limits.overflow() or "")


def test_configure_keeps_counts() -> None:
    limits = ClusterLimits("c")
    limits.active = 7
    limits.configure(Cluster("c", circuit_breakers=CircuitBreakers((Thresholds(max_requests=3),))))
    assert limits.active == 7 and limits.max_requests == 3


# -- the call state machine ----------------------------------------------------------------------

RETRY_5XX = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=3, base_interval=0.025)


def test_call_retries_until_success() -> None:
    limits = ClusterLimits("c")
    call = Call(RETRY_5XX, limits, None, rand=lambda: 0.5)
    call.begin(0.0)
    assert call.end("a:1", Outcome(503), 0.0) == pytest.approx(0.0125)
    call.release()
    assert limits.retries == 0  # admitted, not counted while it backs off
    call.begin(0.1)
    assert limits.retries == 1 and limits.stats.rq_retry == 1  # counted while it is out
    assert call.end("b:1", Outcome(200), 0.1) is None
    assert limits.retries == 0 and limits.stats.rq_retry_success == 1
    call.release()
    assert limits.active == 0
    assert call.tried == {"a:1", "b:1"}


def test_call_stops_after_num_retries_and_on_non_retriable() -> None:
    call = Call(RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=1), ClusterLimits("c"), None)
    call.begin(0)
    assert call.end("a", Outcome(503), 0) is not None
    call.release()
    call.begin(0)
    assert call.end("b", Outcome(503), 0) is None
    other = Call(RETRY_5XX, ClusterLimits("c"), None)
    other.begin(0)
    assert other.end("a", Outcome(404), 0) is None


def test_unreplayable_body_is_retried_only_if_never_sent() -> None:
    call = Call(RETRY_5XX, ClusterLimits("c"), None, replayable=False)
    call.begin(0)
    assert call.end("a", Outcome(503), 0) is None
    call = Call(RETRY_5XX, ClusterLimits("c"), None, replayable=False)
    call.begin(0)
    assert call.end("a", Outcome(local=Local.CONNECT_FAILURE), 0) is not None


def test_overflow_and_deadline_raise_before_an_attempt() -> None:
    limits = _limits(max_requests=1)
    limits.active = 1
    with pytest.raises(UpstreamOverflow, match="max_requests"):
        Call(RETRY_5XX, limits, None).begin(0)
    assert limits.stats.rq_overflow == 1
    with pytest.raises(DeadlineExceeded):
        Call(RETRY_5XX, ClusterLimits("c"), 1.0).begin(1.0)


def test_testing_mode_turns_retries_off() -> None:
    set_testing(True)
    try:
        call = Call(RETRY_5XX, ClusterLimits("c"), None)
        call.begin(0)
        assert call.end("a", Outcome(503), 0) is None
        set_testing(True, attempts=3)
        call = Call(RETRY_5XX, ClusterLimits("c"), None, rand=lambda: 0.9)
        call.begin(0)
        assert call.end("a", Outcome(503), 0) == 0.0  # no waiting in tests
    finally:
        set_testing(False)
    with pytest.raises(ValueError, match="attempts"):
        set_testing(True, attempts=0)


@given(
    timeout=st.floats(0.01, 5.0),
    per_try=st.one_of(st.none(), st.floats(0.001, 2.0)),
    base=st.floats(0.001, 0.5),
    durations=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=12),
    seed=st.integers(0, 2**32),
)
def test_deadline_caps_every_attempt_and_backoff(
    timeout: float, per_try: float | None, base: float, durations: list[float], seed: int
) -> None:
    """Simulated on a fake clock, every attempt failing after `durations[i]` (cut short by
    its timeout): no attempt starts at or after the deadline, no attempt's timeout runs past
    it, and the call is over by the deadline (plus nothing: the clock is exact)."""
    rng = random.Random(seed)
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=10, base_interval=base,
                         per_try_timeout=per_try)
    call = Call(policy, ClusterLimits("c"), timeout, rand=rng.random)
    now = 0.0
    for duration in durations:
        try:
            attempt_timeout = call.begin(now)
        except DeadlineExceeded:
            assert now >= timeout
            break
        assert now < timeout
        assert attempt_timeout is not None and now + attempt_timeout <= timeout + 1e-9
        took = min(duration, attempt_timeout)
        now += took
        outcome = Outcome(local=Local.TIMEOUT) if took < duration else Outcome(503)
        wait = call.end(f"h{rng.randrange(3)}", outcome, now)
        call.release()
        if wait is None:
            break
        assert now + wait < timeout
        now += wait
    assert now <= timeout + 1e-9


def test_call_deadline_sources() -> None:
    assert call_deadline(2.0, {}, 100.0) == 102.0
    assert call_deadline(None, {}, 0.0) == 15.0  # Envoy's default
    assert call_deadline(0.0, {}, 0.0) is None
    assert call_deadline(2.0, {"x-envoy-upstream-rq-timeout-ms": "500"}, 0.0) == 0.5
    assert call_deadline(2.0, {"x-envoy-expected-rq-timeout-ms": "300",
                               "x-envoy-upstream-rq-timeout-ms": "500"}, 0.0) == 0.3
    assert call_deadline(2.0, {"x-envoy-upstream-rq-timeout-ms": "-5"}, 0.0) == 2.0
    headers = httpx.Headers({"X-Envoy-Expected-Rq-Timeout-Ms": "250", "a": "b"})
    assert call_deadline(2.0, headers, 0.0) == 0.25  # the one-pass read of httpx.Headers
    token = inherited_deadline.set(1.0)
    try:
        assert call_deadline(2.0, {}, 0.0) == 1.0
        assert call_deadline(0.0, {}, 0.0) == 1.0
    finally:
        inherited_deadline.reset(token)


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        (RetryPolicy(retry_on=frozenset({"retriable-4xx"})), Outcome(409)),
        (RetryPolicy(retry_on=frozenset({"retriable-status-codes"}),
                     retriable_status_codes=frozenset({429})), Outcome(429)),
        (RetryPolicy(retry_on=frozenset({"retriable-headers"}), retriable_headers=(
            HeaderMatcher("x-retry", string_match=StringMatcher(StringMatchKind.EXACT, "yes")),
        )), Outcome(200, headers={"x-retry": "yes"})),
    ],
)
def test_answered_responses_are_retried_when_the_policy_says_so(
    policy: RetryPolicy, outcome: Outcome
) -> None:
    limits = ClusterLimits("c")
    call = Call(policy, limits, None, rand=lambda: 0.0)
    call.begin(0)
    assert call.end("a", outcome, 0) == 0.0
    call.release()
    call.begin(0)
    assert call.end("b", Outcome(200), 0) is None
    assert limits.stats.rq_retry_success == 1


def test_backing_off_retries_leave_the_budget_to_retries_in_flight() -> None:
    """Four calls fail at once on a budget of 3: all four are admitted, because none of
    them holds a slot while it backs off (Envoy would refuse the fourth)."""
    limits = ClusterLimits("c")  # the default budget: 20 % of active, at least 3
    calls = [Call(RETRY_5XX, limits, None, rand=lambda: 0.5) for _ in range(4)]
    for call in calls:
        call.begin(0.0)
    waits = [call.end("a:1", Outcome(503), 0.0) for call in calls]
    assert None not in waits and limits.stats.rq_retry_overflow == 0
    for call in calls:
        call.release()
    assert limits.retries == 0
    for call in calls[:3]:
        call.begin(0.1)
    assert limits.retries == 3
    late = Call(RETRY_5XX, limits, None, rand=lambda: 0.5)
    late.begin(0.1)
    assert late.end("a:1", Outcome(503), 0.1) is None, "three retries out: no room"
    assert limits.stats.rq_retry_overflow == 1
