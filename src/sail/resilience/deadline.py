"""Deadlines: the route timeout as one deadline over every attempt, carried to the next hop.

A call's timeout is, as in Envoy's router, the first of:
`x-envoy-expected-rq-timeout-ms` on the outgoing request (as Envoy with
`respect_expected_rq_timeout`), `x-envoy-upstream-rq-timeout-ms` (Envoy's per-request
override), the route's `timeout` (Envoy's default 15 s when unset; `0` disables it). The
deadline is then the earlier of now + that timeout and the deadline *inherited* from the
request this code is serving: a sail server sets it from the incoming
`x-envoy-expected-rq-timeout-ms` (or `grpc-timeout`), so a server's own outgoing calls get
only the time its caller has left.

Each attempt is given the time that is left (capped by the retry policy's
`per_try_timeout`), no retry starts - and no back-off ends - past the deadline, and the
request sent carries `x-envoy-expected-rq-timeout-ms` with that attempt's time, so the next
hop inherits it. Header values that are not non-negative integers are ignored, as Envoy
ignores them.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sail.routing.request import Headers

__all__ = [
    "DEFAULT_ROUTE_TIMEOUT",
    "EXPECTED_TIMEOUT_HEADER",
    "UPSTREAM_TIMEOUT_HEADER",
    "call_deadline",
    "inherited_deadline",
    "parse_timeout_ms",
]

DEFAULT_ROUTE_TIMEOUT = 15.0
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
UPSTREAM_TIMEOUT_HEADER = "x-envoy-upstream-rq-timeout-ms"

inherited_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "sail_deadline", default=None
)
"""The deadline (on `time.monotonic()`) of the request being served, if its caller sent one."""


def parse_timeout_ms(value: str | None) -> float | None:
    """A `*-timeout-ms` header value in seconds, or `None` if absent or not a valid number."""
    if value is None or not value.isdigit():
        return None
    return int(value) / 1000.0


_EXPECTED = EXPECTED_TIMEOUT_HEADER.encode()
_UPSTREAM = UPSTREAM_TIMEOUT_HEADER.encode()


def _timeout_headers(headers: Headers) -> tuple[str | None, str | None]:
    """The two timeout headers' values. For an `httpx.Headers`, one pass over its entries
    (its `_list` of `(raw name, lower-case name, value)` bytes, read-only): two `get`s
    would each scan and re-encode, on every request."""
    entries = getattr(headers, "_list", None)
    if not isinstance(entries, list):
        return headers.get(EXPECTED_TIMEOUT_HEADER), headers.get(UPSTREAM_TIMEOUT_HEADER)
    expected = upstream = None
    for entry in entries:
        name = entry[1]
        if name == _EXPECTED:
            expected = entry[2].decode("latin-1")
        elif name == _UPSTREAM:
            upstream = entry[2].decode("latin-1")
    return expected, upstream


def call_deadline(route_timeout: float | None, headers: Headers, now: float) -> float | None:
    """The absolute deadline (on the clock `now` came from) of a call on a route whose
    `timeout` is `route_timeout` (`None`: unset), or `None` for no deadline."""
    timeout = DEFAULT_ROUTE_TIMEOUT if route_timeout is None else route_timeout
    for value in _timeout_headers(headers):
        override = parse_timeout_ms(value)
        if override is not None and override > 0:
            timeout = override
            break
    deadline = now + timeout if timeout > 0 else None
    inherited = inherited_deadline.get()
    if inherited is not None:
        deadline = inherited if deadline is None else min(deadline, inherited)
    return deadline
