"""The response classifier: one verdict per attempt, read by retries, outlier detection,
circuit counters and metrics alike.

An attempt ends in one of two ways, and `Outcome` records which:

* the server answered: `status` is the HTTP status (and `grpc_status` the gRPC status, when
  the response carries one in its headers);
* it did not: `local` says what the client saw - `CONNECT_FAILURE` (nothing was sent),
  `REFUSED_STREAM` (an HTTP/2 stream the server refused before processing it), `RESET` (the
  connection broke after the request may have reached the server) or `TIMEOUT` (the
  per-try timeout fired, or the server stopped answering).

`retry_condition(outcome, policy)` names the `retry_on` condition an outcome meets, with
Envoy's meaning of each (docs "config/http/http_filters/router_filter#x-envoy-retry-on"):

| condition | retried outcomes |
|---|---|
| `5xx` | any 5xx status; any local failure (connect failure, refused stream, reset, timeout) |
| `gateway-error` | 502, 503, 504; any local failure |
| `reset` | any local failure (the server did not answer) |
| `connect-failure` | `CONNECT_FAILURE` |
| `refused-stream` | `REFUSED_STREAM` |
| `retriable-4xx` | 409 |
| `retriable-status-codes` | a status in `retriable_status_codes` |
| `retriable-headers` | a response header matching one of `retriable_headers` |
| `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable` | that |

(the last row: the gRPC status of that name). A gRPC channel gives a local failure the
status its caller sees (`UNAVAILABLE` for a connect failure or a reset, `DEADLINE_EXCEEDED`
for a per-try timeout), and the gRPC conditions match it too, as gRPC's own retries
(gRFC A44) see no difference between the two.

Envoy counts its own 503s for overflow as neither: sail raises those before any attempt.

`is_failure` is the plain success/failure split used by metrics and circuit counters: a
local failure, a 5xx, or a gRPC status that the gRPC spec counts as a server failure.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from sail.routing.matchers import compile_headers

if TYPE_CHECKING:
    from sail.model import HeaderMatcher, RetryPolicy
    from sail.routing.matchers import RequestTest
    from sail.routing.request import Headers

__all__ = [
    "ANSWER_CONDITIONS",
    "GRPC_CONDITIONS",
    "Local",
    "Outcome",
    "is_failure",
    "retry_condition",
]


class Local(enum.Enum):
    """How an attempt failed without an answer from the server."""

    CONNECT_FAILURE = "connect-failure"
    REFUSED_STREAM = "refused-stream"
    RESET = "reset"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    """Abandoned by the caller (or a hedge that lost): never a retry condition, only
    what attempt observers hear (`sail.resilience.events`)."""

    @property
    def reached_server(self) -> bool:
        """Whether the server may have seen the request (and acted on it)."""
        return self in (Local.RESET, Local.TIMEOUT)


class Outcome(NamedTuple):
    """What one attempt produced: `status` (0 when there was no response) or `local`."""

    status: int = 0
    local: Local | None = None
    grpc_status: int | None = None
    headers: Headers | None = None

    @property
    def answered(self) -> bool:
        """A response that is no failure of any kind a retry condition looks at: no local
        failure, no 5xx, no gRPC status (a retry may still be asked for by the 4xx and
        header conditions, which this does not rule out)."""
        return self.local is None and self.status < 500 and self.grpc_status is None

    @property
    def reason(self) -> str:
        """A short description for errors and logs: `503`, `connect-failure`..."""
        if self.local is not None:
            return self.local.value
        if self.grpc_status:
            return f"{self.status} grpc-status {self.grpc_status}"
        return str(self.status)


# gRPC status codes (grpc/doc/statuscodes.md).
_GRPC_CODES = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
_GRPC_SERVER_FAILURES = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN, DEADLINE, UNIMPL., ...

ANSWER_CONDITIONS = frozenset({"retriable-4xx", "retriable-status-codes", "retriable-headers"})
"""The conditions that can retry an answered response (below 500, no gRPC status)."""
GRPC_CONDITIONS = frozenset(_GRPC_CODES)
"""The gRPC `retry_on` conditions. Conditions sail does not act on (`envoy-ratelimited`,
`http3-post-connect-failure`, `reset-before-request`) are accepted and never met."""


def retry_condition(
    outcome: Outcome, policy: RetryPolicy, retry_on: Iterable[str] | None = None
) -> str | None:
    """The first `retry_on` condition of `policy` that `outcome` meets, or `None`.

    `retry_on` overrides the policy's conditions (the safe default policy uses it)."""
    conditions = policy.retry_on if retry_on is None else retry_on
    local = outcome.local
    status = outcome.status
    for condition in conditions:
        if local is not None:
            if condition in ("5xx", "gateway-error", "reset"):
                return condition
            if condition == local.value:
                return condition
            if condition in _GRPC_CODES and outcome.grpc_status == _GRPC_CODES[condition]:
                return condition
            continue
        if condition == "5xx":
            if status >= 500:
                return condition
        elif condition == "gateway-error":
            if status in (502, 503, 504):
                return condition
        elif condition == "retriable-4xx":
            if status == 409:
                return condition
        elif condition == "retriable-status-codes":
            if status in policy.retriable_status_codes:
                return condition
        elif condition == "retriable-headers":
            headers = outcome.headers
            test = _any_of(policy.retriable_headers)
            if headers is not None and test is not None and test(headers, "", "", "", ""):
                return condition
        elif condition in _GRPC_CODES and outcome.grpc_status == _GRPC_CODES[condition]:
            return condition
    return None


@functools.lru_cache(maxsize=256)
def _any_of(matchers: tuple[HeaderMatcher, ...]) -> RequestTest | None:
    """One test that passes when any of `matchers` matches (compiled once per policy)."""
    tests = [compile_headers((m,)) for m in matchers]
    checks = tuple(t for t in tests if t is not None)
    if not checks:
        return None

    def any_match(headers: Headers, authority: str, method: str, path: str, scheme: str) -> bool:
        return any(check(headers, authority, method, path, scheme) for check in checks)

    return any_match


def is_failure(outcome: Outcome) -> bool:
    """A local failure, a 5xx, or a server-side gRPC failure."""
    if outcome.local is not None or outcome.status >= 500:
        return True
    return outcome.grpc_status is not None and outcome.grpc_status in _GRPC_SERVER_FAILURES
