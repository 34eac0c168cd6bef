"""`DestinationRule` (networking.istio.io): how a host's clusters balance and protect.

Supported, and translated to cluster settings:

* `host`, `subsets[]` (`name`, `labels`: a workload belongs to a subset when its labels
  include all of them, and a subset-level `trafficPolicy`);
* `trafficPolicy.loadBalancer.simple`: `ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST`
  (`LEAST_CONN`, its old name, too);
* `trafficPolicy.loadBalancer.consistentHash`: `httpHeaderName`, `httpCookie` (`name`,
  `path`, `ttl`), `useSourceIp`, `httpQueryParameterName`, with `ringHash.minimumRingSize`
  (or the older `minimumRingSize`) or `maglev.tableSize` - the cluster balances by ring
  hash (the default) or Maglev, and each route whose destinations share that rule hashes
  requests by it (`clusters.py`, `translate.py`);
* `trafficPolicy.connectionPool`: `tcp.maxConnections`, `tcp.connectTimeout`,
  `http.http1MaxPendingRequests`, `http.http2MaxRequests`, `http.maxRetries` (Envoy's
  circuit breakers; limits left out take Envoy's defaults 1024/1024/1024/3 - note that
  Istio's own defaults are unlimited);
* `trafficPolicy.outlierDetection`: `consecutive5xxErrors`, `consecutiveGatewayErrors`
  (0 turns either off), `splitExternalLocalOriginErrors`, `consecutiveLocalOriginFailures`,
  `interval`, `baseEjectionTime`, `maxEjectionPercent`, `minHealthPercent` (the cluster's
  panic threshold), translated as Istio does (`clusters.py`);
* `trafficPolicy.tls.mode: DISABLE` (plaintext, what sail does today).

Parsed and validated but refused by `validate` as "not supported yet":
`loadBalancer.simple: PASSTHROUGH`, other `tls` modes (sail does not do upstream TLS yet).
A subset's `trafficPolicy` replaces the rule's, section by section (`loadBalancer`,
`connectionPool`, ...), as in Istio.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

import attrs

from sail.registry.istio.errors import FieldError
from sail.registry.istio.schema import (
    duration,
    exactly_one,
    in_range,
    non_empty,
    valid_host,
)

__all__ = [
    "ClientTLSSettings",
    "ConnectionPoolSettings",
    "ConsistentHashLB",
    "DestinationRuleSpec",
    "HTTPCookie",
    "HTTPSettings",
    "LoadBalancerSettings",
    "MaglevLB",
    "OutlierDetection",
    "RingHashLB",
    "SimpleLB",
    "Subset",
    "TCPSettings",
    "TLSMode",
    "TrafficPolicy",
]

_INT32_MAX = 2**31 - 1


class SimpleLB(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_REQUEST = "LEAST_REQUEST"
    LEAST_CONN = "LEAST_CONN"
    PASSTHROUGH = "PASSTHROUGH"


@attrs.frozen
class HTTPCookie:
    name: str = attrs.field(validator=non_empty)
    path: str | None = None
    ttl: float | None = duration()


@attrs.frozen
class RingHashLB:
    minimum_ring_size: int | None = attrs.field(default=None, validator=in_range(1, 8_388_608))


@attrs.frozen
class MaglevLB:
    table_size: int | None = attrs.field(default=None, validator=in_range(1, 5_000_011))


@attrs.frozen
class ConsistentHashLB:
    """Istio's `consistentHash`: one hash key, and the ring or table it selects."""

    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHashLB | None = None
    maglev: MaglevLB | None = None
    minimum_ring_size: int | None = None

    def __attrs_post_init__(self) -> None:
        exactly_one(
            self, "http_header_name", "http_cookie", "use_source_ip", "http_query_parameter_name"
        )
        exactly_one(self, "ring_hash", "maglev", "minimum_ring_size", at_most=True)


@attrs.frozen
class LoadBalancerSettings:
    UNSUPPORTED: ClassVar = ("localityLbSetting", "warmupDurationSecs", "warmup")

    simple: SimpleLB | None = None
    consistent_hash: ConsistentHashLB | None = None

    def __attrs_post_init__(self) -> None:
        exactly_one(self, "simple", "consistent_hash")


@attrs.frozen
class TCPSettings:
    UNSUPPORTED: ClassVar = ("tcpKeepalive", "maxConnectionDuration", "idleTimeout")

    max_connections: int | None = attrs.field(default=None, validator=in_range(0, _INT32_MAX))
    connect_timeout: float | None = duration(positive=True)


@attrs.frozen
class HTTPSettings:
    UNSUPPORTED: ClassVar = (
        "maxRequestsPerConnection",
        "idleTimeout",
        "h2UpgradePolicy",
        "useClientProtocol",
        "maxConcurrentStreams",
    )

    http1_max_pending_requests: int | None = attrs.field(
        default=None, validator=in_range(0, _INT32_MAX)
    )
    http2_max_requests: int | None = attrs.field(default=None, validator=in_range(0, _INT32_MAX))
    max_retries: int | None = attrs.field(default=None, validator=in_range(0, _INT32_MAX))


@attrs.frozen
class ConnectionPoolSettings:
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


@attrs.frozen
class OutlierDetection:
    """Istio's `OutlierDetection`; `clusters.with_policy` says how it maps onto Envoy's.
    `consecutiveErrors` (deprecated, gone from Istio's translation) is refused."""

    UNSUPPORTED: ClassVar = ("consecutiveErrors",)

    consecutive_5xx_errors: int | None = attrs.field(
        default=None, validator=in_range(0, _INT32_MAX)
    )
    consecutive_gateway_errors: int | None = attrs.field(
        default=None, validator=in_range(0, _INT32_MAX)
    )
    split_external_local_origin_errors: bool | None = None
    consecutive_local_origin_failures: int | None = attrs.field(
        default=None, validator=in_range(0, _INT32_MAX)
    )
    interval: float | None = duration(positive=True)
    base_ejection_time: float | None = duration(positive=True)
    max_ejection_percent: int | None = attrs.field(default=None, validator=in_range(0, 100))
    min_health_percent: int | None = attrs.field(default=None, validator=in_range(0, 100))


class TLSMode(enum.Enum):
    DISABLE = "DISABLE"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"


@attrs.frozen
class ClientTLSSettings:
    UNSUPPORTED: ClassVar = (
        "clientCertificate",
        "privateKey",
        "caCertificates",
        "caCrl",
        "credentialName",
        "subjectAltNames",
        "sni",
        "insecureSkipVerify",
    )

    mode: TLSMode


@attrs.frozen
class TrafficPolicy:
    UNSUPPORTED: ClassVar = ("portLevelSettings", "tunnel", "proxyProtocol")

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    def overridden_by(self, other: TrafficPolicy | None) -> TrafficPolicy:
        """This policy with each section `other` sets replaced by `other`'s (Istio's rule
        for a subset's `trafficPolicy`)."""
        if other is None:
            return self
        return TrafficPolicy(
            load_balancer=other.load_balancer or self.load_balancer,
            connection_pool=other.connection_pool or self.connection_pool,
            outlier_detection=other.outlier_detection or self.outlier_detection,
            tls=other.tls or self.tls,
        )


@attrs.frozen
class Subset:
    """A named group of the host's workloads: those whose labels include all `labels`."""

    name: str = attrs.field(validator=non_empty)
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    traffic_policy: TrafficPolicy | None = None

    def __attrs_post_init__(self) -> None:
        if "|" in self.name:  # the separator of cluster names (outbound|port|subset|host)
            raise FieldError("name", f"{self.name!r}: '|' is not allowed in a subset name")

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels.items())


@attrs.frozen
class DestinationRuleSpec:
    UNSUPPORTED: ClassVar = ("exportTo", "workloadSelector")

    host: str = attrs.field(validator=valid_host)
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()

    def __attrs_post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, subset in enumerate(self.subsets):
            if subset.name in seen:
                raise FieldError(
                    f"subsets[{i}].name",
                    f"duplicate subset {subset.name!r} (also subsets[{seen[subset.name]}])",
                )
            seen[subset.name] = i

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)
