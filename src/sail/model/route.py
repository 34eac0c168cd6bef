"""Route configuration: virtual hosts, routes, their matches and actions."""

from __future__ import annotations

import enum
import re

import attrs

from sail.model.matchers import (
    FractionalPercent,
    HeaderMatcher,
    QueryParameterMatcher,
)
from sail.model.policy import HashPolicy, RetryPolicy

__all__ = [
    "ClusterWeight",
    "DirectResponse",
    "PathMatch",
    "PathMatchKind",
    "RegexRewrite",
    "Route",
    "RouteAction",
    "RouteConfig",
    "RouteMatch",
    "VirtualHost",
]


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
    regex: re.Pattern[str] | None = attrs.field(default=None, eq=False, repr=False)


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
    name: str
    weight: int


@attrs.frozen
class RegexRewrite:
    pattern: re.Pattern[str] = attrs.field(eq=False)
    source: str
    substitution: str


@attrs.frozen
class RouteAction:
    """Where a matched request goes and how.

    Exactly one of `cluster`, `weighted_clusters` or `cluster_header` is set.

    **Parameters**

    * `timeout` - the overall request deadline in seconds; `None` means Envoy's default of
      15 s, `0` disables it.
    * `prefix_rewrite`, `regex_rewrite` - path rewrites applied before forwarding.
    * `host_rewrite_literal` - replaces the Host header.
    * `auto_host_rewrite` - replace the Host header with the chosen endpoint's `hostname`
      (Envoy's `auto_host_rewrite`; endpoints without a hostname keep the original Host).
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
    auto_host_rewrite: bool = False

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
    Envoy's `non_forwarding_action`, used on server listeners."""

    match: RouteMatch
    action: RouteAction | DirectResponse | None
    name: str = ""


@attrs.frozen
class VirtualHost:
    """A set of domains and the routes tried, in order, for requests to them."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    retry_policy: RetryPolicy | None = None


@attrs.frozen
class RouteConfig:
    """Envoy's `RouteConfiguration`."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...]

    def cluster_names(self) -> frozenset[str]:
        """Every cluster named by a route action of this configuration."""
        return frozenset(
            name
            for vh in self.virtual_hosts
            for route in vh.routes
            if isinstance(route.action, RouteAction)
            for name in route.action.cluster_names()
        )
