"""A matched route's action, compiled: which cluster, which path, which Host.

`compile_action` resolves everything that does not depend on the request: a lone cluster is a
plain string, a weighted split becomes cumulative weights for a binary search, a
`cluster_header` becomes a header getter, rewrites become closures (`rewrite.py`).

Weighted clusters: cluster *i* takes `weight_i / total` of the requests. The pick draws
`x = rand() * total` and takes the first cluster whose cumulative weight exceeds `x`
(`bisect_right`), so a weight of 0 is never picked; zero weights are dropped here anyway, and
a split with nothing left is refused (Envoy requires a positive total). Each pick draws its own
random number: Envoy reuses the request's one random value (also used by `runtime_fraction`)
modulo the total weight, and with a single uniform float that reuse would send every request
that passed a 50% `runtime_fraction` to the first half of the split.

Each outcome also carries its `RoutePolicy` (`policy.py`): the route's, or for a weighted
split the picked entry's (its header mutations and fault configs are the most specific).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from sail.errors import ConfigError
from sail.model import DirectResponse
from sail.routing.policy import EMPTY_POLICY, RoutePolicy
from sail.routing.request import header_getter, header_values, is_pseudo
from sail.routing.rewrite import compile_rewrite

if TYPE_CHECKING:
    from collections.abc import Callable

    from sail.model import Route
    from sail.routing.policy import PolicyOf
    from sail.routing.request import HeaderGetter, Headers
    from sail.routing.rewrite import Rewrite

    Rand = Callable[[], float]

__all__ = ["Action", "compile_action"]


class Action:
    """The compiled action of one route.

    **Parameters**

    * `cluster` - the cluster when it is fixed, else `None` (picked per request, or no
      upstream at all for a `DirectResponse` or a non-forwarding route).
    * `split` - for a weighted split: `split(rand)` picks `(cluster, policy)`.
    * `header`, `read_header` - for `cluster_header`: its name and its getter.
    * `rewrite` - the path rewrite, else `None`.
    * `host` - `host_rewrite_literal`, else `None` (the original Host is kept).
    * `fixed` - true when neither the cluster nor the path depends on the request.
    * `policy` - the route's `RoutePolicy` (a split picks its own with the cluster).
    """

    __slots__ = (
        "cluster",
        "fixed",
        "header",
        "host",
        "policy",
        "read_header",
        "rewrite",
        "split",
    )

    def __init__(
        self,
        cluster: str | None = None,
        *,
        split: Callable[[Rand], tuple[str, RoutePolicy]] | None = None,
        header: str | None = None,
        rewrite: Rewrite | None = None,
        host: str | None = None,
        policy: RoutePolicy = EMPTY_POLICY,
    ) -> None:
        self.cluster = cluster
        self.policy = policy
        self.split = split
        self.header = header
        self.read_header: HeaderGetter | None = None if header is None else _first_value(header)
        self.rewrite = rewrite
        self.host = host
        self.fixed = split is None and header is None and rewrite is None


_NO_UPSTREAM = Action()


def _first_value(name: str) -> HeaderGetter:
    """Reads the cluster name from header `name`: its first value only, as Envoy's
    `ClusterHeaderClusterSpecifier` ("an implicitly untrusted header, so per the API
    documentation only the first value is used"); an empty value names no cluster."""
    key = name.lower()
    get = header_getter(key)
    repeatable = not is_pseudo(key)

    def read(headers: Headers, authority: str, method: str, path: str, scheme: str) -> str | None:
        value = get(headers, authority, method, path, scheme)
        if value and repeatable and "," in value:
            value = header_values(headers, key, value)[0]
        return value or None

    return read


def _split(
    picks: tuple[tuple[str, RoutePolicy], ...], weights: tuple[int, ...]
) -> Callable[[Callable[[], float]], tuple[str, RoutePolicy]]:
    cumulative: list[int] = []
    total = 0
    for weight in weights:
        total += weight
        cumulative.append(total)
    last = len(picks) - 1

    def split(rand: Rand) -> tuple[str, RoutePolicy]:
        # `hi=last` keeps a misbehaving rand() that returns 1.0 inside the list.
        return picks[bisect_right(cumulative, rand() * total, 0, last)]

    return split


def _route_only(entry: object) -> RoutePolicy:
    return EMPTY_POLICY


def compile_action(route: Route, policy_of: PolicyOf = _route_only) -> Action:
    """Compile `route.action`. Raises `ConfigError` for an action Envoy would refuse: no
    cluster specifier, a weighted split whose weights add up to 0, or both rewrites.

    A `cluster_header` whose header is missing or empty names no cluster: Envoy answers
    with an error status ("If the header is not found ... Envoy will return a 404"), the
    router raises `NoRoute`.

    `policy_of` gives the `RoutePolicy` of the route (`None`) or of a weighted cluster
    entry (`policy.route_policies`); by default every route has the empty policy.
    """
    action = route.action
    if action is None or isinstance(action, DirectResponse):
        policy = policy_of(None)
        return _NO_UPSTREAM if policy is EMPTY_POLICY else Action(policy=policy)
    rewrite = compile_rewrite(route.match, action)
    host = action.host_rewrite_literal or None
    if action.cluster:
        return Action(action.cluster, rewrite=rewrite, host=host, policy=policy_of(None))
    if action.weighted_clusters:
        kept = [w for w in action.weighted_clusters if w.weight > 0]
        if any(w.weight < 0 for w in action.weighted_clusters) or not kept:
            raise ConfigError("weighted_clusters: weights must be >= 0 with a positive total")
        if len(kept) == 1:
            return Action(kept[0].name, rewrite=rewrite, host=host, policy=policy_of(kept[0]))
        picks = tuple((w.name, policy_of(w)) for w in kept)
        split = _split(picks, tuple(w.weight for w in kept))
        return Action(split=split, rewrite=rewrite, host=host, policy=policy_of(None))
    if action.cluster_header:
        return Action(
            header=action.cluster_header, rewrite=rewrite, host=host, policy=policy_of(None)
        )
    raise ConfigError("route action names no cluster, weighted_clusters or cluster_header")
