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
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from sail.errors import ConfigError
from sail.model import DirectResponse
from sail.routing.request import header_getter, header_values, is_pseudo
from sail.routing.rewrite import compile_rewrite

if TYPE_CHECKING:
    from collections.abc import Callable

    from sail.model import Route
    from sail.routing.request import HeaderGetter, Headers
    from sail.routing.rewrite import Rewrite

    Rand = Callable[[], float]

__all__ = ["Action", "compile_action"]


class Action:
    """The compiled action of one route.

    **Parameters**

    * `cluster` - the cluster when it is fixed, else `None` (picked per request, or no
      upstream at all for a `DirectResponse` or a non-forwarding route).
    * `split` - for a weighted split: `split(rand)` picks the cluster.
    * `header`, `read_header` - for `cluster_header`: its name and its getter.
    * `rewrite` - the path rewrite, else `None`.
    * `host` - `host_rewrite_literal`, else `None` (the original Host is kept).
    * `fixed` - true when neither the cluster nor the path depends on the request.
    """

    __slots__ = ("cluster", "fixed", "header", "host", "read_header", "rewrite", "split")

    def __init__(
        self,
        cluster: str | None = None,
        *,
        split: Callable[[Rand], str] | None = None,
        header: str | None = None,
        rewrite: Rewrite | None = None,
        host: str | None = None,
    ) -> None:
        self.cluster = cluster
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
    names: tuple[str, ...], weights: tuple[int, ...]
) -> Callable[[Callable[[], float]], str]:
    cumulative: list[int] = []
    total = 0
    for weight in weights:
        total += weight
        cumulative.append(total)
    last = len(names) - 1

    def split(rand: Rand) -> str:
        # `hi=last` keeps a misbehaving rand() that returns 1.0 inside the list.
        return names[bisect_right(cumulative, rand() * total, 0, last)]

    return split


def compile_action(route: Route) -> Action:
    """Compile `route.action`. Raises `ConfigError` for an action Envoy would refuse: no
    cluster specifier, a weighted split whose weights add up to 0, or both rewrites.

    A `cluster_header` whose header is missing or empty names no cluster: Envoy answers
    with an error status ("If the header is not found ... Envoy will return a 404"), the
    router raises `NoRoute`.
    """
    action = route.action
    if action is None or isinstance(action, DirectResponse):
        return _NO_UPSTREAM
    rewrite = compile_rewrite(route.match, action)
    host = action.host_rewrite_literal or None
    if action.cluster:
        return Action(action.cluster, rewrite=rewrite, host=host)
    if action.weighted_clusters:
        kept = [w for w in action.weighted_clusters if w.weight > 0]
        if any(w.weight < 0 for w in action.weighted_clusters) or not kept:
            raise ConfigError("weighted_clusters: weights must be >= 0 with a positive total")
        if len(kept) == 1:
            return Action(kept[0].name, rewrite=rewrite, host=host)
        split = _split(tuple(w.name for w in kept), tuple(w.weight for w in kept))
        return Action(split=split, rewrite=rewrite, host=host)
    if action.cluster_header:
        return Action(header=action.cluster_header, rewrite=rewrite, host=host)
    raise ConfigError("route action names no cluster, weighted_clusters or cluster_header")
