"""What routing reads from a request: the path split, the query, and header values.

A request reaches the router as an authority (the Host header value), a raw request target
(`/a/b?x=1`), a `Headers` mapping, a method and a scheme. Envoy routes on HTTP/2 pseudo-headers,
so a header matcher may name `:authority`, `:method`, `:path` or `:scheme`; `header_getter`
resolves such a name once, at build time, into a small function that reads the right value.

The trap: Envoy turns an HTTP/1 `Host` header into `:authority`, so a matcher naming `host`
never sees a value there (the docs say "match on `:authority` instead"). gRPC keeps no `host`
either. sail does the same, so one route configuration routes alike in Envoy and in sail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl

__all__ = ["HeaderGetter", "Headers", "header_getter", "parse_query", "path_end"]


class Headers(Protocol):
    """The request headers as routing reads them: a case-insensitive `get`.

    `httpx.Headers` satisfies it; it joins repeated values with `", "` where Envoy joins them
    with `","`, which only matters to a matcher that looks inside a repeated header.
    """

    def get(self, name: str, default: None = None, /) -> str | None: ...


HeaderGetter = Callable[[Headers, str, str, str, str], str | None]
"""Reads one header: `(headers, authority, method, path, scheme) -> value or None`."""


def _authority(headers: Headers, authority: str, method: str, path: str, scheme: str) -> str:
    return authority


def _method(headers: Headers, authority: str, method: str, path: str, scheme: str) -> str:
    return method


def _path(headers: Headers, authority: str, method: str, path: str, scheme: str) -> str:
    return path


def _scheme(headers: Headers, authority: str, method: str, path: str, scheme: str) -> str:
    return scheme


def _absent(headers: Headers, authority: str, method: str, path: str, scheme: str) -> None:
    return None


_PSEUDO: dict[str, HeaderGetter] = {
    ":authority": _authority,
    ":method": _method,
    ":path": _path,
    ":scheme": _scheme,
    # Envoy stores Host as :authority, so a lookup of "host" finds nothing (see module doc).
    "host": _absent,
}


def header_getter(name: str) -> HeaderGetter:
    """The function reading header `name` (case-insensitive) for one request.

    `:path` is the raw target, query included, as Envoy's `:path` is. An unknown pseudo-header
    (`:protocol`...) is never present.
    """
    key = name.lower()
    pseudo = _PSEUDO.get(key)
    if pseudo is not None:
        return pseudo
    if key.startswith(":"):
        return _absent

    def regular(
        headers: Headers, authority: str, method: str, path: str, scheme: str
    ) -> str | None:
        return headers.get(key)

    return regular


def path_end(target: str) -> int:
    """Where the path part of a request target ends: at the first `?` or `#`, else its length.

    Envoy matches routes on the path with the query and the fragment removed
    (`PathUtil::removeQueryAndFragment`). A `?` inside a fragment does not start a query.
    """
    end = target.find("?")
    if end < 0:
        end = len(target)
    fragment = target.find("#", 0, end)
    return fragment if fragment >= 0 else end


def parse_query(target: str, end: int) -> dict[str, str]:
    """The query parameters of `target` (whose path ends at `end`), first value per name.

    Envoy's `QueryParameterMatcher` looks at the first value of a repeated parameter
    (`getFirstValue`). Values are percent-decoded and `+` reads as a space, as Envoy's
    `parseAndDecodeQueryString` does; a name without `=` has the value `""`.
    """
    if end >= len(target) or target[end] != "?":
        return {}
    hash_at = target.find("#", end)
    query = target[end + 1 :] if hash_at < 0 else target[end + 1 : hash_at]
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    return params
