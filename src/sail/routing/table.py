"""One virtual host's routes, compiled, with an index that skips the routes that cannot match.

Envoy tries the routes of a virtual host in order and takes the first that matches. Done
literally that is one test per route tried: fine for a handful of routes, wasteful for the
tables a mesh generates (dozens of `prefix: /api/...` routes). So a long table keeps, beside
the ordered routes, an index of its *case-sensitive* `prefix` and `path` routes:

* `path` routes in a dict keyed by the path;
* `prefix` routes grouped by prefix length, each group a dict keyed by the prefix, so the
  prefix routes that match `/a/b/c` are found with one slice and one probe per distinct length
  (`/a/b/c`[:3] in the length-3 dict, and so on), not one `startswith` per route.

A request's candidates are the indexed routes found that way plus every route the index cannot
judge (case-insensitive, `safe_regex`, `path_separated_prefix`), merged back into
configuration order. The router then tests those candidates exactly as it would have tested
every route, so first-match-wins holds by construction; the index only leaves out routes whose
path condition is certainly false. A property test checks this against the plain scan.

Below `INDEX_MIN` routes the plain scan is faster than building a candidate list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sail.routing.actions import compile_action
from sail.routing.matchers import (
    EXACT,
    PREFIX,
    compile_headers,
    compile_path,
    compile_query_matcher,
)

if TYPE_CHECKING:
    from sail.model import Route, VirtualHost
    from sail.routing.actions import Action
    from sail.routing.matchers import PathTest, QueryTest, RequestTest
    from sail.routing.policy import PolicyOf

__all__ = ["INDEX_MIN", "CompiledRoute", "RouteTable"]

INDEX_MIN = 8
"""Virtual hosts with fewer routes are scanned in order without the index."""


class CompiledRoute:
    """One route, compiled.

    **Parameters**

    * `kind`, `value`, `test` - the path condition (`matchers.compile_path`): the router tests
      `PREFIX`/`EXACT` inline with `value`, anything else with `test`.
    * `headers` - all header matchers as one test, `None` when there are none.
    * `query` - the query parameter tests (all must pass).
    * `fraction` - `numerator / denominator` of `runtime_fraction`, `None` when the route has
      none or one of 100% or more.
    * `action` - the compiled action (`actions.Action`), with its `RoutePolicy`s from
      `policy_of` (`policy.route_policies`; none by default).
    * `position` - the route's index in its virtual host.
    """

    __slots__ = (
        "action",
        "fraction",
        "headers",
        "kind",
        "model",
        "position",
        "query",
        "test",
        "value",
    )

    def __init__(self, model: Route, position: int, policy_of: PolicyOf | None = None) -> None:
        match = model.match
        self.model = model
        self.position = position
        kind, value, test = compile_path(match)
        self.kind: int = kind
        self.value: str = value
        self.test: PathTest = test
        self.headers: RequestTest | None = compile_headers(match.headers)
        self.query: tuple[QueryTest, ...] = tuple(
            compile_query_matcher(m) for m in match.query_params
        )
        fraction = match.runtime_fraction
        self.fraction: float | None = None
        if fraction is not None and fraction.numerator < fraction.denominator:
            self.fraction = max(fraction.numerator, 0) / fraction.denominator
        self.action: Action = (
            compile_action(model) if policy_of is None else compile_action(model, policy_of)
        )


def _position(route: CompiledRoute) -> int:
    return route.position


class RouteTable:
    """The ordered, compiled routes of one virtual host (`model`) and their path index.

    `indexed` is false for short tables: then `routes` is scanned as is. Otherwise
    `candidates(path)` returns, in order, the routes whose path condition may hold.
    """

    __slots__ = ("_always", "_exact", "_prefixes", "indexed", "model", "routes")

    def __init__(self, model: VirtualHost, routes: tuple[CompiledRoute, ...]) -> None:
        self.model = model
        self.routes = routes
        self.indexed = len(routes) >= INDEX_MIN
        exact: dict[str, list[CompiledRoute]] = {}
        by_length: dict[int, dict[str, list[CompiledRoute]]] = {}
        always: list[CompiledRoute] = []
        for route in routes:
            if route.kind == EXACT:
                exact.setdefault(route.value, []).append(route)
            elif route.kind == PREFIX:
                group = by_length.setdefault(len(route.value), {})
                group.setdefault(route.value, []).append(route)
            else:
                always.append(route)
        self._exact = {path: tuple(found) for path, found in exact.items()}
        # Shortest first, so the walk stops at the first prefix longer than the path.
        self._prefixes = tuple(
            (length, {prefix: tuple(found) for prefix, found in group.items()})
            for length, group in sorted(by_length.items())
        )
        self._always = tuple(always)

    def candidates(self, path: str) -> tuple[CompiledRoute, ...] | list[CompiledRoute]:
        """The routes, in configuration order, that `path` (no query) may match.

        When a single group of routes can match (the usual case) that group is returned as
        stored; only a mix of groups is concatenated and sorted back into order.
        """
        hits = self._always
        groups = 1 if hits else 0
        found = self._exact.get(path)
        if found is not None:
            hits = hits + found if groups else found
            groups += 1
        size = len(path)
        for length, by_prefix in self._prefixes:
            if length > size:
                break
            found = by_prefix.get(path[:length])
            if found is not None:
                hits = hits + found if groups else found
                groups += 1
        return sorted(hits, key=_position) if groups > 1 else hits
