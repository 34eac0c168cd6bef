"""The config model: frozen attrs classes that xDS decodes into and the data plane reads.

Nothing here knows protobuf; `sail.xds` converts in both directions.
"""

from __future__ import annotations

from sail.model.cluster import DEFAULT_CONNECT_TIMEOUT, Cluster, DiscoveryType, LbPolicy
from sail.model.endpoint import (
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    Locality,
    LocalityEndpoints,
    host_port,
)
from sail.model.fault import FaultAbort, FaultDelay, FaultPolicy
from sail.model.headers import (
    HeaderAppendAction,
    HeaderMutations,
    HeaderValueOption,
    escape_header_value,
    literal_header_value,
)
from sail.model.listener import (
    CidrRange,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    HttpFilter,
    Listener,
    SourceType,
)
from sail.model.matchers import (
    FractionalPercent,
    HeaderMatcher,
    Int64Range,
    QueryParameterMatcher,
    StringMatcher,
    StringMatchKind,
)
from sail.model.policy import (
    CircuitBreakers,
    HashPolicy,
    OutlierDetection,
    ResetHeader,
    RetryBudget,
    RetryPolicy,
    Thresholds,
)
from sail.model.route import (
    ClusterWeight,
    DirectResponse,
    FilterConfigs,
    MirrorPolicy,
    PathMatch,
    PathMatchKind,
    RegexRewrite,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from sail.model.snapshot import MeshSnapshot
from sail.model.tls import (
    CertificateProviderRef,
    DownstreamTls,
    SanMatcher,
    SanType,
    UpstreamTls,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "CertificateProviderRef",
    "CidrRange",
    "CircuitBreakers",
    "Cluster",
    "ClusterLoadAssignment",
    "ClusterWeight",
    "DirectResponse",
    "DiscoveryType",
    "DownstreamTls",
    "Endpoint",
    "FaultAbort",
    "FaultDelay",
    "FaultPolicy",
    "FilterChain",
    "FilterChainMatch",
    "FilterConfigs",
    "FractionalPercent",
    "HashPolicy",
    "HeaderAppendAction",
    "HeaderMatcher",
    "HeaderMutations",
    "HeaderValueOption",
    "HealthStatus",
    "HttpConnectionManager",
    "HttpFilter",
    "Int64Range",
    "LbPolicy",
    "Listener",
    "Locality",
    "LocalityEndpoints",
    "MeshSnapshot",
    "MirrorPolicy",
    "OutlierDetection",
    "PathMatch",
    "PathMatchKind",
    "QueryParameterMatcher",
    "RegexRewrite",
    "ResetHeader",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "RouteAction",
    "RouteConfig",
    "RouteMatch",
    "SanMatcher",
    "SanType",
    "SourceType",
    "StringMatchKind",
    "StringMatcher",
    "Thresholds",
    "UpstreamTls",
    "VirtualHost",
    "escape_header_value",
    "host_port",
    "literal_header_value",
]
