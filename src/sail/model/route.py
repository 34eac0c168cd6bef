"""Route configuration: virtual hosts, routes, their matches and actions."""

from __future__ import annotations

import enum

import attrs

from sail.model.fault import FaultPolicy
from sail.model.headers import HeaderMutations
from sail.model.matchers import (
    FractionalPercent,
    HeaderMatcher,
    QueryParameterMatcher,
)
from sail.model.policy import HashPolicy, RetryPolicy
from sail.model.regex import Regex

__all__ = [
    "ClusterWeight",
    "DirectResponse",
    "FilterConfigs",
    "MirrorPolicy",
    "PathMatch",
    "PathMatchKind",
    "RegexRewrite",
    "Route",
    "RouteAction",
    "RouteConfig",
    "RouteMatch",
    "VirtualHost",
]


FilterConfigs = tuple[tuple[str, FaultPolicy | None], ...]
"""`typed_per_filter_config` entries sail understands, as `(filter name, config)` sorted by
name: today fault filter configs (`FaultPolicy`), `None` for a `FilterConfig` that disables
the filter there. Entries for other filter types are not kept."""


class PathMatchKind(enum.Enum):
    PREFIX = "prefix"
    EXACT = "path"
    REGEX = "safe_regex"
    PATH_SEPARATED_PREFIX = "path_separated_prefix"


@attrs.frozen
class PathMatch:
    """How a route matches the request path (the part before `?`).

    `regex` holds the compiled pattern for `REGEX` (matched against the whole path).
    """

    kind: PathMatchKind
    value: str
    regex: Regex | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class RouteMatch:
    """Envoy's `RouteMatch`: every part must match.

    **Parameters**

    * `path` - the path condition.
    * `case_sensitive` - applies to `prefix`, `path` and `path_separated_prefix`
      (default true, as in Envoy); never to regexes.
    * `headers`, `query_params` - all must match.
    * `runtime_fraction` - matches that fraction of requests (sampled per request).
    """

    path: PathMatch
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query_params: tuple[QueryParameterMatcher, ...] = ()
    runtime_fraction: FractionalPercent | None = None


@attrs.frozen
class ClusterWeight:
    """One entry of `weighted_clusters`, with its own header mutations and per-filter
    configs (the most specific level: they apply when this entry is picked)."""

    name: str
    weight: int
    header_mutations: HeaderMutations | None = None
    typed_per_filter_config: FilterConfigs = ()


@attrs.frozen
class MirrorPolicy:
    """One `request_mirror_policies` entry: send a copy of `runtime_fraction` of the
    requests (all of them when `None`) to `cluster`, fire and forget, with `-shadow`
    appended to the host (`sail.routing.mirror`)."""

    cluster: str
    runtime_fraction: FractionalPercent | None = None


@attrs.frozen
class RegexRewrite:
    pattern: Regex = attrs.field(eq=False)
    source: str
    substitution: str


@attrs.frozen
class RouteAction:
    """Where a matched request goes and how.

    Exactly one of `cluster`, `weighted_clusters` or `cluster_header` is set.

    **Parameters**

    * `timeout` - the overall request deadline in seconds; `None` means Envoy's default of
      15 s, `0` disables it. gRPC channels ignore it, as gRPC's xDS clients do (gRFC A31).
    * `max_stream_duration`, `grpc_timeout_header_max` - `max_stream_duration`'s two fields:
      the longest a gRPC call may take (the second, when set, wins; `0` is no limit). A
      gRPC channel's deadline is the caller's, capped by it (gRFC A31).
    * `prefix_rewrite`, `regex_rewrite` - path rewrites applied before forwarding.
    * `host_rewrite_literal` - replaces the Host header.
    * `auto_host_rewrite` - replace the Host header with the chosen endpoint's `hostname`
      (Envoy's `auto_host_rewrite`; endpoints without a hostname keep the original Host).
    * `request_mirror_policies` - where to mirror requests (`sail.routing.mirror.mirrors`).
    * `priority` - Envoy's routing priority, 0 (DEFAULT) or 1 (HIGH): which circuit breaker
      thresholds (and counters) of the cluster the request counts against.
    * `hedge_on_per_try_timeout` - the route's `hedge_policy` (`None`: the virtual host's).
    """

    cluster: str | None = None
    weighted_clusters: tuple[ClusterWeight, ...] = ()
    cluster_header: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: str | None = None
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    hash_policies: tuple[HashPolicy, ...] = ()
    max_stream_duration: float | None = None
    grpc_timeout_header_max: float | None = None
    auto_host_rewrite: bool = False
    request_mirror_policies: tuple[MirrorPolicy, ...] = ()
    hedge_on_per_try_timeout: bool | None = None
    priority: int = 0

    def cluster_names(self) -> tuple[str, ...]:
        """The clusters this action may send to (empty for `cluster_header`)."""
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(w.name for w in self.weighted_clusters)


@attrs.frozen
class DirectResponse:
    """Answer locally with `status` and `body`, sending nothing upstream."""

    status: int
    body: bytes = b""


@attrs.frozen
class Route:
    """One route. `action` is a `RouteAction` or a `DirectResponse`; `None` stands for
    Envoy's `non_forwarding_action`, used on server listeners. `header_mutations` and
    `typed_per_filter_config` are this level's (see `RouteConfig`)."""

    match: RouteMatch
    action: RouteAction | DirectResponse | None
    name: str = ""
    header_mutations: HeaderMutations | None = None
    typed_per_filter_config: FilterConfigs = ()


@attrs.frozen
class VirtualHost:
    """A set of domains and the routes tried, in order, for requests to them."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    retry_policy: RetryPolicy | None = None
    header_mutations: HeaderMutations | None = None
    typed_per_filter_config: FilterConfigs = ()
    hedge_on_per_try_timeout: bool = False


@attrs.frozen
class RouteConfig:
    """Envoy's `RouteConfiguration`.

    Header mutations exist at four levels: this configuration, a virtual host, a route and
    a weighted cluster entry. Envoy evaluates the weighted cluster's first, then route,
    virtual host and configuration (so the least specific wins a conflicting overwrite), or,
    with `most_specific_header_mutations_wins`, configuration, virtual host, route (the
    weighted cluster's still first). Per-filter configs: the most specific level wins.
    """

    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    header_mutations: HeaderMutations | None = None
    most_specific_header_mutations_wins: bool = False
    typed_per_filter_config: FilterConfigs = ()

    def cluster_names(self) -> frozenset[str]:
        """Every cluster named by a route action of this configuration, mirror clusters
        included."""
        return frozenset(
            name
            for vh in self.virtual_hosts
            for route in vh.routes
            if isinstance(route.action, RouteAction)
            for name in (
                *route.action.cluster_names(),
                *(m.cluster for m in route.action.request_mirror_policies),
            )
        )
