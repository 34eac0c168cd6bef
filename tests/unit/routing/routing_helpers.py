"""Builders for routing tests: model objects in one line each, no protobuf."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from sail.model import (
    ClusterWeight,
    DirectResponse,
    FractionalPercent,
    HeaderMatcher,
    Int64Range,
    PathMatch,
    PathMatchKind,
    QueryParameterMatcher,
    RegexRewrite,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    VirtualHost,
)
from sail.model.regex import compile_regex

if TYPE_CHECKING:
    from collections.abc import Callable

S = StringMatchKind


def match(
    kind: PathMatchKind,
    value: str,
    *,
    case: bool = True,
    headers: tuple[HeaderMatcher, ...] = (),
    query: tuple[QueryParameterMatcher, ...] = (),
    fraction: FractionalPercent | None = None,
) -> RouteMatch:
    regex = compile_regex(value) if kind is PathMatchKind.REGEX else None
    return RouteMatch(
        PathMatch(kind, value, regex=regex),
        case_sensitive=case,
        headers=headers,
        query_params=query,
        runtime_fraction=fraction,
    )


def prefix(value: str, **kw: Any) -> RouteMatch:
    return match(PathMatchKind.PREFIX, value, **kw)


def path(value: str, **kw: Any) -> RouteMatch:
    return match(PathMatchKind.EXACT, value, **kw)


def regex(value: str, **kw: Any) -> RouteMatch:
    return match(PathMatchKind.REGEX, value, **kw)


def sep(value: str, **kw: Any) -> RouteMatch:
    return match(PathMatchKind.PATH_SEPARATED_PREFIX, value, **kw)


def sm(kind: StringMatchKind, value: str, *, ignore_case: bool = False) -> StringMatcher:
    compiled = compile_regex(value) if kind is S.REGEX else None
    return StringMatcher(kind=kind, value=value, ignore_case=ignore_case, regex=compiled)


def header(
    name: str,
    string: StringMatcher | None = None,
    *,
    present: bool | None = None,
    range: tuple[int, int] | None = None,
    invert: bool = False,
    missing_as_empty: bool = False,
) -> HeaderMatcher:
    return HeaderMatcher(
        name=name,
        string_match=string,
        range=Int64Range(*range) if range is not None else None,
        present=present,
        invert=invert,
        treat_missing_as_empty=missing_as_empty,
    )


def qp(
    name: str, string: StringMatcher | None = None, *, present: bool = True
) -> QueryParameterMatcher:
    """A query matcher: on `string`, else on presence (`present`) or absence."""
    return QueryParameterMatcher(name=name, string_match=string, present=present)


def route(
    m: RouteMatch,
    name: str,
    *,
    cluster: str | None = None,
    weights: tuple[tuple[str, int], ...] = (),
    cluster_header: str | None = None,
    prefix_rewrite: str | None = None,
    regex_rewrite: tuple[str, str] | None = None,
    host: str | None = None,
    direct: int | None = None,
    forwarding: bool = True,
) -> Route:
    """A route named `name`; it sends to the cluster `name` unless told otherwise."""
    if direct is not None:
        return Route(m, DirectResponse(status=direct), name)
    if not forwarding:
        return Route(m, None, name)
    if not weights and cluster_header is None and cluster is None:
        cluster = name
    rewrite = None
    if regex_rewrite is not None:
        pattern, substitution = regex_rewrite
        rewrite = RegexRewrite(compile_regex(pattern), pattern, substitution)
    action = RouteAction(
        cluster=cluster,
        weighted_clusters=tuple(ClusterWeight(n, w) for n, w in weights),
        cluster_header=cluster_header,
        prefix_rewrite=prefix_rewrite,
        regex_rewrite=rewrite,
        host_rewrite_literal=host,
    )
    return Route(m, action, name)


def vhost(name: str, domains: tuple[str, ...], *routes: Route) -> VirtualHost:
    return VirtualHost(name, domains, routes)


def config(*vhosts: VirtualHost, name: str = "rc") -> RouteConfig:
    return RouteConfig(name, vhosts)


def one_host(*routes: Route) -> RouteConfig:
    """A config of one virtual host `vh` for every domain."""
    return config(vhost("vh", ("*",), *routes))


def by_domains(*hosts: tuple[str, tuple[str, ...]]) -> RouteConfig:
    """One virtual host per `(name, domains)`, each with one catch-all route named after it."""
    return config(*(vhost(n, d, route(prefix("/"), n)) for n, d in hosts))


def headers(values: dict[str, str] | list[tuple[str, str]] | None = None) -> httpx.Headers:
    return httpx.Headers(values or {})


def fixed(value: float) -> Callable[[], float]:
    """A `rand` that always returns `value`."""
    return lambda: value
