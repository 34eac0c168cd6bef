"""`ClusterLoadAssignment` → `ClusterLoadAssignment`: localities, priorities, endpoints.

Rules, and where sail stands between Envoy and gRPC (gRFC A27):

* **Locality weight.** Envoy's proto requires `load_balancing_weight >= 1` when set, so an
  explicit 0 is a NACK. When it is *unset*, gRPC silently drops the whole locality (calls
  then hang with no error, see XDS_PEERS.md), while Envoy, without locality-weighted
  balancing, simply balances over the hosts. sail treats an unset weight as 1: every
  endpoint the control plane sent is reachable. The encoder always sets the weight, so what
  sail's registry sends means the same to all three.
* **Priorities** must be contiguous from 0 (gRPC NACKs a gap: priority 2 with no priority 1
  has no defined failover order).
* **Duplicates.** The same locality twice in one priority, or the same address twice in the
  assignment, is a NACK (as gRPC).
* **Endpoints** need a `socket_address` with a port; `load_balancing_weight` defaults to 1 and
  must not be 0 (Envoy's `gte: 1`). The weights in one locality, and the locality weights
  in one priority, must each fit in a uint32.
* `policy.overprovisioning_factor` defaults to 140 and must be greater than 0;
  `drop_overloads` is not applied.
"""

from __future__ import annotations

from typing import Any

from sail.errors import InvalidSpiffeId
from sail.model import ClusterLoadAssignment, Endpoint, HealthStatus, Locality, LocalityEndpoints
from sail.security.spiffe import SpiffeId
from sail.xds.codec.decode_address import decode_socket_address
from sail.xds.codec.validation import Invalid, at, resource
from sail.xds.codec.wellknown import uint32_value

__all__ = ["decode_cluster_load_assignment", "decode_load_assignment"]

_UINT32_MAX = 2**32 - 1


def decode_cluster_load_assignment(msg: Any) -> ClusterLoadAssignment:
    """Decode an EDS resource; raises `ResourceError` naming the invalid field."""
    with resource("ClusterLoadAssignment", msg.cluster_name):
        if not msg.cluster_name:
            raise Invalid("cluster_name", "must not be empty")
        return decode_load_assignment(msg)


def decode_load_assignment(msg: Any, default_name: str = "") -> ClusterLoadAssignment:
    """Decode a `ClusterLoadAssignment`, raising `Invalid`. A cluster's inline
    `load_assignment` may leave `cluster_name` out: `default_name` is used then."""
    localities: list[LocalityEndpoints] = []
    seen_localities: dict[tuple[int, Locality], int] = {}
    seen_addresses: dict[tuple[str, int], tuple[int, str, int]] = {}
    priority_weights: dict[int, int] = {}
    for i, loc in enumerate(msg.endpoints):
        with at("endpoints", i):
            group = _locality_endpoints(loc, i, seen_addresses)
            key = (group.priority, group.locality)
            if key in seen_localities:
                raise Invalid(
                    "locality",
                    f"duplicate locality {group.locality} in priority {group.priority} "
                    f"(also endpoints[{seen_localities[key]}])",
                )
            seen_localities[key] = i
            total = priority_weights.get(group.priority, 0) + group.weight
            if total > _UINT32_MAX:
                raise Invalid(
                    "load_balancing_weight",
                    f"locality weights of priority {group.priority} sum to more than {_UINT32_MAX}",
                )
            priority_weights[group.priority] = total
        localities.append(group)
    _check_priorities(priority_weights.keys())
    factor = 140
    if msg.HasField("policy"):
        factor = uint32_value(msg.policy, "overprovisioning_factor", 140)
        if factor == 0:
            raise Invalid("policy.overprovisioning_factor", "must be greater than 0")
    return ClusterLoadAssignment(
        cluster_name=msg.cluster_name or default_name,
        localities=tuple(localities),
        overprovisioning_factor=factor,
    )


def _check_priorities(priorities: Any) -> None:
    present = sorted(priorities)
    for expected, got in enumerate(present):
        if got != expected:
            listed = ", ".join(str(p) for p in present)
            raise Invalid(
                "endpoints",
                f"priorities must be contiguous from 0: got {listed}, missing {expected}",
            )


def _locality_endpoints(
    loc: Any, index: int, seen_addresses: dict[tuple[str, int], tuple[int, str, int]]
) -> LocalityEndpoints:
    weight = uint32_value(loc, "load_balancing_weight", 1)
    if weight == 0:
        raise Invalid("load_balancing_weight", "must be at least 1 (leave it unset for 1)")
    which = loc.WhichOneof("lb_config")
    if which == "leds_cluster_locality_config":
        raise Invalid(which, "LEDS is not supported")
    if which == "load_balancer_endpoints":
        if len(loc.lb_endpoints):
            raise Invalid(which, "cannot be combined with lb_endpoints")
        field = "load_balancer_endpoints.lb_endpoints"
        lb_endpoints = loc.load_balancer_endpoints.lb_endpoints
    else:
        field = "lb_endpoints"
        lb_endpoints = loc.lb_endpoints
    endpoints = []
    total = 0
    # The hot loop of a large EDS update (10,000 endpoints): one try per endpoint instead of
    # nested `at()` context managers, and error locations formatted only on error.
    for j, lb_endpoint in enumerate(lb_endpoints):
        try:
            endpoint = _endpoint(lb_endpoint)
            key = (endpoint.address, endpoint.port)
            if key in seen_addresses:
                i, f, k = seen_addresses[key]
                raise Invalid(
                    "endpoint.address",
                    f"duplicate endpoint {endpoint.authority} (also endpoints[{i}].{f}[{k}])",
                )
            seen_addresses[key] = (index, field, j)
            total += endpoint.weight
            if total > _UINT32_MAX:
                raise Invalid(
                    "load_balancing_weight",
                    f"endpoint weights of the locality sum to more than {_UINT32_MAX}",
                )
        except Invalid as exc:
            exc.segments.insert(0, f"{field}[{j}]")
            raise
        endpoints.append(endpoint)
    return LocalityEndpoints(
        locality=Locality(loc.locality.region, loc.locality.zone, loc.locality.sub_zone),
        endpoints=tuple(endpoints),
        weight=weight,
        priority=loc.priority,
    )


def _endpoint(lb_endpoint: Any) -> Endpoint:
    which = lb_endpoint.WhichOneof("host_identifier")
    if which == "endpoint_name":
        raise Invalid("endpoint_name", "named endpoints are not supported")
    if which is None:
        raise Invalid("endpoint", "is required")
    weight = uint32_value(lb_endpoint, "load_balancing_weight", 1)
    if weight == 0:
        raise Invalid("load_balancing_weight", "must be at least 1 (leave it unset for 1)")
    try:
        health = HealthStatus(lb_endpoint.health_status)
    except ValueError:
        raise Invalid("health_status", f"unknown value {lb_endpoint.health_status}") from None
    ep = lb_endpoint.endpoint
    if not ep.HasField("address"):
        raise Invalid("endpoint.address", "is required")
    try:
        address, port = decode_socket_address(ep.address)
    except Invalid as exc:
        exc.segments.insert(0, "endpoint.address")
        raise
    return Endpoint(address=address, port=port, weight=weight, health=health,
                    hostname=ep.hostname, identity=_identity(lb_endpoint))


IDENTITY_METADATA = "sail"
"""The `filter_metadata` key under which an endpoint's `identity` (its SPIFFE ID) goes."""


def _identity(lb_endpoint: Any) -> str:
    """The endpoint's SPIFFE ID from `metadata.filter_metadata["sail"]["identity"]`, `""`
    without one; a value that is not a SPIFFE ID is a NACK naming the field."""
    if not lb_endpoint.HasField("metadata"):
        return ""
    sail = lb_endpoint.metadata.filter_metadata.get(IDENTITY_METADATA)
    if sail is None or "identity" not in sail.fields:
        return ""
    field = f"metadata.filter_metadata.{IDENTITY_METADATA}.identity"
    value = sail.fields["identity"]
    if value.WhichOneof("kind") != "string_value":
        raise Invalid(field, "must be a string")
    try:
        return str(SpiffeId.parse(value.string_value))
    except InvalidSpiffeId as exc:
        raise Invalid(field, str(exc)) from None
