"""What routing reads from a request: the path split, the query, and header values.

A request reaches the router as an authority (the Host header value), a raw request target
(`/a/b?x=1`), a `Headers` mapping, a method and a scheme. Envoy routes on HTTP/2 pseudo-headers,
so a header matcher may name `:authority`, `:method`, `:path` or `:scheme`; `header_getter`
resolves such a name once, at build time, into a small function that reads the right value.
`host` reads the authority too: Envoy keeps an HTTP/1 Host header as `:authority`, and a
matcher on `host` sees that value (checked against Envoy 1.40).

Two traps, both checked against a real Envoy 1.40 (`tests/e2e/test_envoy_parity.py`):

* A header sent several times is matched value by value: the matcher matches if *any* value
  does, and `invert_match` negates that. The joined form `"1,2"` is never matched. A
  `Headers.get` that joins values (`httpx.Headers` does, with `", "`) hides them, so when a
  value holds a comma and the mapping has `get_list` (httpx's does), the values are read
  one by one. A single header whose value holds a comma stays one value.
* Query parameters are compared **raw**: no percent-decoding, `+` stays `+`, only `&`
  separates parameters. `?q=a%20b` has `q` equal to `a%20b`, not `a b`; this is not what
  `urllib.parse.parse_qsl` gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "HeaderGetter",
    "Headers",
    "header_getter",
    "header_values",
    "is_pseudo",
    "parse_query",
    "path_end",
]


class Headers(Protocol):
    """The request headers as routing reads them: a case-insensitive `get`.

    `httpx.Headers` satisfies it, and so does a `dict` with lower-case keys. A mapping that
    also has `get_list(name) -> list[str]` (httpx's does) lets routing see each value of a
    repeated header, as Envoy does; without it a repeated header is one joined value.
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
    "host": _authority,
    ":method": _method,
    ":path": _path,
    ":scheme": _scheme,
}


def is_pseudo(name: str) -> bool:
    """Whether `name` is read from the request line rather than from `Headers`."""
    key = name.lower()
    return key in _PSEUDO or key.startswith(":")


def header_getter(name: str) -> HeaderGetter:
    """The function reading header `name` (case-insensitive) for one request.

    `:path` is the raw target, query included, as Envoy's `:path` is. `:authority` and
    `host` are the authority as given (case and port kept). An unknown pseudo-header
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


def header_values(headers: Headers, name: str, joined: str) -> Sequence[str]:
    """Each value of header `name`, whose `get` gave `joined` (call it only when `joined`
    holds a comma: one value without a comma cannot be several)."""
    get_list: Callable[[str], Sequence[str]] | None = getattr(headers, "get_list", None)
    if get_list is None:
        return (joined,)
    values = get_list(name)
    return values if values else (joined,)


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
    """The raw query parameters of `target` (whose path ends at `end`), first value per name.

    As Envoy 1.40 matches them: split on `&`, then at the first `=`; `x` alone has the value
    `""`, empty pieces (`a=1&&b`) are skipped, nothing is decoded. A repeated name keeps its
    first value (`getFirstValue`).
    """
    if end >= len(target) or target[end] != "?":
        return {}
    hash_at = target.find("#", end)
    query = target[end + 1 :] if hash_at < 0 else target[end + 1 : hash_at]
    params: dict[str, str] = {}
    for piece in query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            params.setdefault(name, value)
    return params
