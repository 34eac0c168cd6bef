"""A DestinationRule's `trafficPolicy` → cluster settings, and endpoints → load assignments.

Traffic policy:

* `loadBalancer.simple` → `lb_policy`: `ROUND_ROBIN` → `round_robin`, `RANDOM` → `random`,
  `LEAST_REQUEST` (and `LEAST_CONN`) → `least_request`; unset keeps `round_robin`.
* `connectionPool` → one circuit-breaker threshold (priority 0): `tcp.maxConnections` →
  `max_connections`, `http.http1MaxPendingRequests` → `max_pending_requests`,
  `http.http2MaxRequests` → `max_requests`, `http.maxRetries` → `max_retries`; the limits
  left out keep Envoy's defaults. `tcp.connectTimeout` → `connect_timeout`.
* `outlierDetection` → `outlier_detection`, as Istio's `applyOutlierDetection` does:
  success-rate ejection is turned off (`enforcing_success_rate` 0);
  `consecutive5xxErrors` → `consecutive_5xx` and `consecutiveGatewayErrors` →
  `consecutive_gateway_failure`, each enforced at 100 % when above 0 and at 0 % when 0 (off);
  `interval`, `baseEjectionTime`; `maxEjectionPercent` when above 0 (0 keeps Envoy's 10 %,
  as in Istio); `splitExternalLocalOriginErrors: true` sets the split, turns local-origin
  success-rate ejection off, and takes `consecutiveLocalOriginFailures` when above 0
  (ignored without the split, as in Istio). The rest keep Envoy's defaults. And
  `minHealthPercent` (default 0) becomes the cluster's `healthy_panic_threshold`: with
  outlier detection on, Istio turns the panic threshold off unless it is set.
* Defaults, written out so that Envoy applies what sail applies (`with_defaults`):
  without `outlierDetection`, sail's failure accrual; without `maxRetries`, the default
  retry budget; without `tcp.connectTimeout`, sail's 1 s connect timeout (the model's
  default, which the encoder always writes).

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
    HashPolicy,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    OutlierDetection,
    Thresholds,
)
from sail.registry.istio import destination_rule as dr
from sail.resilience.limits import DEFAULT_BUDGET
from sail.resilience.outlier import DEFAULT_ACCRUAL

__all__ = ["LB_POLICIES", "hash_policies", "load_assignment", "with_policy"]

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
        return with_defaults(cluster)
    changes: dict[str, Any] = {}
    lb = policy.load_balancer
    if lb is not None and lb.simple in LB_POLICIES:
        changes["lb_policy"] = LbPolicy(LB_POLICIES[lb.simple])
    if lb is not None and lb.consistent_hash is not None:
        changes["lb_policy"] = _hash_lb(lb.consistent_hash)
    pool = policy.connection_pool
    if pool is not None:
        if pool.tcp is not None and pool.tcp.connect_timeout is not None:
            changes["connect_timeout"] = pool.tcp.connect_timeout
        thresholds = _thresholds(pool)
        if thresholds is not None:
            changes["circuit_breakers"] = CircuitBreakers((thresholds,))
    if policy.outlier_detection is not None:
        changes["outlier_detection"] = _outlier_detection(policy.outlier_detection)
        changes["healthy_panic_threshold"] = float(policy.outlier_detection.min_health_percent or 0)
    return with_defaults(attrs.evolve(cluster, **changes))


def with_defaults(cluster: Cluster) -> Cluster:
    """`cluster` with sail's defaults written out where the DestinationRule set nothing, so
    that Envoy applies what a sail client applies to the same cluster: failure accrual
    (`sail.resilience.outlier.DEFAULT_ACCRUAL`) without `outlierDetection`, and the
    default retry budget (20 %, at least 3) without `maxRetries`. (grpcio's xDS client
    implements only outlier detection's success-rate and failure-percentage detectors,
    which the accrual leaves off, so it does not eject on it.)"""
    changes: dict[str, Any] = {}
    if cluster.outlier_detection is None:
        changes["outlier_detection"] = DEFAULT_ACCRUAL
    breakers = cluster.circuit_breakers
    if breakers is None:
        changes["circuit_breakers"] = CircuitBreakers((Thresholds(retry_budget=DEFAULT_BUDGET),))
    else:
        changes["circuit_breakers"] = CircuitBreakers(tuple(
            attrs.evolve(t, retry_budget=DEFAULT_BUDGET)
            if t.max_retries is None and t.retry_budget is None else t
            for t in breakers.thresholds
        ))
    return attrs.evolve(cluster, **changes)


def _hash_lb(ch: dr.ConsistentHashLB) -> LbPolicy:
    """`consistentHash` → `maglev` with `maglev`, else `ring_hash` (Istio's default), with
    the table or ring size given."""
    if ch.maglev is not None:
        size = ch.maglev.table_size
        return LbPolicy("maglev", (("table_size", size),) if size is not None else ())
    size = ch.ring_hash.minimum_ring_size if ch.ring_hash is not None else None
    if size is None:
        size = ch.minimum_ring_size
    return LbPolicy("ring_hash", (("minimum_ring_size", size),) if size is not None else ())


def hash_policies(ch: dr.ConsistentHashLB) -> tuple[HashPolicy, ...]:
    """The route hash policy of a `consistentHash`, as Istio writes it: `httpHeaderName`,
    `httpCookie` (`name`, `path`, `ttl`: with a ttl a missing cookie is generated),
    `useSourceIp`, `httpQueryParameterName`."""
    if ch.http_header_name is not None:
        return (HashPolicy("header", ch.http_header_name.lower()),)
    if ch.http_cookie is not None:
        c = ch.http_cookie
        return (HashPolicy("cookie", c.name, ttl=c.ttl, path=c.path or ""),)
    if ch.use_source_ip:
        return (HashPolicy("connection_properties"),)
    assert ch.http_query_parameter_name is not None
    return (HashPolicy("query_parameter", ch.http_query_parameter_name),)


def _thresholds(pool: dr.ConnectionPoolSettings) -> Thresholds | None:
    tcp = pool.tcp or dr.TCPSettings()
    http = pool.http or dr.HTTPSettings()
    limits = {
        "max_connections": tcp.max_connections,
        "max_pending_requests": http.http1_max_pending_requests,
        "max_requests": http.http2_max_requests,
        "max_retries": http.max_retries,
    }
    given: dict[str, Any] = {k: v for k, v in limits.items() if v is not None}
    return Thresholds(**given) if given else None


def _outlier_detection(od: dr.OutlierDetection) -> OutlierDetection:
    changes: dict[str, Any] = {"enforcing_success_rate": 0}
    if od.consecutive_5xx_errors is not None:
        changes["consecutive_5xx"] = od.consecutive_5xx_errors
        changes["enforcing_consecutive_5xx"] = 100 if od.consecutive_5xx_errors else 0
    if od.consecutive_gateway_errors is not None:
        changes["consecutive_gateway_failure"] = od.consecutive_gateway_errors
        changes["enforcing_consecutive_gateway_failure"] = (
            100 if od.consecutive_gateway_errors else 0
        )
    if od.interval is not None:
        changes["interval"] = od.interval
    if od.base_ejection_time is not None:
        changes["base_ejection_time"] = od.base_ejection_time
    if od.max_ejection_percent:
        changes["max_ejection_percent"] = od.max_ejection_percent
    if od.split_external_local_origin_errors:
        changes["split_external_local_origin_errors"] = True
        changes["enforcing_local_origin_success_rate"] = 0
        if od.consecutive_local_origin_failures:
            changes["consecutive_local_origin_failure"] = od.consecutive_local_origin_failures
            changes["enforcing_consecutive_local_origin_failure"] = 100
    return OutlierDetection(**changes)


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
