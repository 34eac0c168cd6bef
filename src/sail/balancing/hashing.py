"""Request hashing for `ring_hash` and `maglev`: Envoy's `RouteAction.hash_policy`.

```python
result = request_hash(action.hash_policies, headers, "/cart?user=7", source_ip="10.1.2.3")
endpoint = picker.pick(result.value)          # None: the hashing policy picks at random
for cookie in result.set_cookies:             # add to the response the caller gets
    response.headers.append("set-cookie", cookie)
```

Each policy yields a 64-bit xxHash (seed 0) of something in the request, or nothing:

| kind | hashes | nothing when |
|---|---|---|
| `header` | the header's values, sorted, chained (`xxh64(v2, seed=xxh64(v1))`) | header absent |
| `cookie` | the cookie's value | cookie absent or empty, and no `ttl` |
| `connection_properties` | the source IP as text (`10.1.2.3`, `::1`) | no `source_ip` given |
| `query_parameter` | the first value of the parameter, raw (not decoded) | parameter absent |

Several policies combine as in Envoy's `HashPolicyImpl::generateHash`: each new hash is
XORed into the previous one rotated left by one bit (`rotl(h, 1) ^ new`, so two identical
policies do not cancel out), and a `terminal` policy that produced a hash - by itself or with
the ones before it - stops the walk. With no hash at all the result is `None`, and the hashing
policies then pick at random, as Envoy does.

A `cookie` policy with a `ttl` whose cookie is absent generates one, as Envoy's router does:
its value is 16 hex digits of `xxh64(cookie_seed)`, which is then also what gets hashed, and
`set_cookies` carries the `Set-Cookie` header the caller must add to the response it returns
(`name="value"; Max-Age=ttl; Path=path; <attributes>; HttpOnly`, `Max-Age` left out for a ttl
of 0, i.e. a session cookie). Envoy's `cookie_seed` is the downstream connection's remote and
local addresses (`"10.0.0.1:51234" + "10.0.0.2:8080"`), so every request on one connection
gets the same cookie; sail has no downstream connection of its own, so the caller passes
whatever identifies its client, and without one the value is random.

Pseudo-headers: a `header` policy naming `:authority` (or `host`) hashes `authority` when
given, `:path` the path with its query, `:method` the `method`.

Sail differs from Envoy in one respect: a `header` policy's `regex_rewrite` is not decoded
(so not applied), and `filter_state` policies are dropped at decode, as gRPC does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import xxhash

if TYPE_CHECKING:
    from sail.model import HashPolicy

__all__ = [
    "Headers",
    "RequestHash",
    "cookie_value",
    "murmur_hash2",
    "request_hash",
    "set_cookie_header",
    "xxh64",
]

_MASK64 = (1 << 64) - 1


class Headers(Protocol):
    """Request headers as hashing reads them: `httpx.Headers`, or a dict with lower-case
    keys. With `get_list` (httpx has it) a repeated header is read value by value."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


_xxh64_intdigest = xxhash.xxh64_intdigest


def xxh64(data: str | bytes, seed: int = 0) -> int:
    """xxHash64 of `data` (UTF-8 for text), Envoy's `HashUtil::xxHash64`."""
    return _xxh64_intdigest(data.encode() if isinstance(data, str) else data, seed)


_MURMUR_MUL = 0xC6A4A7935BD1E995
_MURMUR_SEED = 0xC70F6907  # Envoy's MurmurHash::STD_HASH_SEED


def murmur_hash2(data: str | bytes, seed: int = _MURMUR_SEED) -> int:
    """64-bit MurmurHash2 as Envoy's `MurmurHash::murmurHash2` (libstdc++'s `_Hash_bytes`):
    the `MURMUR_HASH_2` ring-hash function. Pure Python, for build time only."""
    key = data.encode() if isinstance(data, str) else data
    mul = _MURMUR_MUL
    length = len(key)
    aligned = length & ~7
    h = (seed ^ (length * mul)) & _MASK64
    for i in range(0, aligned, 8):
        word = (int.from_bytes(key[i : i + 8], "little") * mul) & _MASK64
        word = ((word ^ (word >> 47)) * mul) & _MASK64
        h = ((h ^ word) * mul) & _MASK64
    if length & 7:
        tail = int.from_bytes(key[aligned:], "little")
        h = ((h ^ tail) * mul) & _MASK64
    h = ((h ^ (h >> 47)) * mul) & _MASK64
    return h ^ (h >> 47)


class RequestHash(NamedTuple):
    """What `request_hash` found: `value`, the hash for `Picker.pick` (`None`: no policy
    produced one), and `set_cookies`, `Set-Cookie` header values to add to the response."""

    value: int | None
    set_cookies: tuple[str, ...] = ()


NO_HASH = RequestHash(None)


def request_hash(
    policies: Sequence[HashPolicy],
    headers: Headers,
    path_and_query: str,
    source_ip: str | None = None,
    *,
    authority: str | None = None,
    method: str | None = None,
    cookie_seed: str | None = None,
) -> RequestHash:
    """The request's hash under the route's `policies` (see the module docstring).

    **Parameters**

    * `headers` - the request headers (`httpx.Headers`, or a dict with lower-case keys);
      repeated headers are read value by value when the mapping has `get_list`.
    * `path_and_query` - the request target, `/path?query`.
    * `source_ip` - the client's IP address as text, for `connection_properties`.
    * `authority`, `method` - for `header` policies naming `:authority` or `:method`.
    * `cookie_seed` - what a generated cookie's value is hashed from (see above).
    """
    value: int | None = None
    cookies: list[str] = []
    for policy in policies:
        kind = policy.kind
        new: int | None
        if kind == "header":
            new = _header_hash(policy.name, headers, path_and_query, authority, method)
        elif kind == "cookie":
            new = _cookie_hash(policy, headers, cookie_seed, cookies)
        elif kind == "connection_properties":
            new = _xxh64_intdigest(source_ip.encode()) if source_ip else None
        elif kind == "query_parameter":
            found = _query_value(path_and_query, policy.name)
            new = None if found is None else _xxh64_intdigest(found.encode())
        else:
            new = None
        if new is not None:
            value = new if value is None else (((value << 1) | (value >> 63)) & _MASK64) ^ new
        if policy.terminal and value is not None:
            break
    if value is None and not cookies:
        return NO_HASH
    return RequestHash(value, tuple(cookies))


def _header_hash(
    name: str,
    headers: Headers,
    path_and_query: str,
    authority: str | None,
    method: str | None,
) -> int | None:
    values: Sequence[str]
    if name in (":authority", "host") and authority is not None:
        values = (authority,)
    elif name == ":path":
        values = (path_and_query,)
    elif name == ":method":
        if method is None:
            return None
        values = (method,)
    else:
        key = "host" if name == ":authority" else name
        one = headers.get(key)
        if one is None:
            return None
        values = _each_value(headers, key, one)
    if len(values) == 1:
        return _xxh64_intdigest(values[0].encode())
    h = 0  # Envoy hashes the sorted values as a chain: each one seeded with the hash so far
    for v in sorted(values):
        h = _xxh64_intdigest(v.encode(), h)
    return h


def _cookie_hash(
    policy: HashPolicy, headers: Headers, seed: str | None, cookies: list[str]
) -> int | None:
    value = cookie_value(headers, policy.name)
    if value:
        return _xxh64_intdigest(value.encode())
    if policy.ttl is None:
        return None
    source = seed if seed is not None else os.urandom(16).hex()
    value = f"{_xxh64_intdigest(source.encode()):016x}"
    cookies.append(
        set_cookie_header(policy.name, value, policy.path, int(policy.ttl), policy.attributes)
    )
    return _xxh64_intdigest(value.encode())


def cookie_value(headers: Headers, name: str) -> str:
    """The value of cookie `name` in the request's `Cookie` headers, `""` when absent.

    As Envoy's `Http::Utility::parseCookieValue`: each `Cookie` header is split on `;`, a
    piece without `=` is skipped, leading spaces of the name are dropped, the first piece
    whose name matches wins, and a value wrapped in double quotes loses them.
    """
    joined = headers.get("cookie")
    if joined is None:
        return ""
    for line in _each_value(headers, "cookie", joined):
        for piece in line.split(";"):
            key, eq, value = piece.partition("=")
            if not eq or key.lstrip(" ") != name:
                continue
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
    return ""


def _each_value(headers: Headers, name: str, joined: str) -> Sequence[str]:
    """Each value of a header whose `get` gave `joined`: `httpx.Headers.get` joins repeated
    headers with ", ", so only then (and only if the mapping has `get_list`) read them apart."""
    if "," not in joined:
        return (joined,)
    get_list: Callable[[str], Sequence[str]] | None = getattr(headers, "get_list", None)
    if get_list is None:
        return (joined,)
    return get_list(name) or (joined,)


def set_cookie_header(
    name: str,
    value: str,
    path: str = "",
    max_age: int = 0,
    attributes: Sequence[tuple[str, str]] = (),
) -> str:
    """A `Set-Cookie` value as Envoy's `Http::Utility::makeSetCookieValue` writes it
    (HttpOnly always, `Max-Age` only when not 0)."""
    parts = [f'{name}="{value}"']
    if max_age:
        parts.append(f"Max-Age={max_age}")
    if path:
        parts.append(f"Path={path}")
    parts.extend(f"{k}={v}" if v else k for k, v in attributes)
    parts.append("HttpOnly")
    return "; ".join(parts)


def _query_value(target: str, name: str) -> str | None:
    """The first raw value of query parameter `name` in `target` (`x` alone is `""`), as
    Envoy's `QueryParamsMulti::parseQueryString`: everything after the first `?`."""
    start = target.find("?")
    if start < 0:
        return None
    for piece in target[start + 1 :].split("&"):
        key, _, value = piece.partition("=")
        if key == name:
            return value
    return None
