"""Outlier detection: Envoy's passive health checking of a cluster's hosts, sans I/O.

One `OutlierDetector` per cluster that has `outlier_detection` set. It follows Envoy's
`source/common/upstream/outlier_detection_impl.cc` (docs "arch_overview/upstream/outlier";
`docs/resilience.md` states every rule for users). In short:

* **Reports.** After each attempt the data plane reports what happened to the host, as
  Envoy's router does: `put_result(host, LOCAL_ORIGIN_CONNECT_SUCCESS)` once connected and
  `put_http_status(host, status)` for the response; `put_result(host,
  LOCAL_ORIGIN_CONNECT_FAILED)` when the connection failed or the stream was reset, and
  `put_result(host, LOCAL_ORIGIN_TIMEOUT)` when the attempt timed out. A gRPC response whose
  headers carry `grpc-status` is reported as `grpc_to_http_status(grpc_status)`. Requests
  refused by the circuit breakers never reached a host and are not reported.
* **Consecutive errors** (5xx; gateway errors 502/503/504; local-origin failures when
  `split_external_local_origin_errors`) eject the host at the report that reaches the
  threshold. Without the split, a connect failure counts as a 503, a timeout as a 504, and
  `EXT_ORIGIN_REQUEST_FAILED` as a 500, as Envoy maps them.
* **Success rate and failure percentage** are judged at each interval over the requests of
  the interval just ended, external and local origin separately.
* **Ejection** passes `max_ejection_percent` (one more ejected host may not take the
  ejected share above it; `always_eject_one_host` lets the first through anyway), then the
  `enforcing_*` draw. It lasts `min(base_ejection_time × multiplier, max_ejection_time)` plus
  a random jitter up to `max_ejection_time_jitter`; the multiplier goes up by one at each
  ejection (while `multiplier × base < max + base`) and down by one at each interval ending
  at least one interval after the host came back.
* **Un-ejection** happens at the first interval tick after the ejection time has passed; it
  resets the host's consecutive-error counters.

Time: intervals tick on a fixed grid from construction (`start + k × interval`), as Envoy's
timer does; there is no thread. The data plane calls `maybe_tick(now)` on the request path:
one float comparison until a tick is due, then the O(hosts) sweep. When several intervals
passed without a call, the first sweep judges the requests collected and the later ones,
which Envoy would run over empty intervals, only un-eject and lower multipliers (worked out
at once, not one by one). `tick(now)` forces a sweep at `now` (tests).

Output: `ejected`, the frozenset of ejected hosts, and `on_change(ejected)`, called after
the set changed, so that the data plane rebuilds the cluster's picker with those hosts
unhealthy; Envoy's panic threshold then applies there. `stats` counts as Envoy's
`outlier_detection.*` stats do.

Threads: reporting takes no lock - counters are plain integers under the GIL; a race may
miscount by one, as Envoy's relaxed atomics may. Decisions - an ejection, a sweep, a host
set change - are serialized by a lock (Envoy makes them on its main thread), so that two
threads cannot both take the last ejection slot; `maybe_tick` never waits for it (a sweep in
progress elsewhere is enough). `on_change` runs under that lock, so calls arrive in order.

Deliberate differences from Envoy: a host is not ejected twice in one sweep (Envoy can,
when both success rate and failure percentage flag it, and then counts it twice); the
jitter is a uniform float rather than whole milliseconds.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING

from sail.model import OutlierDetection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "DEFAULT_ACCRUAL",
    "EjectionType",
    "OutlierDetector",
    "OutlierStats",
    "Result",
    "grpc_to_http_status",
]

log = logging.getLogger("sail.resilience")

_NANOS = 1_000_000_000


def _ns(seconds: float) -> int:
    return round(seconds * _NANOS)


class Result(enum.Enum):
    """Envoy's `Outlier::Result`: what an attempt's connection and transaction did."""

    LOCAL_ORIGIN_CONNECT_FAILED = "local_origin_connect_failed"
    """The connection failed, or the stream was reset (Envoy's router reports resets so)."""
    LOCAL_ORIGIN_TIMEOUT = "local_origin_timeout"
    """The attempt timed out before a response."""
    LOCAL_ORIGIN_CONNECT_SUCCESS = "local_origin_connect_success"
    """Connected; the response is reported next, with `put_http_status`."""
    LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL = "local_origin_connect_success_final"
    """Connected, and nothing else will be reported (protocols without a response code)."""
    EXT_ORIGIN_REQUEST_FAILED = "ext_origin_request_failed"
    """The server failed the transaction (protocols without HTTP codes)."""
    EXT_ORIGIN_REQUEST_SUCCESS = "ext_origin_request_success"
    """The server completed the transaction (protocols without HTTP codes)."""


# Envoy's `resultToHttpCode`, used when local and external errors are not split
# (`LOCAL_ORIGIN_CONNECT_SUCCESS` is not mapped: the response's status follows).
_RESULT_STATUS = {
    Result.LOCAL_ORIGIN_CONNECT_FAILED: 503,
    Result.LOCAL_ORIGIN_TIMEOUT: 504,
    Result.LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL: 200,
    Result.EXT_ORIGIN_REQUEST_FAILED: 500,
    Result.EXT_ORIGIN_REQUEST_SUCCESS: 200,
}

_GRPC_TO_HTTP = {
    0: 200,  # OK
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}


def grpc_to_http_status(grpc_status: int) -> int:
    """The HTTP status Envoy's router reports to outlier detection for a gRPC response whose
    headers carry `grpc-status` (Envoy's `Grpc::Utility::grpcToHttpStatus`): UNAVAILABLE is
    503, DEADLINE_EXCEEDED 504, INTERNAL / UNKNOWN / DATA_LOSS and unknown codes 500, ..."""
    return _GRPC_TO_HTTP.get(grpc_status, 500)


class EjectionType(enum.Enum):
    """Why a host was ejected. The values are the suffixes of Envoy's
    `outlier_detection.ejections_enforced_<type>` and `ejections_detected_<type>` stats."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE = "success_rate"
    SUCCESS_RATE_LOCAL_ORIGIN = "local_origin_success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"
    FAILURE_PERCENTAGE_LOCAL_ORIGIN = "local_origin_failure_percentage"


_LOCAL_ORIGIN = frozenset({
    EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
    EjectionType.SUCCESS_RATE_LOCAL_ORIGIN,
    EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN,
})

DEFAULT_ACCRUAL = OutlierDetection(
    split_external_local_origin_errors=True,
    consecutive_local_origin_failure=5,
    enforcing_consecutive_local_origin_failure=100,
    enforcing_consecutive_5xx=0,
    enforcing_consecutive_gateway_failure=0,
    enforcing_success_rate=0,
    enforcing_local_origin_success_rate=0,
    interval=1.0,
    base_ejection_time=5.0,
    max_ejection_percent=100,
)
"""Failure accrual, for a cluster whose config sets no `outlier_detection` (Envoy then has
none): five local-origin failures in a row (connections refused or reset, attempts timed
out; Finagle's and Linkerd's failure accrual count five and seven) eject a host for 5 s,
then 10 s, 15 s... up to 300 s while it keeps failing. Answers, 5xx included, never eject:
an application's errors are not the mesh's to judge unless the config says so. Any share
of the cluster may be ejected: with every host ejected the cluster is in panic, which
sends to all of them again."""


class OutlierStats:
    """Counters of one detector, named after Envoy's `cluster.<name>.outlier_detection.*`.

    * `ejections_active` - hosts ejected now;
    * `ejections_enforced_total`, `ejections_enforced[type]` - ejections made;
    * `ejections_detected[type]` - outliers found, ejected or not (the enforcing draw
      failed, the host was over `max_ejection_percent`, or it was ejected already);
    * `ejections_overflow` - ejections refused by `max_ejection_percent`;
    * `success_rate_average`, `success_rate_ejection_threshold` and their `local_origin_`
      twins - the last sweep's mean and threshold, -1 when it had too few hosts to judge.
    """

    __slots__ = (
        "ejections_active",
        "ejections_detected",
        "ejections_enforced",
        "ejections_enforced_total",
        "ejections_overflow",
        "local_origin_success_rate_average",
        "local_origin_success_rate_ejection_threshold",
        "success_rate_average",
        "success_rate_ejection_threshold",
    )

    def __init__(self) -> None:
        self.ejections_active = 0
        self.ejections_enforced_total = 0
        self.ejections_overflow = 0
        self.ejections_enforced: dict[EjectionType, int] = dict.fromkeys(EjectionType, 0)
        self.ejections_detected: dict[EjectionType, int] = dict.fromkeys(EjectionType, 0)
        self.success_rate_average = -1.0
        self.success_rate_ejection_threshold = -1.0
        self.local_origin_success_rate_average = -1.0
        self.local_origin_success_rate_ejection_threshold = -1.0


class _Host:
    """Envoy's `DetectorHostMonitorImpl`: one host's counters and ejection state. Times are
    integer nanoseconds of the detector's clock."""

    __slots__ = (
        "backoff",
        "consecutive_5xx",
        "consecutive_gateway",
        "consecutive_local",
        "consecutive_local_before",
        "ejected",
        "ejected_at",
        "ejected_for",
        "ext_success",
        "ext_total",
        "jitter",
        "last_ext_success",
        "last_ext_total",
        "last_local_success",
        "last_local_total",
        "local_success",
        "local_total",
        "name",
        "unejected_at",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.consecutive_local_before = 0  # the run the last local success ended
        # The bucket being written, and the one of the interval last ended (Envoy's two).
        self.ext_total = self.ext_success = 0
        self.local_total = self.local_success = 0
        self.last_ext_total = self.last_ext_success = 0
        self.last_local_total = self.last_local_success = 0
        self.ejected = False
        self.ejected_at = 0
        self.ejected_for: EjectionType | None = None
        self.unejected_at: int | None = None
        self.jitter = 0
        self.backoff = 0  # Envoy's ejectTimeBackoff: the ejection time multiplier


def _ceildiv(a: int, b: int) -> int:
    return -(-a // b)


class OutlierDetector:
    """Envoy's outlier detector for one cluster; see the module docstring.

    `hosts` are the cluster's endpoints as `host:port` authorities; `on_change` is called
    with the new `ejected` set after it changed; `clock` (seconds, monotonic) and `rand`
    (uniform in [0, 1)) are injectable for tests.
    """

    def __init__(
        self,
        config: OutlierDetection,
        hosts: Iterable[str] = (),
        *,
        on_change: Callable[[frozenset[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._lock = threading.RLock()
        self._on_change = on_change
        self._clock = clock
        self._rand = rand
        self._hosts: dict[str, _Host] = {name: _Host(name) for name in hosts}
        self._ejected_names: set[str] = set()
        self._ejected: frozenset[str] = frozenset()
        self._failing_locally: frozenset[str] = frozenset()
        self.stats = OutlierStats()
        self._last_sweep = _ns(clock())
        self._next_ns = 0
        self._next_tick = 0.0
        self.configure(config)

    # -- configuration and hosts -----------------------------------------------------------

    @property
    def config(self) -> OutlierDetection:
        return self._config

    @property
    def ejected(self) -> frozenset[str]:
        """The hosts ejected now (the data plane treats them as unhealthy)."""
        return self._ejected

    @property
    def failing_locally(self) -> frozenset[str]:
        """The ejected hosts that were ejected for local-origin failures (connections
        refused or reset, attempts timed out): known not to answer at all, so a picker in
        panic leaves them out (`sail.balancing.build_picker`)."""
        return self._failing_locally

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._hosts)

    def configure(self, config: OutlierDetection) -> None:
        """Apply a new config, keeping every host's state (a running ejection's time is
        worked out with the new times); the next tick is one new interval after the last."""
        with self._lock:
            self._config = config
            self._consecutive_5xx = config.consecutive_5xx
            self._consecutive_gateway = config.consecutive_gateway_failure
            self._consecutive_local = config.consecutive_local_origin_failure
            self._split = config.split_external_local_origin_errors
            self._interval = max(1, _ns(config.interval))
            self._base = _ns(config.base_ejection_time)
            self._max = _ns(config.max_ejection_time)
            self._max_jitter = _ns(config.max_ejection_time_jitter)
            self._max_percent = min(100, config.max_ejection_percent)
            self._enforcing = {
                EjectionType.CONSECUTIVE_5XX: config.enforcing_consecutive_5xx,
                EjectionType.CONSECUTIVE_GATEWAY_FAILURE: (
                    config.enforcing_consecutive_gateway_failure
                ),
                EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: (
                    config.enforcing_consecutive_local_origin_failure
                ),
                EjectionType.SUCCESS_RATE: config.enforcing_success_rate,
                EjectionType.SUCCESS_RATE_LOCAL_ORIGIN: config.enforcing_local_origin_success_rate,
                EjectionType.FAILURE_PERCENTAGE: config.enforcing_failure_percentage,
                EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN: (
                    config.enforcing_failure_percentage_local_origin
                ),
            }
            self._set_next(self._last_sweep + self._interval)

    def update_hosts(self, hosts: Iterable[str]) -> None:
        """The cluster's hosts now: those that stay keep their state, new ones start afresh,
        departed ones are forgotten (an ejected one leaves `ejected`)."""
        with self._lock:
            old = self._hosts
            new: dict[str, _Host] = {}
            for name in hosts:
                if name not in new:
                    kept = old.get(name)
                    new[name] = _Host(name) if kept is None else kept
            self._hosts = new
            departed = [name for name in self._ejected_names if name not in new]
            if departed:
                self._ejected_names.difference_update(departed)
                self._publish()
                self._notify()

    # -- reports (the request path) --------------------------------------------------------

    def put_http_status(self, host: str, status: int) -> None:
        """An HTTP response from `host` (Envoy's `putHttpResponseCode`): external origin."""
        h = self._hosts.get(host)
        if h is None:
            return
        h.ext_total += 1
        if 500 <= status < 600:
            if status in {502, 503, 504}:
                h.consecutive_gateway += 1
                if h.consecutive_gateway == self._consecutive_gateway:
                    self._on_consecutive(h, EjectionType.CONSECUTIVE_GATEWAY_FAILURE)
            else:
                h.consecutive_gateway = 0
            h.consecutive_5xx += 1
            if h.consecutive_5xx == self._consecutive_5xx:
                self._on_consecutive(h, EjectionType.CONSECUTIVE_5XX)
        else:
            h.ext_success += 1
            h.consecutive_5xx = 0
            h.consecutive_gateway = 0

    def put_response(self, host: str, status: int) -> None:
        """A response with `status` came from `host`: what Envoy's router reports as
        `LOCAL_ORIGIN_CONNECT_SUCCESS` and then `putHttpResponseCode`, in one call (this is
        every request's report)."""
        h = self._hosts.get(host)
        if h is None:
            return
        if self._split:
            h.local_total += 1
            h.local_success += 1
            h.consecutive_local_before = h.consecutive_local
            h.consecutive_local = 0
        if status >= 500:
            self.put_http_status(host, status)
            return
        h.ext_total += 1
        h.ext_success += 1
        h.consecutive_5xx = 0
        h.consecutive_gateway = 0

    def put_result(self, host: str, result: Result, status: int | None = None) -> None:
        """A connection-level or non-HTTP result from `host` (Envoy's `putResult`).

        Without `split_external_local_origin_errors` the result is reported as an HTTP
        status: `status` when given, else connect failure 503, timeout 504, request failed
        500, successes 200 (`LOCAL_ORIGIN_CONNECT_SUCCESS` reports nothing). With the split,
        connect failures and timeouts are local-origin failures, connect successes
        local-origin successes, and `status` is ignored, as in Envoy."""
        if not self._split:
            if status is None:
                if result is Result.LOCAL_ORIGIN_CONNECT_SUCCESS:
                    return  # the common case, kept cheap
                status = _RESULT_STATUS[result]
            self.put_http_status(host, status)
            return
        if result is Result.LOCAL_ORIGIN_CONNECT_FAILED or result is Result.LOCAL_ORIGIN_TIMEOUT:
            self._local_failure(host)
        elif result is Result.EXT_ORIGIN_REQUEST_FAILED:
            self.put_http_status(host, 503)
        else:
            if result is Result.EXT_ORIGIN_REQUEST_SUCCESS:
                self.put_http_status(host, 200)
            self._local_success(host)

    def _local_failure(self, host: str) -> None:
        h = self._hosts.get(host)
        if h is None:
            return
        h.local_total += 1
        h.consecutive_local += 1
        if h.consecutive_local == self._consecutive_local:
            self._on_consecutive(h, EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def _local_success(self, host: str) -> None:
        h = self._hosts.get(host)
        if h is None:
            return
        h.local_total += 1
        h.local_success += 1
        h.consecutive_local_before = h.consecutive_local
        h.consecutive_local = 0

    def put_cut_off(self, host: str) -> None:
        """The response from `host` ended before its body did (a reset, a read timeout):
        the attempt failed after its headers were reported as a success. With the split,
        the local-origin success they reported becomes a failure and the run of
        consecutive local-origin failures it broke goes on (so a host that cuts every body
        is ejected as one that resets every connection is); without it, a 503, as Envoy
        reports a reset. Envoy's router reports a reset after the headers as a local-origin
        failure on top of the success, which breaks the run; sail counts the attempt once."""
        h = self._hosts.get(host)
        if h is None:
            return
        if not self._split:
            self.put_http_status(host, 503)
            return
        if h.local_success > 0:
            h.local_success -= 1
        h.consecutive_local = h.consecutive_local_before + 1
        h.consecutive_local_before = 0
        if h.consecutive_local == self._consecutive_local:
            self._on_consecutive(h, EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def _on_consecutive(self, h: _Host, kind: EjectionType) -> None:
        """A consecutive-error threshold was reached (Envoy's `onConsecutiveErrorWorker`)."""
        with self._lock:
            if self._hosts.get(h.name) is not h or h.ejected:
                return  # departed, or already out: counting goes on until it returns
            self.stats.ejections_detected[kind] += 1
            ejected = self._eject(h, kind, _ns(self._clock()))
            # Reset either way, so that another run of errors is detected afresh.
            if kind is EjectionType.CONSECUTIVE_5XX:
                h.consecutive_5xx = 0
            elif kind is EjectionType.CONSECUTIVE_GATEWAY_FAILURE:
                h.consecutive_gateway = 0
            else:
                h.consecutive_local = 0
            if ejected:
                self._publish()
                self._notify()

    # -- intervals -------------------------------------------------------------------------

    def maybe_tick(self, now: float) -> None:
        """Run the interval sweep if one is due by `now` (one comparison when none is)."""
        if now >= self._next_tick:
            self._tick_due(now)

    def tick(self, now: float) -> None:
        """Sweep at `now`, as if the interval timer fired then, and restart the interval
        from `now`."""
        with self._lock:
            t = _ns(now)
            self._set_next(t + self._interval)
            self._sweep(t, 0)

    def _tick_due(self, now: float) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is deciding; a later call sweeps if still due
        try:
            due = self._next_ns
            t = _ns(now)
            if t < due:
                return
            missed = (t - due) // self._interval
            self._set_next(due + (missed + 1) * self._interval)
            self._sweep(due, missed)
        finally:
            self._lock.release()

    def _set_next(self, next_ns: int) -> None:
        self._next_ns = next_ns
        self._next_tick = next_ns / _NANOS

    def _sweep(self, t: int, empty: int) -> None:
        """Envoy's `onIntervalTimer` at `t`, then `empty` more at `t + k × interval` over
        intervals without requests (only un-ejections and multiplier decrements)."""
        self._last_sweep = t + empty * self._interval
        before = self._ejected
        for h in self._hosts.values():
            if h.ejected and t - h.ejected_at >= self._ejection_time(h):
                self._uneject(h, t)
            h.last_ext_total, h.ext_total = h.ext_total, 0
            h.last_ext_success, h.ext_success = h.ext_success, 0
            h.last_local_total, h.local_total = h.local_total, 0
            h.last_local_success, h.local_success = h.local_success, 0
        self._judge(local=False, t=t)
        self._judge(local=True, t=t)
        interval = self._interval
        for h in self._hosts.values():
            if (
                not h.ejected
                and h.backoff
                and h.unejected_at is not None
                and t - h.unejected_at >= interval
            ):
                h.backoff -= 1
        if empty:
            self._sweep_empty(t, empty)
        self._publish()
        if self._ejected != before:
            self._notify()

    def _sweep_empty(self, t: int, count: int) -> None:
        """Sweeps `1..count` intervals after `t` with no requests, worked out per host."""
        interval = self._interval
        for h in self._hosts.values():
            h.last_ext_total = h.last_ext_success = 0
            h.last_local_total = h.last_local_success = 0
            if h.ejected:
                # The first sweep at which the ejection time has passed.
                k = max(1, _ceildiv(h.ejected_at + self._ejection_time(h) - t, interval))
                if k > count:
                    continue
                self._uneject(h, t + k * interval)
                decrements = count - k  # every later sweep is a whole interval after it
            elif h.unejected_at is not None:
                first = max(1, _ceildiv(h.unejected_at + interval - t, interval))
                decrements = count - first + 1
            else:
                continue
            if decrements > 0:
                h.backoff = max(0, h.backoff - decrements)
        stats = self.stats
        stats.success_rate_average = stats.success_rate_ejection_threshold = -1.0
        stats.local_origin_success_rate_average = -1.0
        stats.local_origin_success_rate_ejection_threshold = -1.0

    def _judge(self, *, local: bool, t: int) -> None:
        """Envoy's `processSuccessRateEjections` for one origin."""
        config = self._config
        stats = self.stats
        if local:
            stats.local_origin_success_rate_average = -1.0
            stats.local_origin_success_rate_ejection_threshold = -1.0
        else:
            stats.success_rate_average = stats.success_rate_ejection_threshold = -1.0
        n = len(self._hosts)
        sr_min = config.success_rate_minimum_hosts
        fp_min = config.failure_percentage_minimum_hosts
        if n < sr_min and n < fp_min:
            return
        sr_volume = config.success_rate_request_volume
        fp_volume = config.failure_percentage_request_volume
        sr_hosts: list[tuple[_Host, float]] = []
        fp_hosts: list[tuple[_Host, float]] = []
        rate_sum = 0.0
        for h in self._hosts.values():
            if h.ejected:
                continue
            if local:
                volume, successes = h.last_local_total, h.last_local_success
            else:
                volume, successes = h.last_ext_total, h.last_ext_success
            if not volume:
                continue
            rate = successes * 100.0 / volume
            if volume >= sr_volume:
                sr_hosts.append((h, rate))
                rate_sum += rate
            if volume >= fp_volume:
                fp_hosts.append((h, rate))
        if sr_hosts and len(sr_hosts) >= sr_min:
            mean = rate_sum / len(sr_hosts)
            variance = sum((rate - mean) ** 2 for _, rate in sr_hosts) / len(sr_hosts)
            threshold = mean - config.success_rate_stdev_factor / 1000.0 * math.sqrt(variance)
            if local:
                stats.local_origin_success_rate_average = mean
                stats.local_origin_success_rate_ejection_threshold = threshold
                kind = EjectionType.SUCCESS_RATE_LOCAL_ORIGIN
            else:
                stats.success_rate_average = mean
                stats.success_rate_ejection_threshold = threshold
                kind = EjectionType.SUCCESS_RATE
            for h, rate in sr_hosts:
                if rate < threshold:
                    stats.ejections_detected[kind] += 1
                    self._eject(h, kind, t)
        if fp_hosts and len(fp_hosts) >= fp_min:
            kind = (
                EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN
                if local
                else EjectionType.FAILURE_PERCENTAGE
            )
            for h, rate in fp_hosts:
                if 100.0 - rate >= config.failure_percentage_threshold:
                    stats.ejections_detected[kind] += 1
                    self._eject(h, kind, t)

    # -- ejection --------------------------------------------------------------------------

    def _ejection_time(self, h: _Host) -> int:
        return min(self._base * h.backoff, self._max) + h.jitter

    def _eject(self, h: _Host, kind: EjectionType, t: int) -> bool:
        """Envoy's `ejectHost` (under the lock); `_publish` makes it visible."""
        if h.ejected:
            return False
        stats = self.stats
        active = len(self._ejected_names)
        if not (
            100.0 * (active + 1) / len(self._hosts) <= self._max_percent
            or (self._config.always_eject_one_host and active == 0)
        ):
            stats.ejections_overflow += 1
            return False
        percent = self._enforcing[kind]
        if percent < 100 and (percent <= 0 or self._rand() * 100.0 >= percent):
            return False
        stats.ejections_enforced_total += 1
        stats.ejections_enforced[kind] += 1
        h.ejected = True
        h.ejected_at = t
        h.ejected_for = kind
        h.jitter = round(self._rand() * self._max_jitter) if self._max_jitter > 0 else 0
        if h.backoff * self._base < self._max + self._base:
            h.backoff += 1
        self._ejected_names.add(h.name)
        return True

    def _uneject(self, h: _Host, t: int) -> None:
        h.ejected = False
        h.ejected_for = None
        h.unejected_at = t
        h.consecutive_5xx = h.consecutive_gateway = h.consecutive_local = 0
        self._ejected_names.discard(h.name)

    def _publish(self) -> None:
        """Make `ejected` match the ejected hosts (a new frozenset only when it changed)."""
        if self._ejected != self._ejected_names:
            self._ejected = frozenset(self._ejected_names)
            self._failing_locally = frozenset(
                n for n in self._ejected if self._hosts[n].ejected_for in _LOCAL_ORIGIN
            )
        self.stats.ejections_active = len(self._ejected)

    def _notify(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(self._ejected)
        except Exception:
            log.exception("outlier detection: the on_change callback failed")
