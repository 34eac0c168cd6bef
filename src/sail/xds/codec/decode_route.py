"""`RouteConfiguration` → `RouteConfig`: virtual hosts, their domains, routes and matches.

The route actions themselves (clusters, rewrites, retries, hashing) are in
`decode_route_action`. What is rejected and why:

* a domain with more than one `*`, or a `*` in the middle: Envoy supports `*` only as the
  whole domain or as a prefix or suffix wildcard, and rejects the rest;
* the same domain in two virtual hosts (Envoy NACKs; which one wins would be arbitrary);
* a route match sail cannot evaluate (`connect_matcher`, `path_match_policy`, `grpc`,
  `tls_context`, `dynamic_metadata`, `filter_state`): ignoring it would match more requests
  than the configuration says;
* `redirect` and `filter_action`: sail sends requests, it does not answer them with redirects;
* a virtual host's `require_tls` other than `NONE` (sail does not do TLS yet: the requests
  would go in plaintext), and a route action's or weighted cluster's `metadata_match` (no
  subset load balancing: every endpoint would be used);
* `request_mirror_policies` on the configuration or a virtual host (mirror on the route
  action instead).

Each level (configuration, virtual host, route) keeps its header mutations
(`decode_header_mutations`) and its fault filter configs from `typed_per_filter_config`
(`decode_fault`, which refuses the per-filter configs of filters sail does not apply unless
they are optional); the configuration keeps `most_specific_header_mutations_wins`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar

from envoy.config.route.v3 import route_components_pb2

from sail.model import (
    DirectResponse,
    FractionalPercent,
    PathMatch,
    PathMatchKind,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from sail.xds.codec.decode_fault import decode_per_filter_configs
from sail.xds.codec.decode_header_mutations import decode_header_mutations
from sail.xds.codec.decode_matchers import (
    compile_regex,
    decode_fraction,
    decode_header_matcher,
    decode_query_parameter_matcher,
)
from sail.xds.codec.decode_route_action import (
    decode_direct_response,
    decode_hedge_policy,
    decode_retry_policy,
    decode_route_action,
)
from sail.xds.codec.validation import Invalid, at, resource
from sail.xds.codec.wellknown import bool_value, enum_name

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["decode_route_config", "decode_route_configuration"]

T = TypeVar("T")

_UNSUPPORTED_MATCH_FIELDS = ("grpc", "tls_context")
_UNSUPPORTED_MATCH_LISTS = ("dynamic_metadata", "filter_state")
# Envoy's constraint on path_separated_prefix: no query or fragment, no trailing slash.
_SEPARATED_PREFIX = re.compile(r"[^?#]+[^?#/]")


def decode_route_configuration(msg: Any) -> RouteConfig:
    """Decode an RDS resource; raises `ResourceError` naming the invalid field."""
    with resource("RouteConfiguration", msg.name):
        if not msg.name:
            raise Invalid("name", "must not be empty")
        return decode_route_config(msg)


def decode_route_config(msg: Any) -> RouteConfig:
    """Decode a `RouteConfiguration`, raising `Invalid`; also used for an HCM's inline one,
    which may have no name."""
    if msg.HasField("vhds"):
        raise Invalid("vhds", "on-demand virtual hosts (VHDS) are not supported")
    _no_mirrors(msg)
    seen: dict[str, int] = {}
    hosts = []
    for i, vh in enumerate(msg.virtual_hosts):
        with at("virtual_hosts", i):
            hosts.append(_virtual_host(vh))
            for j, domain in enumerate(vh.domains):
                key = domain.lower()
                if key in seen:
                    raise Invalid(
                        f"domains[{j}]",
                        f"duplicate domain {domain!r} (also in virtual_hosts[{seen[key]}])",
                    )
                seen[key] = i
    return RouteConfig(
        name=msg.name,
        virtual_hosts=tuple(hosts),
        header_mutations=decode_header_mutations(msg),
        most_specific_header_mutations_wins=msg.most_specific_header_mutations_wins,
        typed_per_filter_config=decode_per_filter_configs(msg.typed_per_filter_config),
    )


def _no_mirrors(msg: Any) -> None:
    if len(msg.request_mirror_policies):
        raise Invalid(
            "request_mirror_policies", "is not supported here; set it on the route action"
        )


def _virtual_host(vh: Any) -> VirtualHost:
    if not vh.domains:
        raise Invalid("domains", "at least one domain is required")
    for j, domain in enumerate(vh.domains):
        with at("domains", j):
            _check_domain(domain)
    if vh.HasField("matcher"):
        raise Invalid("matcher", "matcher trees are not supported; use routes")
    if vh.require_tls:
        raise Invalid(
            "require_tls",
            f"{enum_name(route_components_pb2.VirtualHost.TlsRequirementType, vh.require_tls)}: "
            "sail does not do TLS yet, so these requests would go in plaintext; refused rather "
            "than ignored (only NONE is accepted)",
        )
    _no_mirrors(vh)
    routes = []
    for k, route in enumerate(vh.routes):
        with at("routes", k):
            routes.append(_route(route))
    retry = None
    if vh.HasField("retry_policy"):
        with at("retry_policy"):
            retry = decode_retry_policy(vh.retry_policy)
    return VirtualHost(
        name=vh.name,
        domains=tuple(vh.domains),
        routes=tuple(routes),
        retry_policy=retry,
        header_mutations=decode_header_mutations(vh),
        typed_per_filter_config=decode_per_filter_configs(vh.typed_per_filter_config),
        hedge_on_per_try_timeout=bool(decode_hedge_policy(vh)),
    )


def _check_domain(domain: str) -> None:
    if not domain:
        raise Invalid("", "must not be empty")
    stars = domain.count("*")
    if stars > 1 or (stars == 1 and not (domain.startswith("*") or domain.endswith("*"))):
        raise Invalid(
            "", f"invalid domain {domain!r}: at most one '*', and only at the start or the end"
        )


def _route(route: Any) -> Route:
    if not route.HasField("match"):
        raise Invalid("match", "is required")
    with at("match"):
        match = _route_match(route.match)
    action: RouteAction | DirectResponse | None
    which = route.WhichOneof("action")
    if which == "route":
        with at("route"):
            action = decode_route_action(route.route)
    elif which == "direct_response":
        with at("direct_response"):
            action = decode_direct_response(route.direct_response)
    elif which == "non_forwarding_action":
        action = None
    elif which == "redirect":
        raise Invalid("redirect", "redirect is not supported")
    elif which is not None:
        raise Invalid(which, f"{which} is not supported")
    else:
        raise Invalid("", "an action is required (route, direct_response or non_forwarding_action)")
    return Route(
        match=match,
        action=action,
        name=route.name,
        header_mutations=decode_header_mutations(route),
        typed_per_filter_config=decode_per_filter_configs(route.typed_per_filter_config),
    )


def _route_match(m: Any) -> RouteMatch:
    return RouteMatch(
        path=_path_match(m),
        case_sensitive=bool_value(m, "case_sensitive", True),
        headers=tuple(_each(m.headers, "headers", decode_header_matcher)),
        query_params=tuple(
            _each(m.query_parameters, "query_parameters", decode_query_parameter_matcher)
        ),
        runtime_fraction=_runtime_fraction(m),
    )


def _path_match(m: Any) -> PathMatch:
    for field in _UNSUPPORTED_MATCH_FIELDS:
        if m.HasField(field):
            raise Invalid(field, "matching on it is not supported")
    for field in _UNSUPPORTED_MATCH_LISTS:
        if len(getattr(m, field)):
            raise Invalid(field, "matching on it is not supported")
    which = m.WhichOneof("path_specifier")
    if which == "prefix":
        return PathMatch(PathMatchKind.PREFIX, m.prefix)
    if which == "path":
        return PathMatch(PathMatchKind.EXACT, m.path)
    if which == "safe_regex":
        with at("safe_regex"):
            source, pattern = compile_regex(m.safe_regex)
        return PathMatch(PathMatchKind.REGEX, source, regex=pattern)
    if which == "path_separated_prefix":
        value = m.path_separated_prefix
        if not _SEPARATED_PREFIX.fullmatch(value):
            raise Invalid(
                which, f"{value!r}: must not be empty, end with '/' or contain '?' or '#'"
            )
        return PathMatch(PathMatchKind.PATH_SEPARATED_PREFIX, value)
    if which is not None:
        raise Invalid(which, "is not supported")
    raise Invalid(
        "", "a path specifier is required (prefix, path, safe_regex or path_separated_prefix)"
    )


def _runtime_fraction(m: Any) -> FractionalPercent | None:
    if not m.HasField("runtime_fraction"):
        return None
    with at("runtime_fraction"):
        if not m.runtime_fraction.HasField("default_value"):
            raise Invalid("default_value", "is required")
        with at("default_value"):
            return decode_fraction(m.runtime_fraction.default_value)


def _each(items: Any, field: str, decode: Callable[[Any], T]) -> list[T]:
    out: list[T] = []
    for i, item in enumerate(items):
        with at(field, i):
            out.append(decode(item))
    return out
