"""Fault injection, sans I/O: Envoy's HTTP fault filter decides, the transport acts.

```python
faults = FaultFilter.from_hcm(listener.hcm)       # once per listener config; None: no filter
...
decision = faults.decide(result, request.headers) if faults is not None else None
if decision is not None:
    try:
        if decision.delay:
            await anyio.sleep(decision.delay)     # or time.sleep on the sync path
        if decision.abort:
            return local_reply(decision.http_status, grpc_status=decision.grpc_status)
    finally:
        decision.finish()                         # the fault is over: leave the gauge
# ... forward the request as usual
```

The rules, from Envoy's `fault_filter.cc` and `fault_config.cc`:

* **Which config.** The most specific per-filter config for the filter's name (weighted
  cluster entry, route, virtual host, route configuration; `RouteResult.policy.faults`),
  else the filter's own. A per-filter config that disables the filter injects nothing.
* **Which requests.** All `headers` matchers must match; with `upstream_cluster`, only
  requests routed to that cluster.
* **Percentages** (`FractionalPercent`): a request is picked when `rand() * denominator <
  numerator`. The delay and the abort are decided independently, each with its own draw
  (the delay's first; a draw is made for each configured fault, whether or not it ends up
  applying). Both may hit one request: it is delayed, then aborted.
* **Header control.** With `header_delay`, the delay is `x-envoy-fault-delay-request`
  (whole milliseconds); with `header_abort`, the status is `x-envoy-fault-abort-request`
  (HTTP, 200-599) or, without a valid one, `x-envoy-fault-abort-grpc-request` (gRPC 0-16;
  the HTTP status is then 200). A missing or invalid header injects nothing. The
  percentage of a header-controlled fault may be lowered (never raised) by
  `x-envoy-fault-delay-request-percentage` / `x-envoy-fault-abort-request-percentage`: a
  numerator over the configured denominator, capped at the configured numerator. Only the
  first value of a repeated header is read; values are decimal integers (surrounding
  spaces and a `+` allowed, as `absl::SimpleAtoi`).
* **Fixed delays** are whole milliseconds, as Envoy reads them (`1.9ms` delays 1 ms); a
  delay of 0 ms is no delay.
* **max_active_faults** counts requests inside a fault (delayed, or being aborted) per
  filter: a request whose fault would exceed it gets none. Like Envoy's, the limit is
  fuzzy: two requests deciding at once may both pass. The gauge is a `collections.deque`
  whose `append`/`pop` are atomic under the GIL, so it never loses a count; no lock.
"""

from __future__ import annotations

import collections
import random
from functools import lru_cache
from typing import TYPE_CHECKING

from sail.model import FaultPolicy, FractionalPercent
from sail.routing.matchers import compile_headers
from sail.routing.request import header_values

if TYPE_CHECKING:
    from collections.abc import Callable

    from sail.model import HttpConnectionManager
    from sail.routing import Headers, RouteResult
    from sail.routing.matchers import RequestTest

__all__ = [
    "ABORT_GRPC_HEADER",
    "ABORT_HEADER",
    "ABORT_PERCENTAGE_HEADER",
    "DELAY_HEADER",
    "DELAY_PERCENTAGE_HEADER",
    "FAULT_TYPE_URL",
    "FaultDecision",
    "FaultFilter",
    "FaultGauge",
    "decide",
]

FAULT_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
"""The fault filter's `typed_config` type (`HttpFilter.type_url`)."""

DELAY_HEADER = "x-envoy-fault-delay-request"
DELAY_PERCENTAGE_HEADER = "x-envoy-fault-delay-request-percentage"
ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_GRPC_HEADER = "x-envoy-fault-abort-grpc-request"
ABORT_PERCENTAGE_HEADER = "x-envoy-fault-abort-request-percentage"

_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1
_SPACES = " \t\n\v\f\r"


class FaultGauge:
    """How many requests are inside a fault through one fault filter (Envoy's
    `active_faults` gauge). Thread-safe without a lock."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active: collections.deque[None] = collections.deque()

    @property
    def active(self) -> int:
        return len(self._active)

    def enter(self) -> None:
        self._active.append(None)

    def leave(self) -> None:
        self._active.pop()


class FaultDecision:
    """The faults to inject into one request.

    **Attributes**

    * `delay` - seconds to wait before anything else, `0.0` for none.
    * `http_status` - abort with this status after the delay, `None` not to abort. For a
      gRPC abort it is 200 and `grpc_status` is set: answer with `grpc-status` (a gRPC
      client reads it from the trailers-only response).
    * `grpc_status` - the gRPC status of a gRPC abort, else `None`.

    Call `finish()` once the fault is over (after the delay when the request then goes on,
    after the local reply when it is aborted); it is idempotent.
    """

    __slots__ = ("_gauge", "delay", "grpc_status", "http_status")

    def __init__(
        self,
        delay: float = 0.0,
        http_status: int | None = None,
        grpc_status: int | None = None,
        gauge: FaultGauge | None = None,
    ) -> None:
        self.delay = delay
        self.http_status = http_status
        self.grpc_status = grpc_status
        self._gauge = gauge

    @property
    def abort(self) -> bool:
        """Whether the request is answered locally instead of being sent."""
        return self.http_status is not None

    def finish(self) -> None:
        """Leave the filter's active-fault gauge (once)."""
        gauge, self._gauge = self._gauge, None
        if gauge is not None:
            gauge.leave()

    def __repr__(self) -> str:
        return (
            f"FaultDecision(delay={self.delay!r}, http_status={self.http_status!r}, "
            f"grpc_status={self.grpc_status!r})"
        )


def decide(
    policy: FaultPolicy | None,
    headers: Headers,
    rand: Callable[[], float] = random.random,
    *,
    gauge: FaultGauge | None = None,
    cluster: str | None = None,
) -> FaultDecision | None:
    """The faults `policy` injects into a request with `headers`, or `None` for none.

    `rand` is uniform in `[0, 1)`. With a `gauge`, a returned decision has entered it (and
    `max_active_faults` is enforced against it): call `decision.finish()` when the fault is
    over. `cluster` is the cluster the request was routed to, for `upstream_cluster`.
    """
    if policy is None or (policy.delay is None and policy.abort is None):
        return None
    if policy.upstream_cluster and policy.upstream_cluster != cluster:
        return None
    if policy.headers:
        test = _header_test(policy)
        if test is not None and not test(headers, "", "", "", ""):
            return None
    delay = 0.0
    if policy.delay is not None:
        d = policy.delay
        percentage = d.percentage
        if d.fixed_delay is None:
            percentage = _header_percentage(headers, DELAY_PERCENTAGE_HEADER, percentage)
        if _picked(percentage, rand):
            millis = (
                _fixed_millis(d.fixed_delay)
                if d.fixed_delay is not None
                else _delay_header(headers)
            )
            if millis:
                delay = millis / 1000
    http_status: int | None = None
    grpc_status: int | None = None
    if policy.abort is not None:
        a = policy.abort
        percentage = a.percentage
        if a.header_abort:
            percentage = _header_percentage(headers, ABORT_PERCENTAGE_HEADER, percentage)
        if _picked(percentage, rand):
            if a.http_status is not None:
                http_status = a.http_status
            elif a.grpc_status is not None:
                http_status, grpc_status = 200, a.grpc_status
            else:
                http_status, grpc_status = _abort_headers(headers)
    if not delay and http_status is None:
        return None
    if gauge is not None:
        limit = policy.max_active_faults
        if limit is not None and gauge.active >= limit:
            return None  # Envoy's faults_overflow
        gauge.enter()
    return FaultDecision(delay, http_status, grpc_status, gauge)


class FaultFilter:
    """The fault filter of one HTTP connection manager: its name (what per-filter configs
    are keyed by), its own config and its active-fault gauge. Build one per listener config
    (`from_hcm`); it is shared by every request through that listener."""

    __slots__ = ("gauge", "name", "policy")

    def __init__(self, name: str, policy: FaultPolicy | None = None) -> None:
        self.name = name
        self.policy = policy
        self.gauge = FaultGauge()

    @classmethod
    def from_hcm(cls, hcm: HttpConnectionManager) -> FaultFilter | None:
        """The HCM's fault filter, `None` when it has none (then no route faults apply,
        whatever their per-filter configs say, as in Envoy)."""
        for f in hcm.http_filters:
            if f.type_url == FAULT_TYPE_URL:
                return cls(f.name, f.config)
        return None

    def policy_for(self, result: RouteResult) -> FaultPolicy | None:
        """The config that applies to a request routed to `result`."""
        return result.policy.faults.get(self.name, self.policy)

    def decide(
        self,
        result: RouteResult,
        headers: Headers,
        rand: Callable[[], float] = random.random,
    ) -> FaultDecision | None:
        """`decide` with the config for `result`, this filter's gauge and the routed
        cluster."""
        policy = result.policy.faults.get(self.name, self.policy)
        if policy is None:
            return None
        return decide(policy, headers, rand, gauge=self.gauge, cluster=result.cluster)

    def __repr__(self) -> str:
        return f"FaultFilter({self.name!r}, {self.policy!r}, active={self.gauge.active})"


# -- helpers ----------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _header_test(policy: FaultPolicy) -> RequestTest | None:
    # Keyed by the policy, whose hash is cached: a hit costs an identity check.
    return compile_headers(policy.headers)


def _picked(percentage: FractionalPercent, rand: Callable[[], float]) -> bool:
    # Envoy: `random % denominator < numerator`; always true once numerator >= denominator.
    return rand() * percentage.denominator < percentage.numerator


def _fixed_millis(seconds: float) -> int:
    return round(seconds * 1_000_000_000) // 1_000_000


def _first(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    if value is not None and "," in value:
        value = header_values(headers, name, value)[0]
    return value


def _uint(value: str | None, limit: int) -> int | None:
    """`absl::SimpleAtoi` into an unsigned type: optional spaces around, an optional `+`,
    ASCII digits; `None` when it does not parse or overflows."""
    if value is None:
        return None
    text = value.strip(_SPACES)
    if text.startswith("+"):
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number <= limit else None


def _header_percentage(
    headers: Headers, name: str, configured: FractionalPercent
) -> FractionalPercent:
    numerator = _uint(_first(headers, name), _UINT32_MAX)
    if numerator is None:
        return configured
    return FractionalPercent(min(numerator, configured.numerator), configured.denominator)


def _delay_header(headers: Headers) -> int | None:
    return _uint(_first(headers, DELAY_HEADER), _UINT64_MAX)


def _abort_headers(headers: Headers) -> tuple[int | None, int | None]:
    code = _uint(_first(headers, ABORT_HEADER), _UINT64_MAX)
    if code is not None and 200 <= code < 600:
        return code, None
    grpc = _uint(_first(headers, ABORT_GRPC_HEADER), _UINT64_MAX)
    if grpc is not None and grpc <= 16:
        return 200, grpc
    return None, None
