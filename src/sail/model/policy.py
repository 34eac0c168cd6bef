"""Per-route and per-cluster policies (retries, hashing, limits, outlier detection).

Plain data; `sail.resilience` and `sail.balancing` give them behaviour
(`docs/resilience.md`).
"""

from __future__ import annotations

import attrs

from sail.model.matchers import HeaderMatcher

__all__ = [
    "CircuitBreakers",
    "HashPolicy",
    "OutlierDetection",
    "ResetHeader",
    "RetryBudget",
    "RetryPolicy",
    "Thresholds",
]


@attrs.frozen
class ResetHeader:
    """A response header giving the rate-limited back-off (Envoy's `ResetHeader`): `name`,
    and `format` `seconds` (like `Retry-After: 30`) or `unix_timestamp`."""

    name: str
    format: str = "seconds"


@attrs.frozen
class RetryPolicy:
    """Envoy's `RetryPolicy` (times in seconds).

    * `retry_on` - the conditions (`5xx`, `gateway-error`, `reset`, `connect-failure`,
      `retriable-4xx`, `refused-stream`, `retriable-status-codes`, `retriable-headers`, and
      for gRPC `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
      `unavailable`).
    * `num_retries` - retries after the first attempt (an explicit 0 never retries).
    * `per_try_timeout` - a timeout for each attempt, within the route's overall timeout.
    * `base_interval`, `max_interval` - jittered exponential back-off; `max_interval`
      `None` is Envoy's 10 × base.
    * `retriable_status_codes`, `retriable_headers` - for the two conditions of those names.
    * `reset_headers`, `rate_limited_max_interval` - `rate_limited_retry_back_off`: wait
      what a header such as `Retry-After` says, when it is present and not longer than the
      maximum (Envoy's default 300 s).
    * `previous_hosts` - the `previous_hosts` retry host predicate: a retry avoids the hosts
      already tried, re-picking up to `host_selection_retry_max_attempts` times.
    """

    retry_on: frozenset[str] = frozenset()
    num_retries: int = 1
    per_try_timeout: float | None = None
    base_interval: float = 0.025
    max_interval: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    reset_headers: tuple[ResetHeader, ...] = ()
    rate_limited_max_interval: float = 300.0
    previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1


@attrs.frozen
class HashPolicy:
    """One `hash_policy` entry (Envoy's `RouteAction.HashPolicy`; `sail.balancing.hashing`
    computes it).

    * `kind` - `header`, `cookie`, `connection_properties` (the source IP) or
      `query_parameter`; `name` the header (lower case), cookie or parameter.
    * `terminal` - stop at this policy when a hash has been produced so far.
    * `ttl` - cookie only: when the cookie is absent, generate one with this lifetime in
      seconds (0: a session cookie) and set it on the response; `None` (Envoy's unset `ttl`)
      generates nothing and the policy yields no hash.
    * `path`, `attributes` - cookie only: the generated cookie's `Path` and extra
      `(name, value)` attributes.
    """

    kind: str
    name: str = ""
    terminal: bool = False
    ttl: float | None = None
    path: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class RetryBudget:
    """Envoy's `RetryBudget`: concurrent retries may be at most `budget_percent` of the
    cluster's active plus pending requests, and never fewer than `min_retry_concurrency`."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@attrs.frozen
class Thresholds:
    """Circuit breaker thresholds of one priority; Envoy's defaults.

    `max_retries` `None` means it was not set: sail then applies the default `RetryBudget`
    (20 %, at least 3), where Envoy would allow 3 concurrent retries. A `retry_budget`, when
    set, wins over `max_retries`, as in Envoy.
    """

    priority: int = 0
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int | None = None
    retry_budget: RetryBudget | None = None


@attrs.frozen
class CircuitBreakers:
    thresholds: tuple[Thresholds, ...] = ()


def _default_max_ejection_time(od: OutlierDetection) -> float:
    return max(300.0, od.base_ejection_time)


@attrs.frozen
class OutlierDetection:
    """Envoy's `OutlierDetection`, times in seconds, with Envoy's defaults.

    `sail.resilience.outlier.OutlierDetector` gives it behaviour; `docs/resilience.md` says
    what each field does. Percentages (`max_ejection_percent`, `enforcing_*`,
    `failure_percentage_threshold`) are whole percents 0-100; `success_rate_stdev_factor` is
    in thousandths (1900 is 1.9), as in Envoy. `max_ejection_time` defaults to 300 s or
    `base_ejection_time`, whichever is larger. `successful_active_health_check_uneject_host`
    is not carried: sail has no active health checks.
    """

    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_local_origin_success_rate: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    max_ejection_time: float = attrs.field(
        default=attrs.Factory(_default_max_ejection_time, takes_self=True)
    )
    max_ejection_time_jitter: float = 0.0
    always_eject_one_host: bool = False
