"""A VirtualService's `http` rules → the routes of one service on one port.

How each part becomes Envoy's (sail's model's) route:

* each `match` of a rule becomes one route (Istio ORs the matches), all with the rule's
  action, in rule order; a rule without `match` matches every request (prefix `/`). The
  route is named as Istio names it: the rule's `name`, `.` and the match's `name`;
* `uri` exact/prefix/regex → the path match (`path`, `prefix`, `safe_regex`);
  `headers` → header matchers (names lower-cased), `method` → a matcher on `:method`,
  `queryParams` → query parameter matchers, each sorted by name;
* `port`: a match naming a port applies only to the listener of that port (the bare
  listener `reviews` is the service's first port);
* `route` → `cluster` for one destination, else `weighted_clusters` (weight-0 entries
  dropped, entries naming the same cluster merged);
* `timeout` → `timeout`; `retries` → `retry_policy` (`retryOn` status codes go to
  `retriable_status_codes` with the `retriable-status-codes` condition);
  `rewrite.uri` → `prefix_rewrite`, `rewrite.authority` → `host_rewrite_literal`;
* `fault` → an `HTTPFault` per-filter config on the route, keyed by the fault filter's name
  (`FAULT_FILTER_NAME`, which every listener's HCM lists before the router, as Istio does):
  `delay.fixedDelay` → `fixed_delay`, `abort.httpStatus` / `abort.grpcStatus` →
  `http_status` / `grpc_status`, each `percentage.value` → a fraction of a million (unset
  stays Envoy's 0 %);
* `mirror` (+ `mirrorPercentage`) and `mirrors[]` → `request_mirror_policies`, in that order,
  each to its destination's cluster (ports chosen as for `route`), with a `runtime_fraction`
  of a million when a percentage is given (else every request is mirrored);
* `headers` → the route's header mutations: `set` → `OVERWRITE_IF_EXISTS_OR_ADD`, `add` →
  `APPEND_IF_EXISTS_OR_ADD` (each sorted by name), `remove` → `*_headers_to_remove`. A
  destination's `headers` go on its weighted cluster entry, or, when it is the rule's only
  destination, after the rule's own on the route (as Istio does); destinations naming the
  same cluster are merged only when their headers are equal.

When no rule applies to a port (or there is no VirtualService), the one route is the
default: prefix `/` to the service's own cluster on that port. No Istio-style implicit
retries or disabled timeouts are added: a route without `timeout` has Envoy's (15 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sail.model import (
    ClusterWeight,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    FractionalPercent,
    HeaderAppendAction,
    HeaderMatcher,
    HeaderMutations,
    HeaderValueOption,
    MirrorPolicy,
    PathMatch,
    PathMatchKind,
    QueryParameterMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    literal_header_value,
)
from sail.model.regex import compile_regex
from sail.registry.istio.errors import IstioConfigError
from sail.registry.istio.hosts import short_host
from sail.registry.istio.model import VirtualService
from sail.registry.istio.virtual_service import (
    GRPC_STATUS_CODES,
    Destination,
    HeaderOperations,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    Percent,
    StringMatch,
)

__all__ = [
    "FAULT_FILTER_NAME",
    "ISTIO_DEFAULT_RETRY_ON",
    "ClusterUse",
    "build_routes",
    "fault_policy",
    "header_mutations",
    "retry_policy",
]

FAULT_FILTER_NAME = "envoy.filters.http.fault"
"""The fault filter's name in every HCM the registry serves, and the key of the routes'
per-filter fault configs (Istio's name too)."""

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
                action, mutations = _action(vs, f"spec.http[{i}]", rule, port, ports, use)
                faults = (
                    ((FAULT_FILTER_NAME, fault_policy(rule.fault)),)
                    if rule.fault is not None
                    else ()
                )
                routes.extend(
                    Route(
                        _match(m),
                        action,
                        name=_route_name(rule.name, m.name if m is not None else None),
                        header_mutations=mutations,
                        typed_per_filter_config=faults,
                    )
                    for m in applies
                )
    if not routes:
        routes.append(Route(_EVERYTHING, RouteAction(cluster=use(service, port, "")), "default"))
    return tuple(routes)


def _route_name(rule: str | None, match: str | None) -> str:
    """Istio's route name: the rule's `name`, then `.` and the match's `name` when both are
    set, or whichever is."""
    return ".".join(n for n in (rule, match) if n)


def _action(
    vs: VirtualService,
    path: str,
    rule: HTTPRoute,
    port: int,
    ports: Mapping[str, Sequence[int]],
    use: ClusterUse,
) -> tuple[RouteAction, HeaderMutations | None]:
    """The rule's action, and the route's header mutations (the rule's, and its single
    destination's)."""
    weights: dict[tuple[str, HeaderMutations | None], int] = {}
    for target in rule.route:
        name = _cluster(target.destination, port, ports, use)
        weight = 100 if len(rule.route) == 1 else target.weight or 0
        key = (name, header_mutations(target.headers))
        weights[key] = weights.get(key, 0) + weight
    kept = {key: w for key, w in weights.items() if w > 0}
    if not kept:
        raise IstioConfigError(
            "every destination has weight 0", source=vs.source, object=vs.ref, field=f"{path}.route"
        )
    own = header_mutations(rule.headers)
    single: str | None = None
    weighted: tuple[ClusterWeight, ...] = ()
    if len(kept) == 1:
        ((single, destination_mutations),) = kept
        own = _concat(own, destination_mutations)
    else:
        weighted = tuple(ClusterWeight(n, w, m) for (n, m), w in kept.items())
    rewrite = rule.rewrite
    action = RouteAction(
        cluster=single,
        weighted_clusters=weighted,
        prefix_rewrite=rewrite.uri if rewrite is not None else None,
        host_rewrite_literal=rewrite.authority if rewrite is not None else None,
        timeout=rule.timeout,
        retry_policy=retry_policy(rule.retries) if rule.retries is not None else None,
        request_mirror_policies=_mirrors(rule, port, ports, use),
    )
    return action, own


def _fraction(percent: Percent) -> FractionalPercent:
    """Istio's percentage (0-100, a float) as a fraction of a million, as Istio writes it."""
    return FractionalPercent(round(percent.value * 10_000), 1_000_000)


def _mirrors(
    rule: HTTPRoute, port: int, ports: Mapping[str, Sequence[int]], use: ClusterUse
) -> tuple[MirrorPolicy, ...]:
    targets = [(rule.mirror, rule.mirror_percentage)] if rule.mirror is not None else []
    targets.extend((m.destination, m.percentage) for m in rule.mirrors)
    return tuple(
        MirrorPolicy(
            _cluster(destination, port, ports, use),
            None if percent is None else _fraction(percent),
        )
        for destination, percent in targets
    )


def fault_policy(fault: HTTPFaultInjection) -> FaultPolicy:
    """Istio's `fault` as the fault filter's config."""
    none = FractionalPercent(0)
    delay = None
    if fault.delay is not None:
        d = fault.delay
        delay = FaultDelay(
            fixed_delay=d.fixed_delay,
            percentage=none if d.percentage is None else _fraction(d.percentage),
        )
    abort = None
    if fault.abort is not None:
        a = fault.abort
        abort = FaultAbort(
            http_status=a.http_status,
            grpc_status=GRPC_STATUS_CODES[a.grpc_status] if a.grpc_status is not None else None,
            percentage=none if a.percentage is None else _fraction(a.percentage),
        )
    return FaultPolicy(delay=delay, abort=abort)


def header_mutations(headers: Headers | None) -> HeaderMutations | None:
    """Istio's `headers` as one level of header mutations; `None` when it changes nothing."""
    if headers is None:
        return None
    request, request_remove = _operations(headers.request)
    response, response_remove = _operations(headers.response)
    return HeaderMutations(request, request_remove, response, response_remove) or None


def _operations(
    ops: HeaderOperations | None,
) -> tuple[tuple[HeaderValueOption, ...], tuple[str, ...]]:
    if ops is None:
        return (), ()
    to_add = [
        HeaderValueOption(name.lower(), literal_header_value(value), action)
        for values, action in (
            (ops.set_, HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
            (ops.add, HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD),
        )
        for name, value in sorted(values.items(), key=lambda item: item[0].lower())
    ]
    return tuple(to_add), tuple(name.lower() for name in ops.remove)


def _concat(a: HeaderMutations | None, b: HeaderMutations | None) -> HeaderMutations | None:
    if a is None or b is None:
        return a or b
    return HeaderMutations(
        a.request_headers_to_add + b.request_headers_to_add,
        a.request_headers_to_remove + b.request_headers_to_remove,
        a.response_headers_to_add + b.response_headers_to_add,
        a.response_headers_to_remove + b.response_headers_to_remove,
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
    return PathMatch(PathMatchKind.REGEX, uri.regex, regex=compile_regex(uri.regex, "uri.regex"))


def _string(sm: StringMatch) -> StringMatcher:
    if sm.exact is not None:
        return StringMatcher(StringMatchKind.EXACT, sm.exact)
    if sm.prefix is not None:
        return StringMatcher(StringMatchKind.PREFIX, sm.prefix)
    assert sm.regex is not None
    return StringMatcher(StringMatchKind.REGEX, sm.regex, regex=compile_regex(sm.regex, "regex"))
