"""Model → protobuf, for the registry: the inverse of the decoders.

`decode_x(encode_x(obj)) == obj` holds for every object a decoder can produce (a property
test checks it). Beyond that, what is written is what real peers need (XDS_PEERS.md):

* every `HttpConnectionManager` ends with the router filter, its `typed_config` set, and
  has a `stat_prefix` (Envoy requires one); the router is appended when the model has none;
* RDS and EDS config sources are `ads` with `resource_api_version: V3`;
* locality and endpoint weights are always set: a gRPC client drops a locality without one;
* balancing policies with an enum value (`round_robin`, `random`, `least_request`,
  `ring_hash`, `maglev`) use `lb_policy` plus its legacy `*_lb_config`, which every Envoy and
  gRPC version reads; others go in `load_balancing_policy` as a typed extension, and a name
  sail does not know goes as a `TypedStruct` of type `type.googleapis.com/<name>`.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ep_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, json_format
from xds.type.v3 import typed_struct_pb2

from sail.model import (
    CidrRange,
    Cluster,
    ClusterLoadAssignment,
    DiscoveryType,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    HttpFilter,
    LbPolicy,
    Listener,
    LocalityEndpoints,
    OutlierDetection,
    Thresholds,
)
from sail.xds.codec.encode_route import encode_http_fault, encode_route_configuration
from sail.xds.codec.encode_tls import encode_downstream_tls, encode_upstream_tls
from sail.xds.codec.extensions import HCM_FILTER_NAME, ROUTER, ROUTER_NAME, TYPE_PREFIX
from sail.xds.codec.lb_options import TYPED_CLASSES, encode_options
from sail.xds.codec.wellknown import seconds_to_duration, wrap_bool, wrap_uint32

__all__ = [
    "encode_cluster",
    "encode_cluster_load_assignment",
    "encode_http_connection_manager",
    "encode_listener",
    "encode_route_configuration",
]


def _ads() -> Any:
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    source.ads.SetInParent()
    return source


def _pack(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# -- Listener ---------------------------------------------------------------------------


def encode_listener(listener: Listener) -> Any:
    """An API listener when `address` is `None`, else a port listener with one filter
    chain holding the HCM."""
    hcm = _pack(encode_http_connection_manager(listener.hcm, stat_prefix=listener.name))
    if listener.address is None:
        return listener_pb2.Listener(
            name=listener.name, api_listener=api_listener_pb2.ApiListener(api_listener=hcm)
        )
    host, port = listener.address
    msg = listener_pb2.Listener(
        name=listener.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=host, port_value=port)
        ),
    )
    if not listener.filter_chains and listener.default_filter_chain is None:
        msg.filter_chains.append(_filter_chain(FilterChain(listener.hcm), listener.name))
        return msg
    msg.filter_chains.extend(_filter_chain(c, listener.name) for c in listener.filter_chains)
    if listener.default_filter_chain is not None:
        msg.default_filter_chain.CopyFrom(
            _filter_chain(listener.default_filter_chain, listener.name)
        )
    return msg


def _filter_chain(chain: FilterChain, stat_prefix: str) -> Any:
    hcm = _pack(encode_http_connection_manager(chain.hcm, stat_prefix=stat_prefix))
    msg = listener_components_pb2.FilterChain(
        name=chain.name,
        filters=[listener_components_pb2.Filter(name=HCM_FILTER_NAME, typed_config=hcm)],
    )
    m = chain.match
    if m != FilterChainMatch():
        match = msg.filter_chain_match
        match.prefix_ranges.extend(_cidr(r) for r in m.prefix_ranges)
        match.source_type = m.source_type.value
        match.source_prefix_ranges.extend(_cidr(r) for r in m.source_prefix_ranges)
        match.source_ports.extend(m.source_ports)
        if m.raw_buffer:
            match.transport_protocol = "raw_buffer"
        elif m.tls:
            match.transport_protocol = "tls"
        if m.never and not m.tls:  # one of the fields no in-process server can match
            match.application_protocols.append("h2")
    if chain.tls is not None:
        msg.transport_socket.CopyFrom(encode_downstream_tls(chain.tls))
    return msg


def _cidr(r: CidrRange) -> Any:
    out = address_pb2.CidrRange(address_prefix=r.address)
    out.prefix_len.value = r.prefix_len
    return out


def encode_http_connection_manager(hcm: HttpConnectionManager, stat_prefix: str) -> Any:
    msg = hcm_pb2.HttpConnectionManager(stat_prefix=stat_prefix or "sail")
    if hcm.route_config is not None:
        msg.route_config.CopyFrom(encode_route_configuration(hcm.route_config))
    else:
        msg.rds.config_source.CopyFrom(_ads())
        msg.rds.route_config_name = hcm.rds_name or ""
    filters = list(hcm.http_filters)
    if not filters or filters[-1].type_url != ROUTER:
        filters.append(HttpFilter(ROUTER_NAME, ROUTER))
    msg.http_filters.extend(
        hcm_pb2.HttpFilter(name=f.name, typed_config=_filter_config(f), is_optional=f.is_optional)
        for f in filters
    )
    if hcm.max_stream_duration is not None:
        msg.common_http_protocol_options.max_stream_duration.CopyFrom(
            seconds_to_duration(hcm.max_stream_duration)
        )
    return msg


def _filter_config(f: HttpFilter) -> Any:
    """The filter's `typed_config`: its config where the model has one (a fault filter's
    `HTTPFault`), else an empty message of its type."""
    if f.config is None:
        return any_pb2.Any(type_url=f.type_url)
    return _pack(encode_http_fault(f.config))


# -- Cluster ----------------------------------------------------------------------------

_DISCOVERY_ENUM = {
    DiscoveryType.EDS: cluster_pb2.Cluster.EDS,
    DiscoveryType.STATIC: cluster_pb2.Cluster.STATIC,
    DiscoveryType.STRICT_DNS: cluster_pb2.Cluster.STRICT_DNS,
    DiscoveryType.LOGICAL_DNS: cluster_pb2.Cluster.LOGICAL_DNS,
}
_LB_ENUM = {
    "round_robin": (cluster_pb2.Cluster.ROUND_ROBIN, None),
    "random": (cluster_pb2.Cluster.RANDOM, None),
    "least_request": (cluster_pb2.Cluster.LEAST_REQUEST, "least_request_lb_config"),
    "ring_hash": (cluster_pb2.Cluster.RING_HASH, "ring_hash_lb_config"),
    "maglev": (cluster_pb2.Cluster.MAGLEV, "maglev_lb_config"),
}


def encode_cluster(cluster: Cluster) -> Any:
    msg = cluster_pb2.Cluster(
        name=cluster.name,
        type=_DISCOVERY_ENUM[cluster.discovery],
        connect_timeout=seconds_to_duration(cluster.connect_timeout),
    )
    if cluster.discovery is DiscoveryType.EDS:
        msg.eds_cluster_config.eds_config.CopyFrom(_ads())
        msg.eds_cluster_config.service_name = cluster.eds_service_name
    else:
        assignment = cluster.load_assignment or ClusterLoadAssignment(cluster.name)
        msg.load_assignment.CopyFrom(encode_cluster_load_assignment(assignment))
    _encode_lb_policy(cluster.lb_policy, msg)
    msg.common_lb_config.healthy_panic_threshold.value = cluster.healthy_panic_threshold
    if cluster.circuit_breakers is not None:
        msg.circuit_breakers.SetInParent()
        msg.circuit_breakers.thresholds.extend(
            _thresholds(t) for t in cluster.circuit_breakers.thresholds
        )
    if cluster.outlier_detection is not None:
        msg.outlier_detection.CopyFrom(_outlier_detection(cluster.outlier_detection))
    if cluster.tls is not None:
        msg.transport_socket.CopyFrom(encode_upstream_tls(cluster.tls))
    return msg


_OUTLIER_UINT32 = (
    "consecutive_5xx",
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_success_rate",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "consecutive_gateway_failure",
    "enforcing_consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate",
    "failure_percentage_threshold",
    "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)
_OUTLIER_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")


def _outlier_detection(od: OutlierDetection) -> Any:
    """Every field written out, defaults included, so that no peer's own defaults apply;
    `always_eject_one_host` (Envoy 1.29) and the jitter only when set, for older peers."""
    msg = outlier_detection_pb2.OutlierDetection(
        split_external_local_origin_errors=od.split_external_local_origin_errors
    )
    if od.always_eject_one_host:
        msg.always_eject_one_host.CopyFrom(wrap_bool(True))
    for key in _OUTLIER_UINT32:
        getattr(msg, key).CopyFrom(wrap_uint32(getattr(od, key)))
    for key in _OUTLIER_DURATIONS:
        getattr(msg, key).CopyFrom(seconds_to_duration(getattr(od, key)))
    if od.max_ejection_time_jitter:
        msg.max_ejection_time_jitter.CopyFrom(seconds_to_duration(od.max_ejection_time_jitter))
    return msg


def _encode_lb_policy(policy: LbPolicy, msg: Any) -> None:
    if policy.name in _LB_ENUM:
        enum, config_field = _LB_ENUM[policy.name]
        msg.lb_policy = enum
        if config_field is not None and policy.options:
            encode_options(policy.name, policy.options, getattr(msg, config_field))
        elif policy.options:
            raise ValueError(f"policy {policy.name!r} takes no options, got {policy.options}")
        return
    entry = msg.load_balancing_policy.policies.add()
    entry.typed_extension_config.name = f"sail.lb.{policy.name}"
    cls = TYPED_CLASSES.get(policy.name)
    if cls is not None:
        config = encode_options(policy.name, policy.options, cls())
        entry.typed_extension_config.typed_config.Pack(config)
        return
    struct = typed_struct_pb2.TypedStruct(type_url=TYPE_PREFIX + policy.name)
    json_format.ParseDict(_thaw(policy.options), struct.value)
    entry.typed_extension_config.typed_config.Pack(struct)


def _thaw(value: Any) -> Any:
    """The inverse of `lb_options.freeze` for option tuples: back to JSON-like dicts."""
    if isinstance(value, tuple) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value
    ):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# -- ClusterLoadAssignment --------------------------------------------------------------


def encode_cluster_load_assignment(assignment: ClusterLoadAssignment) -> Any:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=assignment.cluster_name,
        endpoints=[_locality(group) for group in assignment.localities],
        policy=endpoint_pb2.ClusterLoadAssignment.Policy(
            overprovisioning_factor=wrap_uint32(assignment.overprovisioning_factor)
        ),
    )


def _identity_metadata(identity: str) -> Any:
    """An endpoint's `metadata` carrying its SPIFFE ID (`decode_endpoint._identity`)."""
    if not identity:
        return None
    metadata = base_pb2.Metadata()
    metadata.filter_metadata["sail"].update({"identity": identity})
    return metadata


def _locality(group: LocalityEndpoints) -> Any:
    loc = group.locality
    return ep_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(region=loc.region, zone=loc.zone, sub_zone=loc.sub_zone),
        load_balancing_weight=wrap_uint32(group.weight),
        priority=group.priority,
        lb_endpoints=[
            ep_pb2.LbEndpoint(
                endpoint=ep_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(
                            address=e.address, port_value=e.port
                        )
                    ),
                    hostname=e.hostname,
                ),
                health_status=int(e.health),
                load_balancing_weight=wrap_uint32(e.weight),
                metadata=_identity_metadata(e.identity),
            )
            for e in group.endpoints
        ],
    )


def _thresholds(t: Thresholds) -> Any:
    msg = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=t.priority,
        max_connections=wrap_uint32(t.max_connections),
        max_pending_requests=wrap_uint32(t.max_pending_requests),
        max_requests=wrap_uint32(t.max_requests),
    )
    if t.max_retries is not None:
        msg.max_retries.value = t.max_retries
    if t.retry_budget is not None:
        msg.retry_budget.budget_percent.value = t.retry_budget.budget_percent
        msg.retry_budget.min_retry_concurrency.value = t.retry_budget.min_retry_concurrency
    return msg
