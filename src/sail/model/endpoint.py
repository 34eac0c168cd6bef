"""Endpoints of a cluster, grouped by locality and priority (Envoy's `ClusterLoadAssignment`)."""

from __future__ import annotations

import enum
import functools

import attrs

__all__ = [
    "ClusterLoadAssignment",
    "Endpoint",
    "HealthStatus",
    "Locality",
    "LocalityEndpoints",
    "host_port",
]


class HealthStatus(enum.IntEnum):
    """Envoy's `core.v3.HealthStatus`, with the same numbers."""

    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2
    DRAINING = 3
    TIMEOUT = 4
    DEGRADED = 5

    @property
    def takes_traffic(self) -> bool:
        """HEALTHY and UNKNOWN endpoints take traffic; every other state does not (as gRPC,
        and as Envoy when no active health checking overrides the EDS status)."""
        return self in (HealthStatus.HEALTHY, HealthStatus.UNKNOWN)


@attrs.frozen
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.region, self.zone, self.sub_zone) if p) or "-"


@attrs.frozen
class Endpoint:
    """One upstream host.

    **Parameters**

    * `address`, `port` - where to connect (an IP or a DNS name).
    * `weight` - the `load_balancing_weight`, at least 1.
    * `health` - the EDS `health_status`.
    * `hostname` - Envoy's `hostname`, used as Host when `auto_host_rewrite` is on.
    * `identity` - the SPIFFE ID of the endpoint's workload as the control plane knows it
      (`metadata.filter_metadata["sail"]["identity"]`, which the registry writes), `""`
      when unknown. A peer check that can test one identity only (grpcio's) tests this
      one, if the cluster's SAN matchers accept it.
    """

    address: str
    port: int
    weight: int = 1
    health: HealthStatus = HealthStatus.UNKNOWN
    hostname: str = ""
    identity: str = ""

    @functools.cached_property
    def authority(self) -> str:
        """`host:port` (`[v6]:port`); built once per endpoint (the request path reads it
        several times per call)."""
        return host_port(self.address, self.port)


def host_port(address: str, port: int) -> str:
    """`address:port`, an IPv6 address in brackets (`[::1]:80`), as URLs and gRPC write it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@attrs.frozen
class LocalityEndpoints:
    """Envoy's `LocalityLbEndpoints`."""

    locality: Locality
    endpoints: tuple[Endpoint, ...]
    weight: int = 1
    priority: int = 0


@attrs.frozen
class ClusterLoadAssignment:
    """The endpoints of one cluster.

    `overprovisioning_factor` is a percentage (Envoy's default 140): a priority level whose
    healthy share times this factor reaches 100 % keeps all the traffic.
    """

    cluster_name: str
    localities: tuple[LocalityEndpoints, ...] = ()
    overprovisioning_factor: int = 140

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for loc in self.localities for e in loc.endpoints)
