"""`Cluster` → `Cluster`: discovery type, balancing policy, limits and outlier detection.

* `EDS` clusters need `eds_cluster_config.eds_config` to be `ads` or `self`: sail has one ADS
  stream and nowhere else to fetch endpoints from (gRFC A27).
* `STATIC`, `STRICT_DNS` and `LOGICAL_DNS` clusters carry their endpoints in
  `load_assignment`, decoded with the EDS rules; `STATIC` endpoints must be IP addresses and
  a `LOGICAL_DNS` cluster has exactly one endpoint (Envoy's rules). `ORIGINAL_DST` and
  custom `cluster_type`s (aggregate clusters included) are not supported.
* Unset values take Envoy's defaults, but for `connect_timeout`: 1 s, where Envoy's is 5 s
  (`sail.model.cluster.DEFAULT_CONNECT_TIMEOUT` says why); `healthy_panic_threshold` 50 %,
  circuit breaker limits 1024/1024/1024 (retries: see `Thresholds`), and Envoy's outlier
  detection defaults (see `model.OutlierDetection`): 5 consecutive 5xx enforced at 100 %,
  5 gateway failures enforced at 0 %, success rate enforced at 100 % (5 hosts of 100
  requests), failure percentage enforced at 0 %, 10 s interval, 30 s base ejection up to
  300 s, 10 % max ejected.
* `transport_socket` is plaintext (`raw_buffer`, or unset) or an `UpstreamTlsContext` with
  certificate provider instances the bootstrap names (gRFC A29,
  `sail.xds.codec.decode_tls`). Every `transport_socket_matches[].transport_socket` must be
  plaintext and `transport_socket_matcher` is refused: sail does not choose sockets per
  endpoint, so a TLS socket there would otherwise be accepted and the traffic it covers
  sent in plaintext.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from sail.model import (
    DEFAULT_CONNECT_TIMEOUT,
    CircuitBreakers,
    Cluster,
    ClusterLoadAssignment,
    DiscoveryType,
    OutlierDetection,
    RetryBudget,
    Thresholds,
)
from sail.model.tls import UpstreamTls
from sail.xds.codec.decode_endpoint import decode_load_assignment
from sail.xds.codec.decode_lb_policy import decode_lb_policy
from sail.xds.codec.transport_socket import check_plaintext, upstream_socket
from sail.xds.codec.validation import Invalid, at, resource
from sail.xds.codec.wellknown import bool_value, duration_seconds, enum_name, uint32_value

__all__ = ["decode_cluster"]

_DISCOVERY = {
    cluster_pb2.Cluster.EDS: DiscoveryType.EDS,
    cluster_pb2.Cluster.STATIC: DiscoveryType.STATIC,
    cluster_pb2.Cluster.STRICT_DNS: DiscoveryType.STRICT_DNS,
    cluster_pb2.Cluster.LOGICAL_DNS: DiscoveryType.LOGICAL_DNS,
}
_THRESHOLD_DEFAULTS = Thresholds()
_OUTLIER_DEFAULTS = OutlierDetection()


def decode_cluster(msg: Any, providers: Collection[str] = ()) -> Cluster:
    """Decode a CDS resource; raises `ResourceError` naming the invalid field. `providers`
    are the certificate provider instance names a TLS context may refer to (the
    bootstrap's `certificate_providers`)."""
    with resource("Cluster", msg.name):
        if not msg.name:
            raise Invalid("name", "must not be empty")
        discovery, eds_name, assignment = _discovery(msg)
        tls = _transport_socket(msg, providers)
        return Cluster(
            name=msg.name,
            discovery=discovery,
            eds_service_name=eds_name,
            load_assignment=assignment,
            lb_policy=decode_lb_policy(msg),
            connect_timeout=_connect_timeout(msg),
            healthy_panic_threshold=_panic_threshold(msg),
            circuit_breakers=_circuit_breakers(msg),
            outlier_detection=_outlier_detection(msg),
            tls=tls,
        )


def _discovery(msg: Any) -> tuple[DiscoveryType, str, ClusterLoadAssignment | None]:
    if msg.WhichOneof("cluster_discovery_type") == "cluster_type":
        raise Invalid(
            "cluster_type", f"custom cluster type {msg.cluster_type.name!r} is not supported"
        )
    discovery = _DISCOVERY.get(msg.type)
    if discovery is None:
        raise Invalid(
            "type", f"{enum_name(cluster_pb2.Cluster.DiscoveryType, msg.type)} is not supported"
        )
    if discovery is DiscoveryType.EDS:
        with at("eds_cluster_config"), at("eds_config"):
            source = msg.eds_cluster_config.eds_config.WhichOneof("config_source_specifier")
            if source not in ("ads", "self"):
                raise Invalid("", f"must be ads or self, got {source or 'nothing'}")
        return discovery, msg.eds_cluster_config.service_name, None
    if not msg.HasField("load_assignment"):
        raise Invalid("load_assignment", f"is required for a {discovery.value} cluster")
    with at("load_assignment"):
        assignment = decode_load_assignment(msg.load_assignment, default_name=msg.name)
        if discovery is DiscoveryType.STATIC:
            _check_ip_addresses(assignment)
        count = len(assignment.endpoints)
        if discovery is DiscoveryType.LOGICAL_DNS and count != 1:
            raise Invalid("", f"a LOGICAL_DNS cluster needs exactly one endpoint, got {count}")
    return discovery, "", assignment


_NO_UPSTREAM_TLS = (
    "sail does not choose transport sockets per endpoint, so the traffic this socket covers "
    "would go out in plaintext (give TLS in the cluster's transport_socket)"
)


def _transport_socket(msg: Any, providers: Collection[str]) -> UpstreamTls | None:
    for i, match in enumerate(msg.transport_socket_matches):
        if match.HasField("transport_socket"):
            with at("transport_socket_matches", i):
                check_plaintext(match.transport_socket, "transport_socket", _NO_UPSTREAM_TLS)
    if msg.HasField("transport_socket_matcher"):
        raise Invalid(
            "transport_socket_matcher",
            f"is not supported: {_NO_UPSTREAM_TLS}",
        )
    if msg.HasField("transport_socket"):
        return upstream_socket(msg.transport_socket, "transport_socket", providers)
    return None


def _check_ip_addresses(assignment: ClusterLoadAssignment) -> None:
    """STATIC endpoints are connected to as they are, so they must be IP addresses."""
    for i, group in enumerate(assignment.localities):
        for j, endpoint in enumerate(group.endpoints):
            try:
                ipaddress.ip_address(endpoint.address)
            except ValueError:
                raise Invalid(
                    f"endpoints[{i}].lb_endpoints[{j}].endpoint.address.socket_address.address",
                    f"{endpoint.address!r} is not an IP address, as a STATIC cluster needs "
                    "(use STRICT_DNS or LOGICAL_DNS for host names)",
                ) from None


def _connect_timeout(msg: Any) -> float:
    value = duration_seconds(msg, "connect_timeout", positive=True)
    return DEFAULT_CONNECT_TIMEOUT if value is None else value


def _panic_threshold(msg: Any) -> float:
    if not msg.common_lb_config.HasField("healthy_panic_threshold"):
        return 50.0
    value = float(msg.common_lb_config.healthy_panic_threshold.value)
    if not 0.0 <= value <= 100.0:
        raise Invalid("common_lb_config.healthy_panic_threshold.value", f"{value} is not in 0-100")
    return value


def _circuit_breakers(msg: Any) -> CircuitBreakers | None:
    if not msg.HasField("circuit_breakers"):
        return None
    out: list[Thresholds] = []
    seen: set[int] = set()
    d = _THRESHOLD_DEFAULTS
    for i, t in enumerate(msg.circuit_breakers.thresholds):
        with at("circuit_breakers"), at("thresholds", i):
            if t.priority not in (0, 1):
                raise Invalid("priority", f"unknown priority {t.priority}")
            if t.priority in seen:
                raise Invalid("priority", "duplicate priority: one entry per priority")
        seen.add(t.priority)
        out.append(
            Thresholds(
                priority=t.priority,
                max_connections=uint32_value(t, "max_connections", d.max_connections),
                max_pending_requests=uint32_value(
                    t, "max_pending_requests", d.max_pending_requests
                ),
                max_requests=uint32_value(t, "max_requests", d.max_requests),
                max_retries=(
                    uint32_value(t, "max_retries", 0) if t.HasField("max_retries") else None
                ),
                retry_budget=_retry_budget(t),
            )
        )
    return CircuitBreakers(tuple(out))


def _retry_budget(t: Any) -> RetryBudget | None:
    if not t.HasField("retry_budget"):
        return None
    b = t.retry_budget
    with at("retry_budget"):
        percent = 20.0
        if b.HasField("budget_percent"):
            percent = float(b.budget_percent.value)
            if not 0.0 <= percent <= 100.0:
                raise Invalid("budget_percent.value", f"{percent} is not in 0-100")
        return RetryBudget(
            budget_percent=percent,
            min_retry_concurrency=uint32_value(b, "min_retry_concurrency", 3),
        )


_OUTLIER_PERCENTS = (
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_success_rate",
    "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate",
    "failure_percentage_threshold",
    "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin",
)
_OUTLIER_COUNTS = (
    "consecutive_5xx",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)


def _outlier_detection(msg: Any) -> OutlierDetection | None:
    """Every field but `successful_active_health_check_uneject_host` (sail has no active
    health checks); `monitors` (extension monitors) are refused. As in Envoy, an unset
    `max_ejection_time` is 300 s or `base_ejection_time`, whichever is larger, and a set one
    may not be smaller than `base_ejection_time`."""
    if not msg.HasField("outlier_detection"):
        return None
    od = msg.outlier_detection
    d = _OUTLIER_DEFAULTS
    values: dict[str, Any] = {}
    with at("outlier_detection"):
        if len(od.monitors):
            raise Invalid("monitors", "outlier detection extension monitors are not supported")
        for key in _OUTLIER_PERCENTS:
            values[key] = uint32_value(od, key, getattr(d, key))
            if values[key] > 100:
                raise Invalid(key, f"{values[key]} is more than 100")
        for key in _OUTLIER_COUNTS:
            values[key] = uint32_value(od, key, getattr(d, key))
        for key in ("interval", "base_ejection_time"):
            value = duration_seconds(od, key, positive=True)
            values[key] = getattr(d, key) if value is None else value
        jitter = duration_seconds(od, "max_ejection_time_jitter")
        values["max_ejection_time_jitter"] = 0.0 if jitter is None else jitter
        longest = duration_seconds(od, "max_ejection_time", positive=True)
        base = values["base_ejection_time"]
        if longest is not None and longest < base:
            raise Invalid(
                "max_ejection_time",
                f"{longest}s is less than base_ejection_time ({base}s), which Envoy refuses",
            )
        values["max_ejection_time"] = max(300.0, base) if longest is None else longest
    values["split_external_local_origin_errors"] = bool(od.split_external_local_origin_errors)
    values["always_eject_one_host"] = bool_value(
        od, "always_eject_one_host", d.always_eject_one_host
    )
    return OutlierDetection(**values)
