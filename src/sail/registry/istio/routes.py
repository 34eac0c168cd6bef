"""A VirtualService's `http` rules → the routes of one service on one port.

How each part becomes Envoy's (sail's model's) route:

* each `match` of a rule becomes one route (Istio ORs the matches), all with the rule's
  action, in rule order; a rule without `match` matches every request (prefix `/`);
* `uri` exact/prefix/regex → the path match (`path`, `prefix`, `safe_regex`);
  `headers` → header matchers (names lower-cased), `method` → a matcher on `:method`,
  `queryParams` → query parameter matchers, each sorted by name;
* `port`: a match naming a port applies only to the listener of that port (the bare
  listener `reviews` is the service's first port);
* `route` → `cluster` for one destination, else `weighted_clusters` (weight-0 entries
  dropped, entries naming the same cluster merged);
* `timeout` → `timeout`; `retries` → `retry_policy` (`retryOn` status codes go to
  `retriable_status_codes` with the `retriable-status-codes` condition);
  `rewrite.uri` → `prefix_rewrite`, `rewrite.authority` → `host_rewrite_literal`.

When no rule applies to a port (or there is no VirtualService), the one route is the
default: prefix `/` to the service's own cluster on that port. No Istio-style implicit
retries or disabled timeouts are added: a route without `timeout` has Envoy's (15 s).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from sail.model import (
    ClusterWeight,
    HeaderMatcher,
    PathMatch,
    PathMatchKind,
    QueryParameterMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
)
from sail.registry.istio.errors import IstioConfigError
from sail.registry.istio.hosts import short_host
from sail.registry.istio.model import VirtualService
from sail.registry.istio.virtual_service import (
    Destination,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    StringMatch,
)

__all__ = ["ISTIO_DEFAULT_RETRY_ON", "ClusterUse", "build_routes", "retry_policy"]

ClusterUse = Callable[[str, int, str], str]
"""`(host, port, subset) -> cluster name`; records that the cluster is needed."""

ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,503"
"""What Istio retries on when `retries` gives no `retryOn`."""

_EVERYTHING = RouteMatch(PathMatch(PathMatchKind.PREFIX, "/"))


def build_routes(
    vs: VirtualService | None,
    service: str,
    port: int,
    ports: Mapping[str, Sequence[int]],
    use: ClusterUse,
) -> tuple[Route, ...]:
    """The routes for `service` called on `port`.

    `ports` gives each known host's ports (sorted), to pick a destination's port when the
    rule leaves it out; `use` names (and records) the clusters the routes send to.
    """
    routes: list[Route] = []
    if vs is not None:
        for i, rule in enumerate(vs.spec.http):
            applies = [m for m in rule.match or (None,) if m is None or m.port in (None, port)]
            if applies:
                action = _action(vs, f"spec.http[{i}]", rule, port, ports, use)
                routes.extend(Route(_match(m), action, name=rule.name or "") for m in applies)
    if not routes:
        routes.append(Route(_EVERYTHING, RouteAction(cluster=use(service, port, "")), "default"))
    return tuple(routes)


def _action(
    vs: VirtualService,
    path: str,
    rule: HTTPRoute,
    port: int,
    ports: Mapping[str, Sequence[int]],
    use: ClusterUse,
) -> RouteAction:
    weights: dict[str, int] = {}
    for target in rule.route:
        name = _cluster(target.destination, port, ports, use)
        weight = 100 if len(rule.route) == 1 else target.weight or 0
        weights[name] = weights.get(name, 0) + weight
    kept = {name: w for name, w in weights.items() if w > 0}
    if not kept:
        raise IstioConfigError(
            "every destination has weight 0", source=vs.source, object=vs.ref, field=f"{path}.route"
        )
    single = next(iter(kept)) if len(kept) == 1 else None
    rewrite = rule.rewrite
    return RouteAction(
        cluster=single,
        weighted_clusters=() if single else tuple(ClusterWeight(n, w) for n, w in kept.items()),
        prefix_rewrite=rewrite.uri if rewrite is not None else None,
        host_rewrite_literal=rewrite.authority if rewrite is not None else None,
        timeout=rule.timeout,
        retry_policy=retry_policy(rule.retries) if rule.retries is not None else None,
    )


def _cluster(
    destination: Destination, port: int, ports: Mapping[str, Sequence[int]], use: ClusterUse
) -> str:
    """The destination's cluster. Without a port: the port called, if the host has it (or
    has no known port yet), else the host's lowest port."""
    host = short_host(destination.host)
    if destination.port is not None:
        number = destination.port.number
    else:
        known = ports.get(host, ())
        number = port if not known or port in known else min(known)
    return use(host, number, destination.subset or "")


def retry_policy(retries: HTTPRetry) -> RetryPolicy:
    """Istio's `retries` as Envoy's retry policy."""
    tokens = [t.strip() for t in (retries.retry_on or ISTIO_DEFAULT_RETRY_ON).split(",")]
    codes = frozenset(int(t) for t in tokens if t.isdigit())
    conditions = {t for t in tokens if t and not t.isdigit()}
    if codes:
        conditions.add("retriable-status-codes")
    return RetryPolicy(
        retry_on=frozenset(conditions),
        num_retries=retries.attempts,
        per_try_timeout=retries.per_try_timeout,
        retriable_status_codes=codes,
    )


def _match(m: HTTPMatchRequest | None) -> RouteMatch:
    if m is None:
        return _EVERYTHING
    headers = [
        HeaderMatcher(name.lower(), string_match=_string(sm))
        for name, sm in sorted(m.headers.items(), key=lambda item: item[0].lower())
    ]
    if m.method is not None:
        headers.append(HeaderMatcher(":method", string_match=_string(m.method)))
    return RouteMatch(
        path=_path(m.uri),
        headers=tuple(headers),
        query_params=tuple(
            QueryParameterMatcher(name, string_match=_string(sm))
            for name, sm in sorted(m.query_params.items())
        ),
    )


def _path(uri: StringMatch | None) -> PathMatch:
    if uri is None:
        return _EVERYTHING.path
    if uri.exact is not None:
        return PathMatch(PathMatchKind.EXACT, uri.exact)
    if uri.prefix is not None:
        return PathMatch(PathMatchKind.PREFIX, uri.prefix)
    assert uri.regex is not None
    return PathMatch(PathMatchKind.REGEX, uri.regex, regex=re.compile(uri.regex))


def _string(sm: StringMatch) -> StringMatcher:
    if sm.exact is not None:
        return StringMatcher(StringMatchKind.EXACT, sm.exact)
    if sm.prefix is not None:
        return StringMatcher(StringMatchKind.PREFIX, sm.prefix)
    assert sm.regex is not None
    return StringMatcher(StringMatchKind.REGEX, sm.regex, regex=re.compile(sm.regex))
