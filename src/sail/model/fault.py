"""Fault injection: Envoy's HTTP fault filter (`extensions.filters.http.fault.v3.HTTPFault`).

A `FaultPolicy` comes from two places, as in Envoy: the fault filter's own entry in the HTTP
connection manager (`HttpFilter.config`), and `typed_per_filter_config` entries keyed by that
filter's name on the route configuration, a virtual host, a route or a weighted cluster. The
most specific one present wins whole (fields are not merged). `sail.resilience.fault` turns
a policy into a per-request decision.
"""

from __future__ import annotations

import attrs

from sail.model.matchers import FractionalPercent, HeaderMatcher

__all__ = ["FaultAbort", "FaultDelay", "FaultPolicy"]

_NONE = FractionalPercent(0)


@attrs.frozen
class FaultDelay:
    """Delay a share of the requests.

    **Parameters**

    * `fixed_delay` - seconds; `None` means Envoy's `header_delay`: the delay is read from
      the request's `x-envoy-fault-delay-request` header (milliseconds).
    * `percentage` - the share of requests delayed. Unset in the proto is 0 %, as in Envoy:
      a delay without a percentage delays nothing.
    """

    fixed_delay: float | None = None
    percentage: FractionalPercent = _NONE

    @property
    def header_delay(self) -> bool:
        return self.fixed_delay is None


@attrs.frozen
class FaultAbort:
    """Abort a share of the requests with a local reply.

    At most one of `http_status` (200-599) and `grpc_status` is set; neither means Envoy's
    `header_abort`: the status is read from `x-envoy-fault-abort-request` (HTTP) or
    `x-envoy-fault-abort-grpc-request` (gRPC). `percentage` as for `FaultDelay`.
    """

    http_status: int | None = None
    grpc_status: int | None = None
    percentage: FractionalPercent = _NONE

    @property
    def header_abort(self) -> bool:
        return self.http_status is None and self.grpc_status is None


@attrs.frozen(cache_hash=True)
class FaultPolicy:
    """One fault filter configuration.

    **Parameters**

    * `delay`, `abort` - what to inject; both may apply to one request (the delay first).
      An empty policy injects nothing (a per-route empty policy turns faults off there).
    * `headers` - the request must match all of them (no pseudo-headers, no `host`).
    * `upstream_cluster` - if set, only requests routed to this cluster are faulted.
    * `max_active_faults` - at most this many requests at once may be in a fault (delayed,
      or being aborted) through the filter; `None` is unlimited.
    """

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: tuple[HeaderMatcher, ...] = ()
    upstream_cluster: str = ""
    max_active_faults: int | None = None
