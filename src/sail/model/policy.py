"""Per-route and per-cluster policies carried by the config (retries, hashing, limits).

The core issue only carries them; the resilience work gives them behaviour.
"""

from __future__ import annotations

import attrs

__all__ = ["CircuitBreakers", "HashPolicy", "OutlierDetection", "RetryPolicy", "Thresholds"]


@attrs.frozen
class RetryPolicy:
    """Envoy's `RetryPolicy` (fields in seconds)."""

    retry_on: frozenset[str] = frozenset()
    num_retries: int = 1
    per_try_timeout: float | None = None
    base_interval: float = 0.025
    max_interval: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()


@attrs.frozen
class HashPolicy:
    """One `hash_policy` entry: `kind` is header, cookie, connection_properties or
    query_parameter; `name` the header, cookie or parameter."""

    kind: str
    name: str = ""
    terminal: bool = False


@attrs.frozen
class Thresholds:
    """Circuit breaker thresholds of one priority; Envoy's defaults."""

    priority: int = 0
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@attrs.frozen
class CircuitBreakers:
    thresholds: tuple[Thresholds, ...] = ()


@attrs.frozen
class OutlierDetection:
    """Envoy's `OutlierDetection`, times in seconds, with Envoy's defaults."""

    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
