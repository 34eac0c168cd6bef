"""Fault injection decisions: percentages with an injected `rand`, header control, header
matchers, `upstream_cluster`, `max_active_faults`, and which config a route gets."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from sail.model import (
    ClusterWeight,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    FractionalPercent,
    HeaderMatcher,
    HttpConnectionManager,
    HttpFilter,
    PathMatch,
    PathMatchKind,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    VirtualHost,
)
from sail.resilience.fault import (
    FAULT_TYPE_URL,
    FaultDecision,
    FaultFilter,
    FaultGauge,
    decide,
)
from sail.routing import Router

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.fault"


def draws(*values: float) -> Callable[[], float]:
    """A `rand` returning `values` in turn; fails the test if asked once more."""
    it: Iterator[float] = iter(values)

    def rand() -> float:
        try:
            return next(it)
        except StopIteration:
            pytest.fail("rand() drawn more often than expected")

    return rand


def pct(numerator: int, denominator: int = 100) -> FractionalPercent:
    return FractionalPercent(numerator, denominator)


ALL = FractionalPercent(100)


def abort(
    status: int = 503,
    p: FractionalPercent = ALL,
    *,
    max_active_faults: int | None = None,
    upstream_cluster: str = "",
) -> FaultPolicy:
    return FaultPolicy(
        abort=FaultAbort(http_status=status, percentage=p),
        max_active_faults=max_active_faults,
        upstream_cluster=upstream_cluster,
    )


NO_HEADERS = httpx.Headers()


# -- percentages ------------------------------------------------------------------------


def test_no_policy_or_an_empty_one_injects_nothing() -> None:
    assert decide(None, NO_HEADERS, draws()) is None
    assert decide(FaultPolicy(), NO_HEADERS, draws()) is None


def test_abort_percentage_with_injected_rand() -> None:
    policy = abort(503, pct(25))
    hit = decide(policy, NO_HEADERS, draws(0.2499))
    assert hit is not None and hit.abort and hit.http_status == 503 and hit.delay == 0.0
    assert hit.grpc_status is None
    assert decide(policy, NO_HEADERS, draws(0.25)) is None
    assert decide(abort(503, pct(0)), NO_HEADERS, draws(0.0)) is None
    assert decide(abort(503, pct(100)), NO_HEADERS, draws(0.999999)) is not None


def test_fractions_of_other_denominators() -> None:
    policy = abort(500, pct(500_000, 1_000_000))
    assert decide(policy, NO_HEADERS, draws(0.4999)) is not None
    assert decide(policy, NO_HEADERS, draws(0.5)) is None
    tiny = abort(500, pct(1, 10_000))
    assert decide(tiny, NO_HEADERS, draws(0.00009)) is not None
    assert decide(tiny, NO_HEADERS, draws(0.0001)) is None
    over = abort(500, pct(150))  # a numerator above the denominator is always
    assert decide(over, NO_HEADERS, draws(0.99)) is not None


def test_delay_and_abort_draw_separately_delay_first() -> None:
    policy = FaultPolicy(
        delay=FaultDelay(0.25, pct(50)), abort=FaultAbort(http_status=429, percentage=pct(50))
    )
    only_delay = decide(policy, NO_HEADERS, draws(0.1, 0.9))
    assert only_delay is not None and only_delay.delay == 0.25 and not only_delay.abort
    only_abort = decide(policy, NO_HEADERS, draws(0.9, 0.1))
    assert only_abort is not None and only_abort.delay == 0.0 and only_abort.http_status == 429
    both = decide(policy, NO_HEADERS, draws(0.1, 0.1))
    assert both is not None and both.delay == 0.25 and both.http_status == 429
    assert decide(policy, NO_HEADERS, draws(0.9, 0.9)) is None


def test_grpc_abort_answers_200_with_the_grpc_status() -> None:
    policy = FaultPolicy(abort=FaultAbort(grpc_status=14, percentage=pct(100)))
    decision = decide(policy, NO_HEADERS, draws(0.5))
    assert decision is not None
    assert (decision.http_status, decision.grpc_status) == (200, 14)


def test_fixed_delays_are_whole_milliseconds() -> None:
    def delay(seconds: float) -> float | None:
        decision = decide(FaultPolicy(delay=FaultDelay(seconds, pct(100))), NO_HEADERS, draws(0))
        return None if decision is None else decision.delay

    assert delay(0.0019) == 0.001
    assert delay(1.13) == 1.13  # no float trouble: 1.13 s is 1130 ms
    assert delay(0.0005) is None  # 0 ms: no delay at all, as in Envoy


# -- header control ---------------------------------------------------------------------

HEADER_DELAY = FaultPolicy(delay=FaultDelay(None, pct(100)))
HEADER_ABORT = FaultPolicy(abort=FaultAbort(percentage=pct(100)))


def test_header_delay() -> None:
    assert decide(HEADER_DELAY, NO_HEADERS, draws(0)) is None
    decision = decide(HEADER_DELAY, httpx.Headers({"x-envoy-fault-delay-request": "150"}), draws(0))
    assert decision is not None and decision.delay == 0.15 and not decision.abort
    for bad in ("abc", "-1", "1.5", "", "0", "１２"):
        headers = {"x-envoy-fault-delay-request": bad}  # a dict: httpx refuses non-ASCII
        assert decide(HEADER_DELAY, headers, draws(0)) is None, bad
    lenient = httpx.Headers({"x-envoy-fault-delay-request": " +20 "})
    decision = decide(HEADER_DELAY, lenient, draws(0))
    assert decision is not None and decision.delay == 0.02


def test_header_percentage_lowers_but_never_raises() -> None:
    policy = FaultPolicy(delay=FaultDelay(None, pct(50)))
    headers = {"x-envoy-fault-delay-request": "10"}
    lowered = httpx.Headers({**headers, "x-envoy-fault-delay-request-percentage": "20"})
    assert decide(policy, lowered, draws(0.19)) is not None
    assert decide(policy, lowered, draws(0.2)) is None
    raised = httpx.Headers({**headers, "x-envoy-fault-delay-request-percentage": "90"})
    assert decide(policy, raised, draws(0.49)) is not None
    assert decide(policy, raised, draws(0.5)) is None  # capped at the configured 50 %
    junk = httpx.Headers({**headers, "x-envoy-fault-delay-request-percentage": "x"})
    assert decide(policy, junk, draws(0.49)) is not None  # ignored: the configured 50 %


def test_header_percentage_only_for_header_controlled_faults() -> None:
    fixed = abort(503, pct(50))
    headers = httpx.Headers({"x-envoy-fault-abort-request-percentage": "0"})
    assert decide(fixed, headers, draws(0.1)) is not None


def test_header_abort_http_then_grpc() -> None:
    def status(**headers: str) -> tuple[int | None, int | None] | None:
        sent = httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()})
        decision = decide(HEADER_ABORT, sent, draws(0))
        return None if decision is None else (decision.http_status, decision.grpc_status)

    assert status() is None
    assert status(x_envoy_fault_abort_request="503") == (503, None)
    assert status(x_envoy_fault_abort_request="200") == (200, None)
    assert status(x_envoy_fault_abort_request="600") is None
    assert status(x_envoy_fault_abort_request="199") is None
    assert status(x_envoy_fault_abort_grpc_request="14") == (200, 14)
    assert status(x_envoy_fault_abort_grpc_request="17") is None
    # an invalid HTTP status falls back to the gRPC header, as in Envoy
    assert status(x_envoy_fault_abort_request="x", x_envoy_fault_abort_grpc_request="4") == (
        200,
        4,
    )
    assert status(x_envoy_fault_abort_request="500", x_envoy_fault_abort_grpc_request="4") == (
        500,
        None,
    )


def test_abort_percentage_header() -> None:
    policy = FaultPolicy(abort=FaultAbort(percentage=pct(100)))
    headers = httpx.Headers(
        {"x-envoy-fault-abort-request": "503", "x-envoy-fault-abort-request-percentage": "30"}
    )
    assert decide(policy, headers, draws(0.29)) is not None
    assert decide(policy, headers, draws(0.3)) is None


def test_only_the_first_value_of_a_repeated_header_counts() -> None:
    headers = httpx.Headers(
        [("x-envoy-fault-abort-request", "503"), ("x-envoy-fault-abort-request", "404")]
    )
    decision = decide(HEADER_ABORT, headers, draws(0))
    assert decision is not None and decision.http_status == 503


# -- which requests ---------------------------------------------------------------------


def test_header_matchers_limit_the_requests() -> None:
    canary = HeaderMatcher("x-canary", StringMatcher(StringMatchKind.EXACT, "1"))
    policy = FaultPolicy(abort=FaultAbort(http_status=500, percentage=pct(100)), headers=(canary,))
    assert decide(policy, httpx.Headers({"X-Canary": "1"}), draws(0)) is not None
    assert decide(policy, httpx.Headers({"x-canary": "2"}), draws()) is None
    assert decide(policy, NO_HEADERS, draws()) is None  # no draw for a request not matched
    plain = {"x-canary": "1"}  # a dict with lower-case keys works too
    assert decide(policy, plain, draws(0)) is not None


def test_upstream_cluster_limits_the_requests() -> None:
    policy = abort(503, pct(100), upstream_cluster="c1")
    assert decide(policy, NO_HEADERS, draws(0), cluster="c1") is not None
    assert decide(policy, NO_HEADERS, draws(), cluster="c2") is None
    assert decide(policy, NO_HEADERS, draws()) is None


# -- max_active_faults ------------------------------------------------------------------


def test_max_active_faults_counts_requests_inside_a_fault() -> None:
    gauge = FaultGauge()
    policy = abort(503, pct(100), max_active_faults=2)
    first = decide(policy, NO_HEADERS, draws(0), gauge=gauge)
    second = decide(policy, NO_HEADERS, draws(0), gauge=gauge)
    assert first is not None and second is not None and gauge.active == 2
    assert decide(policy, NO_HEADERS, draws(0), gauge=gauge) is None  # overflow
    assert gauge.active == 2
    first.finish()
    first.finish()  # idempotent
    assert gauge.active == 1
    third = decide(policy, NO_HEADERS, draws(0), gauge=gauge)
    assert third is not None and gauge.active == 2
    second.finish()
    third.finish()
    assert gauge.active == 0


def test_max_active_faults_zero_injects_nothing_and_unlimited_counts() -> None:
    gauge = FaultGauge()
    assert decide(abort(max_active_faults=0), NO_HEADERS, draws(0), gauge=gauge) is None
    decisions = [decide(abort(), NO_HEADERS, draws(0), gauge=gauge) for _ in range(50)]
    assert gauge.active == 50
    for d in decisions:
        assert d is not None
        d.finish()
    assert gauge.active == 0


def test_no_gauge_no_counting() -> None:
    decision = decide(abort(max_active_faults=0), NO_HEADERS, draws(0))
    assert decision is not None  # nothing to count against
    decision.finish()


def test_gauge_is_exact_across_threads() -> None:
    gauge = FaultGauge()
    policy = abort(503, pct(100))

    def work() -> None:
        for _ in range(2000):
            decision = decide(policy, NO_HEADERS, lambda: 0.0, gauge=gauge)
            assert decision is not None
            decision.finish()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert gauge.active == 0


# -- the filter and its route configs ---------------------------------------------------


def hcm(*filters: HttpFilter) -> HttpConnectionManager:
    return HttpConnectionManager(rds_name="r", http_filters=(*filters, HttpFilter("r", ROUTER)))


def route_config(route_faults: tuple[tuple[str, FaultPolicy | None], ...] = ()) -> RouteConfig:
    everything = RouteMatch(PathMatch(PathMatchKind.PREFIX, "/"))
    split = RouteAction(
        weighted_clusters=(
            ClusterWeight("a", 1, typed_per_filter_config=((NAME, abort(418)),)),
            ClusterWeight("b", 1),
        )
    )
    return RouteConfig(
        "r",
        (
            VirtualHost(
                "vh",
                ("*",),
                (
                    Route(
                        RouteMatch(PathMatch(PathMatchKind.PREFIX, "/split")),
                        split,
                        typed_per_filter_config=route_faults,
                    ),
                    Route(
                        everything, RouteAction(cluster="c"), typed_per_filter_config=route_faults
                    ),
                ),
                typed_per_filter_config=((NAME, abort(502)),),
            ),
        ),
        typed_per_filter_config=((NAME, abort(501)), ("other", abort(500))),
    )


def test_from_hcm() -> None:
    assert FaultFilter.from_hcm(hcm()) is None
    own = abort(500)
    found = FaultFilter.from_hcm(hcm(HttpFilter(NAME, FAULT_TYPE_URL, config=own)))
    assert found is not None and found.name == NAME and found.policy == own
    assert found.gauge.active == 0


def test_most_specific_config_wins() -> None:
    faults = FaultFilter(NAME, abort(599))
    router = Router.build(route_config(route_faults=((NAME, abort(503)),)))

    def status(path: str, rand: float) -> int | None:
        result = router.route("svc", path, NO_HEADERS, lambda: rand)
        decision = faults.decide(result, NO_HEADERS, lambda: 0.0)
        assert decision is not None
        decision.finish()
        return decision.http_status

    assert status("/", 0.5) == 503  # route over virtual host and route configuration
    assert status("/split", 0.1) == 418  # weighted cluster "a" over its route
    assert status("/split", 0.9) == 503  # "b" has none: the route's
    plain = Router.build(route_config())
    result = plain.route("svc", "/", NO_HEADERS)
    assert faults.policy_for(result) == abort(502)  # virtual host over route configuration


def test_filter_config_applies_without_route_configs_and_disabled_wins() -> None:
    faults = FaultFilter(NAME, abort(599))
    bare = RouteConfig(
        "r",
        (
            VirtualHost(
                "vh",
                ("*",),
                (
                    Route(
                        RouteMatch(PathMatch(PathMatchKind.PREFIX, "/")), RouteAction(cluster="c")
                    ),
                ),
            ),
        ),
    )
    result = Router.build(bare).route("svc", "/", NO_HEADERS)
    decision = faults.decide(result, NO_HEADERS, lambda: 0.0)
    assert isinstance(decision, FaultDecision) and decision.http_status == 599
    decision.finish()
    disabled = Router.build(route_config(route_faults=((NAME, None),)))
    result = disabled.route("svc", "/", NO_HEADERS)
    assert faults.policy_for(result) is None
    assert faults.decide(result, NO_HEADERS, draws()) is None
    assert faults.gauge.active == 0


def test_filter_gauge_is_shared_across_routes() -> None:
    faults = FaultFilter(NAME, None)
    limited = abort(503, pct(100), max_active_faults=1)
    router = Router.build(route_config(route_faults=((NAME, limited),)))
    result = router.route("svc", "/", NO_HEADERS)
    first = faults.decide(result, NO_HEADERS, lambda: 0.0)
    assert first is not None
    assert faults.decide(result, NO_HEADERS, lambda: 0.0) is None
    first.finish()
    assert faults.decide(result, NO_HEADERS, lambda: 0.0) is not None
