"""A DestinationRule's `trafficPolicy` → cluster settings, and endpoints → load assignments.

Traffic policy:

* `loadBalancer.simple` → `lb_policy`: `ROUND_ROBIN` → `round_robin`, `RANDOM` → `random`,
  `LEAST_REQUEST` (and `LEAST_CONN`) → `least_request`; unset keeps `round_robin`.
* `connectionPool` → one circuit-breaker threshold (priority 0): `tcp.maxConnections` →
  `max_connections`, `http.http1MaxPendingRequests` → `max_pending_requests`,
  `http.http2MaxRequests` → `max_requests`, `http.maxRetries` → `max_retries`; the limits
  left out keep Envoy's defaults. `tcp.connectTimeout` → `connect_timeout`.
* `outlierDetection` → `outlier_detection`: `consecutive5xxErrors` (0 sets
  `enforcing_consecutive_5xx` to 0, turning 5xx ejection off), `interval`,
  `baseEjectionTime`, `maxEjectionPercent`; the rest keep Envoy's defaults.

Load assignments group endpoints by locality, sorted. A locality's weight is the sum of the
weights of its endpoints that take traffic, and at least 1: a gRPC client drops a locality
without a weight (XDS_PEERS.md), and one whose endpoints all drain should keep its place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from sail.model import (
    CircuitBreakers,
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    OutlierDetection,
    Thresholds,
)
from sail.registry.istio import destination_rule as dr

__all__ = ["LB_POLICIES", "load_assignment", "with_policy"]

LB_POLICIES = {
    dr.SimpleLB.ROUND_ROBIN: "round_robin",
    dr.SimpleLB.RANDOM: "random",
    dr.SimpleLB.LEAST_REQUEST: "least_request",
    dr.SimpleLB.LEAST_CONN: "least_request",
}
"""Istio's simple load balancers → sail's (and Envoy's) policy names. `PASSTHROUGH` has
none: it needs an original-destination cluster."""


def with_policy(cluster: Cluster, policy: dr.TrafficPolicy | None) -> Cluster:
    """`cluster` with the settings of `policy` (unsupported parts are refused earlier, by
    `check_supported`)."""
    if policy is None:
        return cluster
    changes: dict[str, Any] = {}
    lb = policy.load_balancer
    if lb is not None and lb.simple in LB_POLICIES:
        changes["lb_policy"] = LbPolicy(LB_POLICIES[lb.simple])
    pool = policy.connection_pool
    if pool is not None:
        if pool.tcp is not None and pool.tcp.connect_timeout is not None:
            changes["connect_timeout"] = pool.tcp.connect_timeout
        thresholds = _thresholds(pool)
        if thresholds is not None:
            changes["circuit_breakers"] = CircuitBreakers((thresholds,))
    if policy.outlier_detection is not None:
        changes["outlier_detection"] = _outlier_detection(policy.outlier_detection)
    return attrs.evolve(cluster, **changes)


def _thresholds(pool: dr.ConnectionPoolSettings) -> Thresholds | None:
    tcp = pool.tcp or dr.TCPSettings()
    http = pool.http or dr.HTTPSettings()
    limits = {
        "max_connections": tcp.max_connections,
        "max_pending_requests": http.http1_max_pending_requests,
        "max_requests": http.http2_max_requests,
        "max_retries": http.max_retries,
    }
    given = {k: v for k, v in limits.items() if v is not None}
    return Thresholds(priority=0, **given) if given else None


def _outlier_detection(od: dr.OutlierDetection) -> OutlierDetection:
    d = OutlierDetection()
    errors = od.consecutive_5xx_errors
    return OutlierDetection(
        consecutive_5xx=errors or d.consecutive_5xx,
        interval=od.interval if od.interval is not None else d.interval,
        base_ejection_time=(
            od.base_ejection_time if od.base_ejection_time is not None else d.base_ejection_time
        ),
        max_ejection_percent=(
            od.max_ejection_percent
            if od.max_ejection_percent is not None
            else d.max_ejection_percent
        ),
        enforcing_consecutive_5xx=0 if errors == 0 else d.enforcing_consecutive_5xx,
    )


def load_assignment(
    name: str, endpoints: Iterable[tuple[Locality, Endpoint]]
) -> ClusterLoadAssignment:
    """The assignment of cluster `name`: one group per locality, sorted by locality and
    endpoints by address. An address:port given twice is kept once (the first in sorted
    order), since peers NACK duplicates."""
    by_address: dict[tuple[str, int], tuple[Locality, Endpoint]] = {}
    for locality, endpoint in sorted(endpoints, key=_endpoint_order):
        by_address.setdefault((endpoint.address, endpoint.port), (locality, endpoint))
    groups: dict[Locality, list[Endpoint]] = {}
    for locality, endpoint in by_address.values():
        groups.setdefault(locality, []).append(endpoint)
    return ClusterLoadAssignment(
        cluster_name=name,
        localities=tuple(
            LocalityEndpoints(
                locality=locality,
                endpoints=tuple(members),
                weight=max(1, sum(e.weight for e in members if e.health.takes_traffic)),
            )
            for locality, members in sorted(groups.items(), key=lambda g: _locality_order(g[0]))
        ),
    )


def _locality_order(locality: Locality) -> tuple[str, str, str]:
    return (locality.region, locality.zone, locality.sub_zone)


def _endpoint_order(item: tuple[Locality, Endpoint]) -> tuple[Any, ...]:
    locality, e = item
    return (e.address, e.port, _locality_order(locality), int(e.health), e.weight, e.hostname)
