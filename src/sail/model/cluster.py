"""Upstream clusters (Envoy's `config.cluster.v3.Cluster`)."""

from __future__ import annotations

import enum

import attrs

from sail.model.endpoint import ClusterLoadAssignment
from sail.model.policy import CircuitBreakers, OutlierDetection

__all__ = ["Cluster", "DiscoveryType", "LbPolicy"]


class DiscoveryType(enum.Enum):
    EDS = "EDS"
    STATIC = "STATIC"
    STRICT_DNS = "STRICT_DNS"
    LOGICAL_DNS = "LOGICAL_DNS"


@attrs.frozen
class LbPolicy:
    """A load-balancing policy by registered name (`round_robin`, `random`, ...), with its
    options as sorted `(key, value)` pairs so the object stays hashable."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    def option(self, key: str, default: object = None) -> object:
        return dict(self.options).get(key, default)


@attrs.frozen
class Cluster:
    """One upstream cluster.

    **Parameters**

    * `discovery` - EDS clusters take endpoints from `eds_service_name` (or their own name);
      STATIC and DNS clusters carry `load_assignment` inline.
    * `lb_policy` - the balancing policy; decoders reject names no policy is registered for.
    * `healthy_panic_threshold` - percent (Envoy's default 50): below this share of healthy
      hosts, a priority balances over all its hosts.
    * `connect_timeout` - seconds (Envoy's default 5 s).
    """

    name: str
    discovery: DiscoveryType = DiscoveryType.EDS
    eds_service_name: str = ""
    load_assignment: ClusterLoadAssignment | None = None
    lb_policy: LbPolicy = LbPolicy("round_robin")
    connect_timeout: float = 5.0
    healthy_panic_threshold: float = 50.0
    circuit_breakers: CircuitBreakers | None = None
    outlier_detection: OutlierDetection | None = None

    @property
    def eds_name(self) -> str:
        """The name of the ClusterLoadAssignment to subscribe to."""
        return self.eds_service_name or self.name
