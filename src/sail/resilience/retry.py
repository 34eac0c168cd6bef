"""Retry policy arithmetic: which policy applies, back-off, rate-limited back-off, and the
testing switch.

**Which policy.** A route's `retry_policy` wins over its virtual host's, whole (Envoy does
not merge them; `sail.routing.policy` resolves it once per route). With neither, sail
applies `DEFAULT_POLICY`: retry once, on another
endpoint, and only failures that never reached a server (`connect-failure`,
`refused-stream`), so a request that a server may have acted on - a POST above all - is never
sent twice unless the route says so. An HTTP request with an idempotent method (RFC 9110
section 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) gets `DEFAULT_IDEMPOTENT_POLICY`,
which also retries a `reset`: a connection that dropped with no answer, as it does when an
endpoint dies with requests in flight; sending such a request again is safe by the
method's definition, as HTTP clients do on a dropped keep-alive connection. (Envoy retries
nothing without a policy; gRPC retries failures that never left the client
transparently, which is what this default follows.)

**Back-off** (Envoy's `JitteredExponentialBackOffStrategy`): retry *n* (1 for the first)
waits a uniformly random time in `[0, min(base * 2**(n-1), max))`, with `max` defaulting to
10 × base: 25 ms, 50 ms, 100 ms... by default, averaging half of that.

**Rate-limited back-off** (`rate_limited_retry_back_off`): when the response carries one of
the `reset_headers` (such as `Retry-After: 2` or `X-RateLimit-Reset: <unix time>`), the
first usable one sets the wait instead: a value above the policy's `max_interval` (300 s
by default) or unparseable is skipped, as in Envoy, and the wait is jittered upwards by up
to half of it (Envoy's `JitteredLowerBoundBackOffStrategy`).

**Testing** (like stamina's `set_testing`): `set_testing(True)` turns retries into a single
attempt (or `attempts` of them) with no waiting, for users' unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sail.model import RetryPolicy

if TYPE_CHECKING:
    from sail.routing.request import Headers

__all__ = [
    "DEFAULT_IDEMPOTENT_POLICY",
    "DEFAULT_POLICY",
    "IDEMPOTENT_METHODS",
    "REPLAY_LIMIT",
    "backoff",
    "is_testing",
    "rate_limited_wait",
    "set_testing",
]

DEFAULT_POLICY = RetryPolicy(
    retry_on=frozenset({"connect-failure", "refused-stream"}),
    num_retries=1,
    previous_hosts=True,
    host_selection_retry_max_attempts=3,
)

DEFAULT_IDEMPOTENT_POLICY = RetryPolicy(
    retry_on=frozenset({"connect-failure", "refused-stream", "reset"}),
    num_retries=1,
    previous_hosts=True,
    host_selection_retry_max_attempts=3,
)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""The methods RFC 9110 (section 9.2.2) defines as idempotent."""

REPLAY_LIMIT = 1 << 20
"""The most a call keeps of what it sent, to send it again on a retry: an HTTP request body
or a gRPC call's request messages, in bytes (Envoy buffers up to its per-request buffer
limit). A call that sent more is only retried after a connect failure, when nothing left."""

_testing: tuple[bool, int] = (False, 1)


def set_testing(testing: bool, *, attempts: int = 1) -> None:
    """Turn testing mode on or off. On, each call makes at most `attempts` attempts (1: no
    retries at all) and never waits between them."""
    global _testing
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    _testing = (testing, attempts)


def is_testing() -> bool:
    return _testing[0]


def testing_attempts() -> int | None:
    """The attempt cap in testing mode, `None` outside it."""
    return _testing[1] if _testing[0] else None


def backoff(policy: RetryPolicy, retry: int, rand: Callable[[], float]) -> float:
    """The wait before retry number `retry` (1 for the first), in seconds."""
    if _testing[0]:
        return 0.0
    base = policy.base_interval
    ceiling = policy.max_interval if policy.max_interval is not None else 10 * base
    interval = min(base * (1 << min(retry - 1, 62)), ceiling)
    return rand() * interval


def rate_limited_wait(
    policy: RetryPolicy,
    headers: Headers | None,
    rand: Callable[[], float],
    wall_clock: Callable[[], float] = time.time,
) -> float | None:
    """The wait a rate-limited response asks for, or `None` when none of the policy's
    `reset_headers` is present with a usable value."""
    if not policy.reset_headers or headers is None:
        return None
    for header in policy.reset_headers:
        raw = headers.get(header.name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if header.format == "unix_timestamp":
            value -= wall_clock()
        if not 0 <= value <= policy.rate_limited_max_interval:
            continue
        return 0.0 if _testing[0] else value + rand() * value / 2
    return None
