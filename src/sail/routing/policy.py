"""What a matched route carries for the data plane beyond where to send: `RoutePolicy`.

Built once per route (and per weighted cluster entry) when the router is built, and handed
out with every `RouteResult` (`result.policy`), so a request pays nothing to find them:

* `headers` - the compiled header mutations (`sail.routing.headers.HeaderMutation`), `None`
  when the route changes no header;
* `faults` - fault filter configs by filter name, each the most specific of weighted cluster
  entry, route, virtual host and route configuration (Envoy's
  `resolveMostSpecificPerFilterConfig`: the most specific level that has one wins whole).
  `None` for a filter disabled there. `sail.resilience.fault.FaultFilter` looks itself up
  here by name and falls back to its own config.
* what a call through the route needs (`sail.resilience`), resolved across levels once:
  `retry` (the route's retry policy, else the virtual host's, else `None`), `timeout` (the
  route's, `None` when unset), `grpc_timeout` (the cap on a gRPC call's deadline from
  `max_stream_duration`: `grpc_timeout_header_max` if set, else `max_stream_duration`;
  `None` when neither is, `0` for no cap), `priority`, `hedge`
  (`hedge_on_per_try_timeout`, the route's else the virtual host's) and `mirrors` (whether
  the route mirrors at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sail.model import RouteAction
from sail.routing.headers import HeaderMutation, compile_header_mutation

if TYPE_CHECKING:
    from sail.model import (
        ClusterWeight,
        FaultPolicy,
        FilterConfigs,
        RetryPolicy,
        Route,
        RouteConfig,
        VirtualHost,
    )

__all__ = ["EMPTY_POLICY", "PolicyOf", "RoutePolicy", "route_policies"]


class RoutePolicy:
    """The per-route extras of one route (or weighted cluster entry). Immutable."""

    __slots__ = (
        "faults", "grpc_timeout", "headers", "hedge", "mirrors", "priority", "retry", "timeout"
    )

    def __init__(
        self,
        headers: HeaderMutation | None = None,
        faults: Mapping[str, FaultPolicy | None] | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        grpc_timeout: float | None = None,
        priority: int = 0,
        hedge: bool = False,
        mirrors: bool = False,
    ) -> None:
        self.headers = headers
        self.faults: Mapping[str, FaultPolicy | None] = MappingProxyType(dict(faults or {}))
        self.retry = retry
        self.timeout = timeout
        self.grpc_timeout = grpc_timeout
        self.priority = priority
        self.hedge = hedge
        self.mirrors = mirrors

    def __repr__(self) -> str:
        return f"RoutePolicy(headers={self.headers!r}, faults={dict(self.faults)!r})"


EMPTY_POLICY = RoutePolicy()
"""The policy of a route that has none (shared)."""

PolicyOf = Callable[["ClusterWeight | None"], RoutePolicy]
"""`policy_of(entry)`: the policy for a request routed through weighted cluster `entry`, or
through the route itself (`None`)."""


def _merged(*levels: FilterConfigs) -> dict[str, FaultPolicy | None]:
    """Least specific first; a later level's entry replaces an earlier one's."""
    out: dict[str, FaultPolicy | None] = {}
    for level in levels:
        out.update(level)
    return out


_DEFAULT_CALL: dict[str, Any] = {
    "retry": None, "timeout": None, "grpc_timeout": None, "priority": 0, "hedge": False,
    "mirrors": False,
}


def _call_fields(vhost: VirtualHost | None, route: Route) -> dict[str, Any]:
    action = route.action
    if not isinstance(action, RouteAction):
        return {}
    retry = action.retry_policy
    if retry is None and vhost is not None:
        retry = vhost.retry_policy
    hedge = action.hedge_on_per_try_timeout
    if hedge is None:
        hedge = vhost.hedge_on_per_try_timeout if vhost is not None else False
    return {
        "retry": retry,
        "timeout": action.timeout,
        "grpc_timeout": (
            action.max_stream_duration if action.grpc_timeout_header_max is None
            else action.grpc_timeout_header_max
        ),
        "priority": action.priority,
        "hedge": hedge,
        "mirrors": bool(action.request_mirror_policies),
    }


def route_policies(config: RouteConfig | None, vhost: VirtualHost | None, route: Route) -> PolicyOf:
    """The policies of `route` in `vhost` of `config` (either may be `None`, standing for an
    empty level): the route's own, computed here, and one per weighted cluster entry,
    computed when asked (entries with no extras of their own share the route's)."""
    mutations_wins = config.most_specific_header_mutations_wins if config is not None else False
    levels = [
        route.header_mutations,
        vhost.header_mutations if vhost is not None else None,
        config.header_mutations if config is not None else None,
    ]
    if mutations_wins:
        levels.reverse()
    faults = _merged(
        config.typed_per_filter_config if config is not None else (),
        vhost.typed_per_filter_config if vhost is not None else (),
        route.typed_per_filter_config,
    )
    headers = compile_header_mutation(levels)
    call = _call_fields(vhost, route)
    base = (
        RoutePolicy(headers, faults, **call)
        if headers is not None or faults or (call and call != _DEFAULT_CALL)
        else EMPTY_POLICY
    )

    def policy_of(entry: ClusterWeight | None) -> RoutePolicy:
        if entry is None or (entry.header_mutations is None and not entry.typed_per_filter_config):
            return base
        entry_headers = compile_header_mutation(levels, entry.header_mutations)
        return RoutePolicy(
            entry_headers, {**faults, **dict(entry.typed_per_filter_config)}, **call
        )

    return policy_of
