"""Upstream clusters (Envoy's `config.cluster.v3.Cluster`)."""

from __future__ import annotations

import enum

import attrs

from sail.model.endpoint import ClusterLoadAssignment
from sail.model.policy import CircuitBreakers, OutlierDetection
from sail.model.tls import UpstreamTls

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "Cluster", "DiscoveryType", "LbPolicy"]

DEFAULT_CONNECT_TIMEOUT = 1.0
"""Seconds for a connection to open when a cluster does not say. Envoy's default is 5 s
(and Istio writes 10 s); sail's is Linkerd's and Finagle's 1 s, so that an endpoint that
does not answer SYNs (a dead host, a dropped route) costs a second before the attempt is
retried elsewhere (connect failures are retried by default), not five. On a LAN a
connection opens in well under a millisecond; a lost SYN is resent after 1 s (RFC 6298's
initial RTO), so the price is that a connection whose first SYN is lost is retried on
another endpoint instead of waited for. The registry writes the value into the clusters it
serves, so Envoy applies it too."""


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
    * `connect_timeout` - seconds for a connection to an endpoint to open; unset,
      `DEFAULT_CONNECT_TIMEOUT` (1 s, where Envoy's default is 5 s: see there).
    * `tls` - TLS (with a client certificate: mTLS) to the endpoints, `None` for plaintext.
    """

    name: str
    discovery: DiscoveryType = DiscoveryType.EDS
    eds_service_name: str = ""
    load_assignment: ClusterLoadAssignment | None = None
    lb_policy: LbPolicy = LbPolicy("round_robin")
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    healthy_panic_threshold: float = 50.0
    circuit_breakers: CircuitBreakers | None = None
    outlier_detection: OutlierDetection | None = None
    tls: UpstreamTls | None = None

    @property
    def eds_name(self) -> str:
        """The name of the ClusterLoadAssignment to subscribe to."""
        return self.eds_service_name or self.name
