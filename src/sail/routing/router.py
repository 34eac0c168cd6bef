"""The router: a `RouteConfig` compiled once, asked once per request.

`Router.build` does all the work a configuration allows ahead of time: the domain index
(`domains.py`), one small matcher per route (`matchers.py`), cumulative weights and rewrites
(`actions.py`, `rewrite.py`), and a path index for long route tables (`table.py`).
`Router.route` then tries the chosen virtual host's routes in order and returns the first that
matches, as Envoy does. The common request (exact domain, prefix routes, no header, query or
runtime condition) costs a dict probe for the host, a `str.find` or two for the query, one
`startswith` per route tried (or per distinct prefix length, with the index) and the result.

`runtime_fraction`: Envoy draws one random value per request and tests every route's fraction
against it (`random_value % denominator < numerator`). sail draws `rand()` at most once per
request, on the first route that asks, and tests `rand() < numerator / denominator` on every
route. So, as in Envoy, two successive routes at 50% do not make 50% + 25%: the second never
matches (measured on Envoy 1.40: 0 of 400 requests; envoyproxy/envoy#11560); to split
5/5/90, configure 5% then 10%. The trap within the trap: Envoy's modulo makes fractions over
*different* denominators (`HUNDRED` then `TEN_THOUSAND`) nearly independent (the second 50%
took 25% of requests), where sail's single float keeps them cumulative. gRPC draws per route.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, NamedTuple

from sail.errors import ConfigError, NoRoute
from sail.routing.domains import DomainIndex
from sail.routing.matchers import EXACT, PREFIX
from sail.routing.policy import EMPTY_POLICY, RoutePolicy, route_policies
from sail.routing.request import parse_query
from sail.routing.table import CompiledRoute, RouteTable

if TYPE_CHECKING:
    from collections.abc import Callable

    from sail.model import Route, RouteConfig, VirtualHost
    from sail.routing.request import Headers

__all__ = ["RouteResult", "Router"]


class RouteResult(NamedTuple):
    """Where one request goes (a NamedTuple: made once per request, and cheaper to make
    than a frozen attrs class).

    **Parameters**

    * `virtual_host`, `route` - the model objects that matched (their policies: retries,
      timeouts, hashing... are read from them).
    * `cluster` - the cluster chosen (weighted pick done, `cluster_header` read); `None` for a
      `DirectResponse` or a non-forwarding route.
    * `path` - the target to forward, path and query, after `prefix_rewrite` or
      `regex_rewrite` (the very string given when there is no rewrite).
    * `host` - `host_rewrite_literal` if set, else `None`: keep the original Host.
    * `policy` - the route's `RoutePolicy` (for a weighted split, the picked entry's): its
      compiled header mutations (`policy.headers`) and fault configs (`policy.faults`).
      Mirrors are read from the action: `sail.routing.mirror.mirrors(route.action)`.
    """

    virtual_host: VirtualHost
    route: Route
    cluster: str | None
    path: str
    host: str | None
    policy: RoutePolicy = EMPTY_POLICY


def _compile_host(config: RouteConfig, vhost: VirtualHost) -> RouteTable:
    routes = []
    for i, route in enumerate(vhost.routes):
        try:
            routes.append(CompiledRoute(route, i, route_policies(config, vhost, route)))
        except ConfigError as exc:
            raise ConfigError(
                f"route config {config.name!r}, virtual host {vhost.name!r}, "
                f"route {i} {route.name!r}: {exc}"
            ) from None
    return RouteTable(vhost, tuple(routes))


class Router:
    """Envoy's route matching over one `RouteConfig`. Build it with `Router.build`; it is
    immutable, so one instance serves every thread and task at once."""

    __slots__ = ("_config", "_exact", "_index", "_only")

    def __init__(self, config: RouteConfig, index: DomainIndex[RouteTable]) -> None:
        self._config = config
        self._index = index
        self._exact = index.exact
        self._only = index.only

    @classmethod
    def build(cls, config: RouteConfig) -> Router:
        """Compile `config`. Raises `ConfigError` (naming the route) for what Envoy refuses
        to load: a bad regex or RE2 substitution, both rewrites, no cluster specifier, a
        weighted split adding up to 0."""
        hosts = [_compile_host(config, vhost) for vhost in config.virtual_hosts]
        index = DomainIndex((domain, host) for host in hosts for domain in host.model.domains)
        return cls(config, index)

    @property
    def config(self) -> RouteConfig:
        """The configuration this router was built from."""
        return self._config

    def route(
        self,
        authority: str,
        path: str,
        headers: Headers,
        rand: Callable[[], float] = random.random,
        *,
        method: str = "GET",
        scheme: str = "http",
    ) -> RouteResult:
        """Route one request.

        **Parameters**

        * `authority` - the Host header value, maybe with `:port`.
        * `path` - the raw request target, `/a/b?x=1`; routes match its path part (before
          `?` and `#`), header matchers on `:path` see all of it.
        * `headers` - the request headers (case-insensitive `get`).
        * `rand` - uniform in `[0, 1)`: `runtime_fraction` and weighted picks.
        * `method`, `scheme` - for `:method` and `:scheme` header matchers.

        Raises `NoRoute` (naming authority, path and route config) when no virtual host or
        no route matches, or when the route's `cluster_header` is missing.
        """
        # A config whose only domain is `*` needs no search; otherwise most authorities
        # arrive lower-case and name an exact domain: one dict probe.
        vhost = self._only or self._exact.get(authority) or self._index.find(authority)
        if vhost is None:
            raise NoRoute(
                f"no virtual host for authority {authority!r} (path {path!r}) "
                f"in route config {self._config.name!r}"
            )
        # `request.path_end`, inlined: the path part ends at the first "?" or "#".
        end = path.find("?")
        if end < 0:
            end = len(path)
        fragment = path.find("#", 0, end)
        if fragment >= 0:
            end = fragment
        bare = path if end == len(path) else path[:end]
        params: dict[str, str] | None = None
        draw = -1.0
        routes = vhost.candidates(bare) if vhost.indexed else vhost.routes
        for route in routes:
            kind = route.kind
            if kind == PREFIX:
                if not bare.startswith(route.value):
                    continue
            elif kind == EXACT:
                if bare != route.value:
                    continue
            elif not route.test(bare):
                continue
            if route.headers is not None and not route.headers(
                headers, authority, method, path, scheme
            ):
                continue
            if route.query:
                if params is None:
                    params = parse_query(path, end)
                if not all(test(params) for test in route.query):
                    continue
            if route.fraction is not None:
                if draw < 0.0:
                    draw = rand()
                if draw >= route.fraction:
                    continue
            action = route.action
            if action.fixed:
                # `tuple.__new__`, not `RouteResult(...)`: the same object without the
                # Python-level `__new__` a NamedTuple runs (a sixth of what route() costs).
                return tuple.__new__(RouteResult, (
                    vhost.model, route.model, action.cluster, path, action.host, action.policy
                ))
            cluster = action.cluster
            policy = action.policy
            if action.split is not None:
                cluster, policy = action.split(rand)
            elif action.read_header is not None:
                cluster = action.read_header(headers, authority, method, path, scheme)
                if cluster is None:
                    raise NoRoute(
                        f"route {route.model.name!r} of route config {self._config.name!r} "
                        f"takes its cluster from header {action.header!r}, which the request "
                        f"for authority {authority!r} path {path!r} lacks"
                    )
            forward = path if action.rewrite is None else action.rewrite(path, end)
            return tuple.__new__(RouteResult, (
                vhost.model, route.model, cluster, forward, action.host, policy
            ))
        raise NoRoute(
            f"no route for authority {authority!r} path {path!r} in route config "
            f"{self._config.name!r} (virtual host {vhost.model.name!r})"
        )
