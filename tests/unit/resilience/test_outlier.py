"""Outlier detection with Envoy's semantics: a fake clock, scripted results and draws.

The detector starts at t=1000 with Envoy's defaults unless a test says otherwise, so the
interval ticks fall at 1010, 1020, ... (every 10 s).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail.model import OutlierDetection
from sail.resilience.outlier import (
    EjectionType,
    OutlierDetector,
    Result,
    grpc_to_http_status,
)

START = 1000.0
HOSTS = [f"10.0.0.{i}:8080" for i in range(1, 11)]  # ten: 10 % lets one host out
A, B, C = HOSTS[0], HOSTS[1], HOSTS[2]


class Clock:
    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Draws:
    """Scripted `rand`: returns the given values in order, and fails when out of them."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        assert self.values, "an unexpected random draw"
        return self.values.pop(0)


class Harness:
    def __init__(self, hosts: list[str] = HOSTS, rand: Draws | None = None, **config: Any) -> None:
        self.clock = Clock()
        self.rand = rand or Draws()
        self.changes: list[tuple[float, frozenset[str]]] = []
        self.det = OutlierDetector(
            OutlierDetection(**config),
            hosts,
            on_change=lambda ejected: self.changes.append((self.clock.t, ejected)),
            clock=self.clock,
            rand=self.rand,
        )

    @property
    def ejected(self) -> frozenset[str]:
        return self.det.ejected

    def status(self, host: str, code: int, n: int = 1) -> None:
        for _ in range(n):
            self.det.put_http_status(host, code)

    def result(self, host: str, result: Result, n: int = 1) -> None:
        for _ in range(n):
            self.det.put_result(host, result)

    def run_until(self, t: float, step: float = 1.0) -> None:
        """Advance the clock to `t` in steps, calling `maybe_tick` at each, as requests do."""
        while self.clock.t < t:
            self.clock.t = min(t, self.clock.t + step)
            self.det.maybe_tick(self.clock.t)

    def uneject_time(self, host: str, limit: float = 10_000.0) -> float:
        """Run a second at a time (on whole seconds, so every tick is seen when it falls)
        until `host` is back; return when that was."""
        while host in self.ejected:
            assert self.clock.t < limit, f"{host} never came back"
            self.run_until(math.floor(self.clock.t) + 1.0)
        return self.clock.t

    def load(self, host: str, ok: int, failed: int, code: int = 500) -> None:
        """`ok` 200s and `failed` `code`s, the failures spread evenly among the successes."""
        total, done = ok + failed, 0
        for i in range(total):
            if (i + 1) * failed // total > done:
                self.status(host, code)
                done += 1
            else:
                self.status(host, 200)

    def enforced(self, kind: EjectionType) -> int:
        return self.det.stats.ejections_enforced[kind]

    def detected(self, kind: EjectionType) -> int:
        return self.det.stats.ejections_detected[kind]


# -- consecutive errors -----------------------------------------------------------------


def test_consecutive_5xx_ejects_at_the_threshold() -> None:
    h = Harness()
    h.status(A, 500, 4)
    assert h.ejected == frozenset()
    h.status(A, 502)
    assert h.ejected == {A}
    assert h.changes == [(START, frozenset({A}))]
    stats = h.det.stats
    assert stats.ejections_active == 1
    assert stats.ejections_enforced_total == 1
    assert h.enforced(EjectionType.CONSECUTIVE_5XX) == 1
    assert h.detected(EjectionType.CONSECUTIVE_5XX) == 1


def test_a_non_5xx_response_resets_the_count() -> None:
    h = Harness()
    for code in (404, 200, 302, 499):
        h.status(A, 503, 4)
        h.status(A, code)
    h.status(A, 503, 4)
    assert h.ejected == frozenset()
    assert h.detected(EjectionType.CONSECUTIVE_5XX) == 0


def test_consecutive_5xx_zero_never_ejects() -> None:
    h = Harness(consecutive_5xx=0)
    h.status(A, 500, 50)
    assert h.ejected == frozenset()


def test_gateway_failures_are_detected_but_not_enforced_by_default() -> None:
    h = Harness(consecutive_5xx=100)
    h.status(A, 503, 5)
    assert h.detected(EjectionType.CONSECUTIVE_GATEWAY_FAILURE) == 1
    assert h.ejected == frozenset()  # enforcing_consecutive_gateway_failure defaults to 0


def test_consecutive_gateway_failure_counts_only_502_503_504() -> None:
    h = Harness(consecutive_5xx=100, enforcing_consecutive_gateway_failure=100)
    h.status(A, 504, 4)
    h.status(A, 500)  # a 5xx, but not a gateway error: the gateway count restarts
    h.status(A, 502, 4)
    assert h.ejected == frozenset()
    h.status(A, 503)
    assert h.ejected == {A}
    assert h.enforced(EjectionType.CONSECUTIVE_GATEWAY_FAILURE) == 1
    assert h.enforced(EjectionType.CONSECUTIVE_5XX) == 0


def test_gateway_check_comes_first_when_both_thresholds_are_reached() -> None:
    h = Harness(enforcing_consecutive_gateway_failure=100)
    h.status(A, 503, 5)
    assert h.enforced(EjectionType.CONSECUTIVE_GATEWAY_FAILURE) == 1
    # The 5xx threshold was reached by the same response, but the host was already out.
    assert h.detected(EjectionType.CONSECUTIVE_5XX) == 0


def test_local_origin_failures_count_as_5xx_without_the_split() -> None:
    h = Harness()
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 3)  # reported as 503
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)  # reports nothing: no reset
    h.result(A, Result.LOCAL_ORIGIN_TIMEOUT)  # reported as 504
    assert h.ejected == frozenset()
    h.result(A, Result.EXT_ORIGIN_REQUEST_FAILED)  # reported as 500
    assert h.ejected == {A}
    assert h.enforced(EjectionType.CONSECUTIVE_5XX) == 1
    assert h.detected(EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE) == 0


def test_put_result_status_wins_without_the_split() -> None:
    h = Harness(success_rate_minimum_hosts=2, success_rate_request_volume=2)
    for _ in range(5):
        h.det.put_result(A, Result.LOCAL_ORIGIN_TIMEOUT, 200)
    assert h.ejected == frozenset()
    h.result(B, Result.LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL)
    h.result(B, Result.EXT_ORIGIN_REQUEST_SUCCESS)
    h.det.tick(START + 1)
    # Five successes for A, two for B, all in the external bucket.
    assert h.det.stats.success_rate_average == 100.0


def test_split_counts_local_origin_failures_apart() -> None:
    h = Harness(split_external_local_origin_errors=True)
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 2)
    h.result(A, Result.LOCAL_ORIGIN_TIMEOUT, 2)
    h.status(A, 500, 4)  # external errors: their own count, not the local one
    assert h.ejected == frozenset()
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED)
    assert h.ejected == {A}
    assert h.enforced(EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE) == 1
    assert h.detected(EjectionType.CONSECUTIVE_5XX) == 0


def test_split_connect_success_resets_the_local_count() -> None:
    h = Harness(split_external_local_origin_errors=True)
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 4)
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 4)
    h.status(A, 503, 4)
    assert h.ejected == frozenset()
    h.result(A, Result.EXT_ORIGIN_REQUEST_FAILED)  # a 503 with the split
    assert h.ejected == {A}
    assert h.enforced(EjectionType.CONSECUTIVE_5XX) == 1


def test_split_a_cut_off_body_turns_its_success_into_a_failure_of_the_run() -> None:
    h = Harness(split_external_local_origin_errors=True)
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 2)
    for _ in range(2):  # headers (a success that resets the run), then the body is cut
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
        h.status(A, 200)
        h.det.put_cut_off(A)
    assert h.ejected == frozenset()
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
    h.det.put_cut_off(A)  # the fifth local-origin failure in a row
    assert h.ejected == {A}
    assert h.enforced(EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE) == 1


def test_a_cut_off_body_is_a_503_without_the_split() -> None:
    h = Harness()
    for _ in range(4):
        h.status(A, 200)
        h.det.put_cut_off(A)
    assert h.ejected == frozenset()  # each 200 broke the run of 5xx
    h.det.put_cut_off(A)
    h.status(A, 503, 3)
    h.det.put_cut_off(A)
    assert h.ejected == {A}
    assert h.enforced(EjectionType.CONSECUTIVE_5XX) == 1


def test_split_local_threshold_and_enforcement() -> None:
    h = Harness(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
        enforcing_consecutive_local_origin_failure=0,
    )
    h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 2)
    assert h.detected(EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE) == 1
    assert h.ejected == frozenset()


def test_reports_for_unknown_hosts_are_ignored() -> None:
    h = Harness()
    h.status("10.9.9.9:80", 500, 10)
    h.result("10.9.9.9:80", Result.LOCAL_ORIGIN_CONNECT_FAILED, 10)
    assert h.ejected == frozenset()


# -- enforcement and caps -----------------------------------------------------------------


def test_enforcing_percentage_is_a_draw_and_the_count_restarts() -> None:
    draws = Draws(0.30, 0.29)  # 30 >= 30: not enforced; 29 < 30: enforced
    h = Harness(rand=draws, enforcing_consecutive_5xx=30)
    h.status(A, 500, 5)
    assert h.ejected == frozenset()
    assert h.detected(EjectionType.CONSECUTIVE_5XX) == 1
    h.status(A, 500, 4)  # the count restarted at the failed draw
    assert h.ejected == frozenset()
    h.status(A, 500)
    assert h.ejected == {A}
    assert draws.calls == 2


def test_no_draw_at_0_or_100_percent() -> None:
    h = Harness(rand=Draws(), enforcing_consecutive_5xx=0)
    h.status(A, 500, 5)
    assert h.ejected == frozenset()
    h = Harness(rand=Draws())
    h.status(A, 500, 5)
    assert h.ejected == {A}


def test_max_ejection_percent_caps_ejections() -> None:
    h = Harness()  # ten hosts, 10 %: one host may be out
    h.status(A, 500, 5)
    h.status(B, 500, 5)
    assert h.ejected == {A}
    assert h.det.stats.ejections_overflow == 1
    assert h.detected(EjectionType.CONSECUTIVE_5XX) == 2


def test_max_ejection_percent_is_checked_with_the_new_host_counted() -> None:
    h = Harness(hosts=HOSTS[:4], max_ejection_percent=50)
    h.status(A, 500, 5)
    h.status(B, 500, 5)  # 2 of 4 = 50 %: allowed
    h.status(C, 500, 5)  # 3 of 4 = 75 %: refused
    assert h.ejected == {A, B}


def test_fewer_than_ten_hosts_eject_nothing_at_10_percent() -> None:
    # Envoy's trap: one of five is 20 %, above the default 10 %.
    h = Harness(hosts=HOSTS[:5])
    h.status(A, 500, 5)
    assert h.ejected == frozenset()
    assert h.det.stats.ejections_overflow == 1


def test_always_eject_one_host() -> None:
    h = Harness(hosts=HOSTS[:5], always_eject_one_host=True)
    h.status(A, 500, 5)
    h.status(B, 500, 5)
    assert h.ejected == {A}
    h = Harness(hosts=HOSTS[:2], max_ejection_percent=0, always_eject_one_host=True)
    h.status(B, 500, 5)
    assert h.ejected == {B}


# -- ejection time ----------------------------------------------------------------------


def test_unejection_waits_for_the_first_tick_after_the_ejection_time() -> None:
    h = Harness()
    h.clock.t = START + 1
    h.status(A, 500, 5)  # ejected at 1001 for 30 s: back at the tick of 1040, not 1031
    h.run_until(START + 39)
    assert h.ejected == {A}
    h.run_until(START + 40)
    assert h.ejected == frozenset()
    assert h.changes[-1] == (START + 40, frozenset())
    assert h.det.stats.ejections_active == 0


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    h = Harness(base_ejection_time=30.0, max_ejection_time=100.0)
    durations = []
    for _ in range(6):
        h.clock.t += 0.5
        ejected_at = h.clock.t
        h.status(A, 500, 5)
        assert h.ejected == {A}
        durations.append(h.uneject_time(A) - ejected_at)
    # Back at the first tick (on the 10 s grid) after 30, 60, 90, then 100 s (the cap).
    assert durations == [39.5, 69.5, 99.5, 109.5, 109.5, 109.5]


def test_the_multiplier_comes_down_on_quiet_intervals() -> None:
    h = Harness(base_ejection_time=30.0)
    h.clock.t += 0.5
    h.status(A, 500, 5)
    assert h.uneject_time(A) == 1040.0  # multiplier 1
    h.status(A, 500, 5)  # at once: no tick a whole interval after the return came between
    assert h.uneject_time(A) == 1100.0  # multiplier 2: 60 s
    # Each tick a whole interval or more after the return lowers the multiplier by one.
    h.run_until(1110.5)
    h.status(A, 500, 5)
    assert h.uneject_time(A) == 1180.0  # multiplier 1 -> 2: 60 s from 1110.5, tick 1180
    h.run_until(1200.5)  # ticks at 1190 and 1200: multiplier 2 -> 0
    h.status(A, 500, 5)
    assert h.uneject_time(A) == 1240.0  # multiplier 0 -> 1: 30 s from 1200.5, tick 1240


def test_jitter_is_added_to_the_ejection_time() -> None:
    h = Harness(rand=Draws(0.5), max_ejection_time_jitter=8.0)
    h.status(A, 500, 5)  # at 1000: 30 s + 4 s of jitter -> back at the tick of 1040
    h.run_until(1030)
    assert h.ejected == {A}
    assert h.uneject_time(A) == 1040.0


def test_unejection_resets_the_consecutive_counts() -> None:
    h = Harness()
    h.status(A, 500, 5)
    h.status(A, 500, 9)  # while ejected the count runs on, past the threshold
    h.uneject_time(A)
    h.status(A, 500, 4)
    assert h.ejected == frozenset()
    h.status(A, 500)
    assert h.ejected == {A}


def test_an_idle_gap_is_caught_up_at_once() -> None:
    h = Harness(base_ejection_time=30.0)
    h.status(A, 500, 5)
    h.clock.t = 1200.0
    h.det.maybe_tick(h.clock.t)  # ticks 1010..1200 in one call
    assert h.ejected == frozenset()
    assert h.changes[-1] == (1200.0, frozenset())
    h.status(A, 500, 5)  # back at 1030, quiet since: multiplier down to 0, so 30 s
    assert h.uneject_time(A) == 1230.0


def test_maybe_tick_does_nothing_until_due() -> None:
    h = Harness(success_rate_minimum_hosts=1, success_rate_request_volume=1)
    h.load(A, ok=10, failed=0)
    h.det.maybe_tick(START + 9.999)
    assert h.det.stats.success_rate_average == -1.0
    h.det.maybe_tick(START + 10)
    assert h.det.stats.success_rate_average == 100.0


def test_tick_restarts_the_interval() -> None:
    h = Harness(success_rate_minimum_hosts=1, success_rate_request_volume=1)
    h.load(A, ok=10, failed=0)
    h.det.tick(START + 3)
    assert h.det.stats.success_rate_average == 100.0
    h.det.maybe_tick(START + 12.9)
    assert h.det.stats.success_rate_average == 100.0  # not due: the last sweep's values
    h.det.maybe_tick(START + 13)
    assert h.det.stats.success_rate_average == -1.0  # a sweep over an empty interval


# -- success rate -----------------------------------------------------------------------


def test_success_rate_ejects_a_statistical_outlier_at_the_tick() -> None:
    # Envoy's example: {50, 100, 100, 100, 100}: mean 90, stdev 20, threshold 90 - 1.9 * 20.
    h = Harness(hosts=HOSTS[:5], max_ejection_percent=20)
    h.load(A, ok=50, failed=50)
    for host in HOSTS[1:5]:
        h.load(host, ok=100, failed=0)
    assert h.ejected == frozenset()
    h.run_until(START + 10)
    assert h.ejected == {A}
    assert h.det.stats.success_rate_average == 90.0
    assert h.det.stats.success_rate_ejection_threshold == pytest.approx(52.0)
    assert h.enforced(EjectionType.SUCCESS_RATE) == 1


def test_success_rate_needs_enough_hosts_with_enough_requests() -> None:
    h = Harness(hosts=HOSTS[:5], max_ejection_percent=20)
    h.load(A, ok=50, failed=50)
    for host in HOSTS[1:4]:
        h.load(host, ok=100, failed=0)
    h.load(HOSTS[4], ok=99, failed=0)  # one short of request_volume
    h.run_until(START + 10)
    assert h.ejected == frozenset()
    assert h.det.stats.success_rate_average == -1.0


def test_success_rate_judges_each_interval_alone() -> None:
    h = Harness(hosts=HOSTS[:5], max_ejection_percent=20, consecutive_5xx=0)
    for host in HOSTS[:5]:
        h.load(host, ok=60, failed=0)
    h.run_until(START + 10)
    h.load(A, ok=10, failed=50)
    for host in HOSTS[1:5]:
        h.load(host, ok=60, failed=0)
    h.run_until(START + 20)  # 60 requests per interval: never 100 in one
    assert h.ejected == frozenset()


def test_success_rate_enforcement_and_stdev_factor() -> None:
    h = Harness(hosts=HOSTS[:5], max_ejection_percent=20, enforcing_success_rate=0)
    h.load(A, ok=50, failed=50)
    for host in HOSTS[1:5]:
        h.load(host, ok=100, failed=0)
    h.run_until(START + 10)
    assert h.ejected == frozenset()
    assert h.detected(EjectionType.SUCCESS_RATE) == 1
    # A factor of 3: threshold 90 - 60 = 30, above nobody.
    h = Harness(hosts=HOSTS[:5], max_ejection_percent=20, success_rate_stdev_factor=3000)
    h.load(A, ok=50, failed=50)
    for host in HOSTS[1:5]:
        h.load(host, ok=100, failed=0)
    h.run_until(START + 10)
    assert h.ejected == frozenset()


def test_ejected_hosts_are_left_out_of_the_statistics() -> None:
    h = Harness(hosts=HOSTS[:6], max_ejection_percent=50)
    h.status(HOSTS[5], 500, 5)  # out by consecutive 5xx
    h.load(HOSTS[5], ok=0, failed=100)
    h.load(A, ok=50, failed=50)
    for host in HOSTS[1:5]:
        h.load(host, ok=100, failed=0)
    h.run_until(START + 10)
    assert h.det.stats.success_rate_average == 90.0
    assert h.ejected == {A, HOSTS[5]}


def test_local_origin_success_rate_with_the_split() -> None:
    h = Harness(hosts=HOSTS[:5], max_ejection_percent=20, split_external_local_origin_errors=True)
    for _ in range(50):
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED)
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)  # never 5 failures in a row
    for host in HOSTS[1:5]:
        h.result(host, Result.LOCAL_ORIGIN_CONNECT_SUCCESS, 100)
    h.run_until(START + 10)
    assert h.ejected == {A}
    assert h.enforced(EjectionType.SUCCESS_RATE_LOCAL_ORIGIN) == 1
    assert h.det.stats.local_origin_success_rate_average == pytest.approx(93.333, abs=1e-3)
    assert h.det.stats.success_rate_average == -1.0  # no external requests


def test_local_origin_success_rate_enforcement() -> None:
    h = Harness(
        hosts=HOSTS[:5],
        max_ejection_percent=20,
        split_external_local_origin_errors=True,
        enforcing_local_origin_success_rate=0,
    )
    for _ in range(50):
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED)
    for host in HOSTS[1:5]:
        h.result(host, Result.LOCAL_ORIGIN_CONNECT_SUCCESS, 100)
    h.run_until(START + 10)
    assert h.ejected == frozenset()
    assert h.detected(EjectionType.SUCCESS_RATE_LOCAL_ORIGIN) == 1


# -- failure percentage -----------------------------------------------------------------


def fp_harness(**config: Any) -> Harness:
    return Harness(
        hosts=HOSTS[:5],
        max_ejection_percent=100,
        consecutive_5xx=0,
        enforcing_success_rate=0,
        enforcing_failure_percentage=100,
        **config,
    )


def test_failure_percentage_ejects_at_the_threshold() -> None:
    h = fp_harness()
    h.load(A, ok=15, failed=85)  # 85 % failed: ejected (>= threshold)
    h.load(B, ok=16, failed=84)  # 84 %: not
    for host in HOSTS[2:5]:
        h.load(host, ok=50, failed=0)
    h.run_until(START + 10)
    assert h.ejected == {A}
    assert h.enforced(EjectionType.FAILURE_PERCENTAGE) == 1


def test_failure_percentage_needs_volume_and_hosts() -> None:
    h = fp_harness()
    h.load(A, ok=4, failed=45)  # 49 requests: below failure_percentage_request_volume
    for host in HOSTS[1:5]:
        h.load(host, ok=50, failed=0)
    h.run_until(START + 10)
    assert h.ejected == frozenset()
    h = fp_harness(failure_percentage_minimum_hosts=6)
    h.load(A, ok=0, failed=100)
    for host in HOSTS[1:5]:
        h.load(host, ok=100, failed=0)
    h.run_until(START + 10)
    assert h.ejected == frozenset()


def test_failure_percentage_is_off_by_default() -> None:
    h = Harness(
        hosts=HOSTS[:5], max_ejection_percent=100, consecutive_5xx=0, enforcing_success_rate=0
    )
    h.load(A, ok=10, failed=90)
    for host in HOSTS[1:5]:
        h.load(host, ok=50, failed=0)
    h.run_until(START + 10)
    assert h.ejected == frozenset()
    assert h.detected(EjectionType.FAILURE_PERCENTAGE) == 1


def test_local_origin_failure_percentage() -> None:
    h = fp_harness(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=0,
        enforcing_failure_percentage_local_origin=100,
    )
    for _ in range(5):
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
        h.result(A, Result.LOCAL_ORIGIN_CONNECT_FAILED, 9)  # 90 % failed
    for host in HOSTS[1:5]:
        h.result(host, Result.LOCAL_ORIGIN_CONNECT_SUCCESS, 50)
    h.run_until(START + 10)
    assert h.ejected == {A}
    assert h.enforced(EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN) == 1


def test_a_host_is_ejected_once_per_sweep() -> None:
    h = Harness(
        hosts=HOSTS[:5],
        max_ejection_percent=100,
        consecutive_5xx=0,
        enforcing_failure_percentage=100,
    )
    h.load(A, ok=10, failed=90)
    for host in HOSTS[1:5]:
        h.load(host, ok=100, failed=0)
    h.run_until(START + 10)
    assert h.ejected == {A}
    assert h.detected(EjectionType.SUCCESS_RATE) == 1
    assert h.detected(EjectionType.FAILURE_PERCENTAGE) == 1
    assert h.det.stats.ejections_enforced_total == 1


# -- host set, config, callback ---------------------------------------------------------


def test_update_hosts_keeps_state_for_staying_hosts() -> None:
    h = Harness(hosts=HOSTS[:10])
    h.status(A, 500, 5)
    h.status(B, 500, 4)
    h.det.update_hosts([A, B, *HOSTS[3:10], "10.0.1.1:8080"])
    assert h.ejected == {A}
    assert h.det.hosts == {A, B, *HOSTS[3:10], "10.0.1.1:8080"}
    h.uneject_time(A)
    h.status(B, 500)  # B's count survived the update
    assert h.ejected == {B}


def test_update_hosts_forgets_departed_hosts() -> None:
    h = Harness()
    h.status(A, 500, 5)
    assert h.uneject_time(A) == 1030.0
    h.status(A, 500, 5)  # multiplier 2
    h.det.update_hosts(HOSTS[1:])
    assert h.ejected == frozenset()
    assert h.changes[-1] == (1030.0, frozenset())
    assert h.det.stats.ejections_active == 0
    h.status(A, 500, 5)  # no longer a host: ignored
    h.det.update_hosts(HOSTS)
    h.status(A, 500, 4)  # back afresh: no count, no ejection history
    assert h.ejected == frozenset()
    h.status(A, 500)
    assert h.uneject_time(A) == 1060.0  # multiplier 1: 30 s


def test_configure_keeps_state() -> None:
    h = Harness()
    h.status(A, 500, 5)
    h.det.configure(OutlierDetection(base_ejection_time=5.0, consecutive_5xx=2))
    assert h.ejected == {A}
    assert h.uneject_time(A) == 1010.0  # 5 s now, so the first tick
    h.status(B, 500, 2)
    assert h.ejected == {B}


def test_on_change_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: frozenset[str]) -> None:
        raise RuntimeError("boom")

    det = OutlierDetector(OutlierDetection(), HOSTS, on_change=broken, clock=Clock())
    with caplog.at_level(logging.ERROR, "sail.resilience"):
        for _ in range(5):
            det.put_http_status(A, 500)
    assert det.ejected == {A}
    assert "on_change" in caplog.text


def test_grpc_status_mapping() -> None:
    assert grpc_to_http_status(0) == 200
    assert grpc_to_http_status(14) == 503
    assert grpc_to_http_status(4) == 504
    assert grpc_to_http_status(13) == 500
    assert grpc_to_http_status(8) == 429
    assert grpc_to_http_status(99) == 500


# -- properties -------------------------------------------------------------------------

codes = st.sampled_from([200, 200, 404, 500, 503])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("status"), st.integers(0, 9), codes),
        st.tuples(st.just("many"), st.integers(0, 9), codes),  # ten of them
        st.tuples(st.just("many"), st.integers(0, 9), codes),
        st.tuples(st.just("many"), st.integers(0, 9), codes),
        st.tuples(st.just("result"), st.integers(0, 9), st.sampled_from(list(Result))),
        st.tuples(st.just("wait"), st.integers(1, 40), st.just(0)),
    ),
    max_size=300,
)


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[str, int, Any]]:
    """Interval after interval of traffic to every host, some hosts worse than others, so
    that success rate and failure percentage have something to judge."""
    script: list[tuple[str, int, Any]] = []
    for _ in range(draw(st.integers(1, 12))):
        for host in range(10):
            bad = draw(st.sampled_from([0, 0, 0, 1, 2, 4]))  # of four batches of ten
            script += [("many", host, 500)] * bad + [("many", host, 200)] * (4 - bad)
        if draw(st.booleans()):
            script.append(("result", draw(st.integers(0, 9)), draw(st.sampled_from(Result))))
        script.append(("wait", draw(st.integers(1, 35)), 0))
    return script


scripts = st.one_of(ops, traffic())
configs = st.builds(
    OutlierDetection,
    consecutive_5xx=st.sampled_from([0, 1, 3, 5]),  # 0: never
    consecutive_gateway_failure=st.sampled_from([0, 1, 3, 5]),
    consecutive_local_origin_failure=st.sampled_from([0, 1, 3, 5]),
    enforcing_consecutive_gateway_failure=st.sampled_from([0, 50, 100]),
    enforcing_failure_percentage=st.sampled_from([0, 100]),
    split_external_local_origin_errors=st.booleans(),
    success_rate_minimum_hosts=st.integers(1, 5),
    success_rate_request_volume=st.integers(1, 10),
    success_rate_stdev_factor=st.sampled_from([500, 1000, 1900]),
    failure_percentage_threshold=st.sampled_from([50, 85]),
    failure_percentage_minimum_hosts=st.integers(1, 5),
    failure_percentage_request_volume=st.integers(1, 10),
    max_ejection_percent=st.integers(0, 100),
    always_eject_one_host=st.booleans(),
    base_ejection_time=st.sampled_from([5.0, 30.0]),
    max_ejection_time_jitter=st.sampled_from([0.0, 3.0]),
)


def apply(det: OutlierDetector, clock: Clock, op: tuple[str, int, Any]) -> None:
    kind, a, b = op
    if kind == "status":
        det.put_http_status(HOSTS[a], b)
    elif kind == "many":
        for _ in range(10):
            det.put_http_status(HOSTS[a], b)
    elif kind == "result":
        det.put_result(HOSTS[a], b)
    else:
        clock.t += a


@settings(max_examples=200, deadline=None)
@given(config=configs, script=scripts, hosts=st.integers(1, 10), seed=st.integers(0, 1000))
def test_never_more_ejected_than_max_ejection_percent_allows(
    config: OutlierDetection, script: list[tuple[str, int, Any]], hosts: int, seed: int
) -> None:
    clock = Clock()
    names = HOSTS[:hosts]
    det = OutlierDetector(config, names, clock=clock, rand=random.Random(seed).random)
    allowed = max(
        int(config.max_ejection_percent * hosts // 100),
        1 if config.always_eject_one_host else 0,
    )
    for op in script:
        apply(det, clock, op)
        det.maybe_tick(clock.t)
        assert len(det.ejected) <= allowed
        assert det.ejected <= set(names)
        assert det.stats.ejections_active == len(det.ejected)


@settings(max_examples=150, deadline=None)
@given(config=configs, script=scripts, seed=st.integers(0, 1000))
def test_sparse_ticks_decide_as_a_tick_every_interval(
    config: OutlierDetection, script: list[tuple[str, int, Any]], seed: int
) -> None:
    """Calling `maybe_tick` only when something happens (after idle gaps) ejects and
    un-ejects exactly as calling it at every interval does."""
    dense_clock, sparse_clock = Clock(), Clock()
    dense = OutlierDetector(config, HOSTS, clock=dense_clock, rand=random.Random(seed).random)
    sparse = OutlierDetector(config, HOSTS, clock=sparse_clock, rand=random.Random(seed).random)
    for op in script:
        if op[0] == "wait":
            for _ in range(op[1]):
                dense_clock.t += 1
                dense.maybe_tick(dense_clock.t)
            sparse_clock.t += op[1]
        else:
            sparse.maybe_tick(sparse_clock.t)
            apply(dense, dense_clock, op)
            apply(sparse, sparse_clock, op)
        sparse.maybe_tick(sparse_clock.t)
        assert sparse.ejected == dense.ejected


@settings(max_examples=200, deadline=None)
@given(config=configs, script=scripts, seed=st.integers(0, 1000))
def test_put_response_is_a_connect_success_then_the_status(
    config: OutlierDetection, script: list[tuple[str, int, Any]], seed: int
) -> None:
    """`put_response`, the one call per answered request, decides as Envoy's two reports
    (`LOCAL_ORIGIN_CONNECT_SUCCESS`, then the status) do."""
    one_clock, two_clock = Clock(), Clock()
    one = OutlierDetector(config, HOSTS, clock=one_clock, rand=random.Random(seed).random)
    two = OutlierDetector(config, HOSTS, clock=two_clock, rand=random.Random(seed).random)
    for kind, a, b in script:
        if kind in ("status", "many"):
            for _ in range(10 if kind == "many" else 1):
                one.put_response(HOSTS[a], b)
                two.put_result(HOSTS[a], Result.LOCAL_ORIGIN_CONNECT_SUCCESS)
                two.put_http_status(HOSTS[a], b)
        else:
            apply(one, one_clock, (kind, a, b))
            apply(two, two_clock, (kind, a, b))
        one.maybe_tick(one_clock.t)
        two.maybe_tick(two_clock.t)
        assert one.ejected == two.ejected
    assert all(getattr(one.stats, k) == getattr(two.stats, k) for k in one.stats.__slots__)
