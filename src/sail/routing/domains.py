"""Virtual host selection by domain: Envoy's search order, indexed once.

Envoy's `VirtualHost.domains` doc gives the order, and `RouteMatcher::findVirtualHost` the
mechanics:

1. exact domains (`www.foo.com`): one dict lookup;
2. suffix wildcards (`*.foo.com`, `*-bar.foo.com`), longest first;
3. prefix wildcards (`foo.*`, `foo-*`), longest first;
4. the special `*`, matching any host.

Hosts and domains compare lower-cased. The trap: a wildcard "will not match the empty
string", so `*.foo.com` matches `a.foo.com` but not `.foo.com`, and `*-bar.foo.com` not
`-bar.foo.com`. Wildcards are indexed by length, longest first, each length a dict keyed by
the literal part, so a lookup costs one slice and one dict probe per distinct length.

Ports: Envoy matches the Host header as given, port included, against the domains (the
`strip_*_host_port` options are off by default); Istio therefore lists both `reviews` and
`reviews:9080`. sail does that, and then, *only if nothing matched at all* (not even `*`) and
the authority carries a port, searches again without it. That is sail's choice for a
client-side mesh: the port names the listener, which has already been chosen, so
`http://reviews:9080/` should find the `reviews` virtual host. `[::1]:80` has a port, `[::1]`
has none.

A domain listed by several virtual hosts belongs to the first (Envoy refuses such a config;
the xDS decoder should NACK it, this index does not fail).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["DomainIndex", "strip_port"]

V = TypeVar("V")


def strip_port(host: str) -> str | None:
    """`host` without its `:port`, or `None` when it has no (numeric) port.

    As Envoy's `HeaderUtility::getPortStart`: the last `:` starts the port unless it sits
    inside an IPv6 literal's brackets.
    """
    colon = host.rfind(":")
    if colon < 0 or host.rfind("]") > colon:
        return None
    port = host[colon + 1 :]
    if not port.isascii() or not port.isdigit():
        return None
    return host[:colon]


def _longest_first(by_length: dict[int, dict[str, V]]) -> tuple[tuple[int, dict[str, V]], ...]:
    return tuple(sorted(by_length.items(), key=lambda item: -item[0]))


class DomainIndex(Generic[V]):
    """Maps an authority to the value (a virtual host) whose domains match it best.

    Build it from `(domain, value)` pairs in configuration order; `find` does the search.
    """

    __slots__ = ("_default", "_exact", "_prefixes", "_suffixes")

    def __init__(self, entries: Iterable[tuple[str, V]]) -> None:
        exact: dict[str, V] = {}
        suffixes: dict[int, dict[str, V]] = {}
        prefixes: dict[int, dict[str, V]] = {}
        default: V | None = None
        for name, value in entries:
            domain = name.lower()
            if domain == "*":
                if default is None:
                    default = value
            elif domain.startswith("*"):
                literal = domain[1:]
                suffixes.setdefault(len(literal), {}).setdefault(literal, value)
            elif domain.endswith("*"):
                literal = domain[:-1]
                prefixes.setdefault(len(literal), {}).setdefault(literal, value)
            else:
                exact.setdefault(domain, value)
        self._exact = exact
        self._suffixes = _longest_first(suffixes)
        self._prefixes = _longest_first(prefixes)
        self._default = default

    @property
    def exact(self) -> Mapping[str, V]:
        """The exact domains (lower-cased), for a caller's own fast path: a hit there is the
        answer, whatever the wildcards say."""
        return self._exact

    @property
    def only(self) -> V | None:
        """The value of `*` when `*` is the only domain (else `None`): every authority maps
        to it, so a caller may skip the search."""
        if self._exact or self._suffixes or self._prefixes:
            return None
        return self._default

    def _search(self, host: str) -> V | None:
        found = self._exact.get(host)
        if found is not None:
            return found
        size = len(host)
        for length, literals in self._suffixes:
            # The wildcard stands for at least one character: the literal must be shorter.
            if length < size:
                found = literals.get(host[size - length :])
                if found is not None:
                    return found
        for length, literals in self._prefixes:
            if length < size:
                found = literals.get(host[:length])
                if found is not None:
                    return found
        return self._default

    def find(self, authority: str) -> V | None:
        """The best match for `authority` (a Host header value, maybe with `:port`), else
        `None`. See the module doc for the order and the port fallback."""
        host = authority.lower()
        found = self._search(host)
        if found is None:
            bare = strip_port(host)
            if bare is not None:
                found = self._search(bare)
        return found
