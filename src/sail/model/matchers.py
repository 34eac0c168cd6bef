"""String, header and query-parameter matchers, as Envoy's `type.matcher.v3` defines them."""

from __future__ import annotations

import enum

import attrs

from sail.model.regex import Regex

__all__ = [
    "FractionalPercent",
    "HeaderMatcher",
    "Int64Range",
    "QueryParameterMatcher",
    "StringMatchKind",
    "StringMatcher",
]


class StringMatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "safe_regex"


@attrs.frozen
class StringMatcher:
    """Envoy's `StringMatcher`.

    **Parameters**

    * `kind` - how `value` is compared.
    * `value` - the literal, or the regex source for `REGEX`.
    * `ignore_case` - compare case-insensitively (not allowed with `REGEX`, as in Envoy).
    * `regex` - the compiled `value` for `REGEX`; a regex matches the *whole* string, as
      RE2's `FullMatch` does in Envoy.
    """

    kind: StringMatchKind
    value: str
    ignore_case: bool = False
    regex: Regex | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Int64Range:
    """Half-open range `[start, end)`."""

    start: int
    end: int


@attrs.frozen
class HeaderMatcher:
    """Envoy's `route.v3.HeaderMatcher`.

    Exactly one of `string_match`, `range` or `present` is set. The deprecated
    `exact_match`/`prefix_match`/... fields decode into `string_match`.

    **Parameters**

    * `name` - the header name, lower-cased.
    * `invert` - negate the result (`invert_match`).
    * `treat_missing_as_empty` - match an absent header as the empty string
      (`treat_missing_header_as_empty`).
    """

    name: str
    string_match: StringMatcher | None = None
    range: Int64Range | None = None
    present: bool | None = None
    invert: bool = False
    treat_missing_as_empty: bool = False


@attrs.frozen
class QueryParameterMatcher:
    """Envoy's `route.v3.QueryParameterMatcher`: a `string_match`, or a presence test.

    Without `string_match`, `present` true (or `None`, no specifier) asks for the
    parameter to be there and `present=False` for it to be absent (Envoy 1.40).
    """

    name: str
    string_match: StringMatcher | None = None
    present: bool | None = None


@attrs.frozen
class FractionalPercent:
    """`numerator` out of `denominator` (100, 10_000 or 1_000_000)."""

    numerator: int
    denominator: int = 100
