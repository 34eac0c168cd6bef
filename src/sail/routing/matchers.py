"""Compile the model's matchers into small functions, once, at build time.

Each `compile_*` turns a frozen model object into a closure that the request path calls with
plain strings: no branching on the matcher kind, no regex compilation, no lower-casing of the
configured value per request.

The rules, from Envoy's `route_components.proto` and `type/matcher/v3/string.proto`:

* A regex must match the **whole** value (RE2 `FullMatch`), never a substring.
* `ignore_case` applies to exact/prefix/suffix/contains and "has no effect for the safe_regex
  match"; the route's `case_sensitive` flag likewise never applies to a `safe_regex` path.
* A header matcher whose header is absent does **not** match, and `invert_match` does not
  turn that into a match (only `present_match` and `treat_missing_header_as_empty` look at
  absence). That is the trap: `invert` of "x-env is prod" is not "x-env is anything but prod,
  or missing".
* A header sent several times matches when any one of its values does (Envoy 1.40, checked
  by `tests/e2e/test_envoy_parity.py`); `invert_match` negates that answer as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from sail.errors import ConfigError
from sail.model import (
    HeaderMatcher,
    PathMatchKind,
    QueryParameterMatcher,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
)
from sail.model.regex import InvalidRegex, Regex, compile_regex
from sail.routing.request import Headers, header_getter, header_values, is_pseudo

__all__ = [
    "EXACT",
    "OTHER",
    "PREFIX",
    "PathTest",
    "QueryTest",
    "RequestTest",
    "compile_header_matcher",
    "compile_headers",
    "compile_path",
    "compile_query_matcher",
    "compile_string_matcher",
]

StringTest = Callable[[str], bool]
PathTest = Callable[[str], bool]
QueryTest = Callable[[Mapping[str, str]], bool]
RequestTest = Callable[[Headers, str, str, str, str], bool]
"""`(headers, authority, method, path, scheme) -> bool`, as `request.HeaderGetter` reads."""

# Path kinds the router tests inline, sparing a function call for the common routes.
PREFIX = 0  # case-sensitive prefix: `path.startswith(value)`
EXACT = 1  # case-sensitive exact path: `path == value`
OTHER = 2  # anything else: call the compiled `PathTest`

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _regex(source: str, compiled: Regex | None, where: str) -> Regex:
    # A model built by hand may carry only the source; it is compiled here, once, as the
    # decoders do (RE2, Envoy's program-size limit; `InvalidRegex` is a `ConfigError`).
    if compiled is not None:
        return compiled
    try:
        return compile_regex(source, where)
    except InvalidRegex as exc:
        raise ConfigError(f"{where}: invalid regex: {exc.reason}") from None


def compile_string_matcher(matcher: StringMatcher) -> StringTest:
    """Envoy's `StringMatcher` as a function of the value.

    With `ignore_case` the configured value is lower-cased here and the request value per call
    (Envoy compares ASCII case-insensitively; non-ASCII values are rare in headers and paths).
    """
    kind = matcher.kind
    value = matcher.value
    if kind is StringMatchKind.REGEX:
        return _regex(value, matcher.regex, "string matcher").matches
    if matcher.ignore_case:
        low = value.lower()
        n = len(low)
        if kind is StringMatchKind.EXACT:
            return lambda v: v.lower() == low
        if kind is StringMatchKind.PREFIX:
            return lambda v: v[:n].lower() == low
        if kind is StringMatchKind.SUFFIX:
            return lambda v: len(v) >= n and v[len(v) - n :].lower() == low
        return lambda v: low in v.lower()
    if kind is StringMatchKind.EXACT:
        return lambda v: v == value
    if kind is StringMatchKind.PREFIX:
        return lambda v: v.startswith(value)
    if kind is StringMatchKind.SUFFIX:
        return lambda v: v.endswith(value)
    return lambda v: value in v


def _in_range(start: int, end: int) -> StringTest:
    """`range_match`: the *whole* value is a base-10 int64 (optional sign, digits), in
    `[start, end)`. "Match will fail for empty values, floating point numbers or if only a
    subsequence of the header value is an integer"; an int64 overflow fails too (absl's
    `SimpleAtoi`). Python's `int()` would also take `" 7"`, `"1_000"` and non-ASCII digits.
    """

    def test(v: str) -> bool:
        if _DECIMAL.fullmatch(v) is None:
            return False
        n = int(v)
        return _INT64_MIN <= n <= _INT64_MAX and start <= n < end

    return test


def compile_header_matcher(matcher: HeaderMatcher) -> RequestTest:
    """Envoy's `HeaderMatcher` as a test of one request.

    Following `HeaderUtility`, the proto text, and a real Envoy 1.40:

    * `present_match: true` matches when the header "is in the request", `false` when it "is
      absent"; `invert_match` flips either. With `treat_missing_header_as_empty` an absent
      header counts as present with the value `""`.
    * A value matcher (string or range) on an absent header "will be ignored so it will not
      match", even with `invert_match` (proto: `treat_missing_header_as_empty`, example
      "header2"). With `treat_missing_header_as_empty` the value is `""` and the matcher, then
      `invert_match`, apply as usual ("The empty header does not match the range, so it will
      match when inverted").
    * A repeated header matches when any of its values does; `invert_match` negates the
      whole: `x: 1` + `x: 2` matches `exact: 2`, so it does not match `exact: 2` inverted.
    * No specifier at all defaults to `present_match: true`.
    """
    name = matcher.name.lower()
    get = header_getter(name)
    repeatable = not is_pseudo(name)
    invert = matcher.invert
    missing_as_empty = matcher.treat_missing_as_empty
    base: StringTest | None = None
    if matcher.string_match is not None:
        base = compile_string_matcher(matcher.string_match)
    elif matcher.range is not None:
        base = _in_range(matcher.range.start, matcher.range.end)

    if base is None:
        wanted = matcher.present is not False  # None (no specifier) means present_match: true

        def presence(headers: Headers, authority: str, method: str, path: str, scheme: str) -> bool:
            present = missing_as_empty or get(headers, authority, method, path, scheme) is not None
            return (present == wanted) != invert

        return presence

    test = base

    def by_value(headers: Headers, authority: str, method: str, path: str, scheme: str) -> bool:
        value = get(headers, authority, method, path, scheme)
        if value is None:
            return missing_as_empty and test("") != invert
        if repeatable and "," in value:
            values = header_values(headers, name, value)
            return any(test(v) for v in values) != invert
        return test(value) != invert

    return by_value


def compile_headers(matchers: tuple[HeaderMatcher, ...]) -> RequestTest | None:
    """All of a route's header matchers as one test; `None` when the route has none."""
    if not matchers:
        return None
    checks = tuple(compile_header_matcher(m) for m in matchers)
    if len(checks) == 1:
        return checks[0]

    def all_match(headers: Headers, authority: str, method: str, path: str, scheme: str) -> bool:
        # A plain loop: `all()` over a generator costs an allocation per call.
        for check in checks:
            if not check(headers, authority, method, path, scheme):
                break
        else:
            return True
        return False

    return all_match


def compile_query_matcher(matcher: QueryParameterMatcher) -> QueryTest:
    """Envoy's `QueryParameterMatcher` over the raw query (first value per name).

    Without a `string_match` it tests presence: `present` true asks for the parameter,
    `present` false for its absence (Envoy 1.40, `enable_new_query_param_present_match_
    behavior`: "whether the parameter exists and matches the expected presence"). With a
    `string_match`, a missing parameter never matches.
    """
    name = matcher.name
    if matcher.string_match is None:
        if matcher.present is not False:  # None: no specifier, which means present
            return lambda params: name in params
        return lambda params: name not in params
    test = compile_string_matcher(matcher.string_match)

    def by_value(params: Mapping[str, str]) -> bool:
        value = params.get(name)
        return value is not None and test(value)

    return by_value


def compile_path(match: RouteMatch) -> tuple[int, str, PathTest]:
    """The path condition as `(kind, value, test)`; `kind` is `PREFIX`, `EXACT` or `OTHER`.

    The router tests `PREFIX`/`EXACT` inline with `value`; `test` works for every kind. The
    path given excludes query and fragment. `path_separated_prefix` matches the prefix itself
    or the prefix followed by `/`: `/api/dev` matches `/api/dev` and `/api/dev/v1`, never
    `/api/developer`.
    """
    kind = match.path.kind
    value = match.path.value
    if kind is PathMatchKind.REGEX:
        return OTHER, value, _regex(value, match.path.regex, "safe_regex path").matches
    if match.case_sensitive:
        if kind is PathMatchKind.PREFIX:
            return PREFIX, value, lambda p: p.startswith(value)
        if kind is PathMatchKind.EXACT:
            return EXACT, value, lambda p: p == value
        below = value + "/"
        return OTHER, value, lambda p: p.startswith(below) or p == value
    low = value.lower()
    n = len(low)
    if kind is PathMatchKind.PREFIX:
        return OTHER, value, lambda p: p[:n].lower() == low
    if kind is PathMatchKind.EXACT:
        return OTHER, value, lambda p: len(p) == n and p.lower() == low
    return OTHER, value, lambda p: p[:n].lower() == low and (len(p) == n or p[n] == "/")
