"""Matchers shared by routes and headers: regexes, string, header, query and fraction matchers.

Regexes are compiled here, once, with RE2 (`sail.model.regex`), as Envoy and gRPC do: RE2's
syntax, no backreferences or lookarounds, and Envoy's program-size limit; what RE2 refuses is
NACKed with its reason. The data plane matches the whole value, as RE2's `FullMatch` does.
"""

from __future__ import annotations

from typing import Any

from envoy.type.v3 import percent_pb2

from sail.model import (
    FractionalPercent,
    HeaderMatcher,
    Int64Range,
    QueryParameterMatcher,
    StringMatcher,
    StringMatchKind,
)
from sail.model.regex import InvalidRegex, Regex
from sail.model.regex import compile_regex as compile_re2
from sail.xds.codec.validation import Invalid, at, header_safe

__all__ = [
    "DENOMINATORS",
    "compile_regex",
    "decode_fraction",
    "decode_header_matcher",
    "decode_query_parameter_matcher",
    "decode_string_matcher",
]

DENOMINATORS: dict[int, int] = {
    percent_pb2.FractionalPercent.HUNDRED: 100,
    percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000,
    percent_pb2.FractionalPercent.MILLION: 1_000_000,
}
"""`FractionalPercent.DenominatorType` enum value → denominator."""


def compile_regex(matcher: Any) -> tuple[str, Regex]:
    """The source and compiled RE2 pattern of an Envoy `RegexMatcher`."""
    source = matcher.regex
    try:
        return source, compile_re2(source, "regex")
    except InvalidRegex as exc:
        raise Invalid(exc.field, exc.reason) from None


_STRING_KINDS = {
    "exact": StringMatchKind.EXACT,
    "prefix": StringMatchKind.PREFIX,
    "suffix": StringMatchKind.SUFFIX,
    "contains": StringMatchKind.CONTAINS,
}


def decode_string_matcher(msg: Any) -> StringMatcher:
    """Envoy's `type.matcher.v3.StringMatcher`.

    `ignore_case` is dropped for `safe_regex`: Envoy documents it as having no effect there.
    """
    which = msg.WhichOneof("match_pattern")
    if which == "safe_regex":
        with at("safe_regex"):
            source, pattern = compile_regex(msg.safe_regex)
        return StringMatcher(StringMatchKind.REGEX, source, regex=pattern)
    if which in _STRING_KINDS:
        value = getattr(msg, which)
        if not value and which != "exact":
            raise Invalid(which, "must not be empty")
        return StringMatcher(_STRING_KINDS[which], value, ignore_case=msg.ignore_case)
    if which == "custom":
        raise Invalid("custom", "custom string matchers are not supported")
    raise Invalid("", "one of exact, prefix, suffix, contains, safe_regex is required")


# The deprecated one-field forms of HeaderMatcher, still sent by many control planes.
_LEGACY_HEADER_FIELDS = {
    "exact_match": StringMatchKind.EXACT,
    "prefix_match": StringMatchKind.PREFIX,
    "suffix_match": StringMatchKind.SUFFIX,
    "contains_match": StringMatchKind.CONTAINS,
}


def decode_header_matcher(msg: Any) -> HeaderMatcher:
    """Envoy's `route.v3.HeaderMatcher`; the legacy `*_match` fields become `string_match`.

    No specifier at all means "the header is present", as in Envoy.
    """
    if not msg.name:
        raise Invalid("name", "must not be empty")
    which = msg.WhichOneof("header_match_specifier")
    string_match: StringMatcher | None = None
    int_range: Int64Range | None = None
    present: bool | None = None
    if which == "string_match":
        with at("string_match"):
            string_match = decode_string_matcher(msg.string_match)
    elif which == "safe_regex_match":
        with at("safe_regex_match"):
            source, pattern = compile_regex(msg.safe_regex_match)
        string_match = StringMatcher(StringMatchKind.REGEX, source, regex=pattern)
    elif which in _LEGACY_HEADER_FIELDS:
        value = getattr(msg, which)
        if not value and which != "exact_match":
            raise Invalid(which, "must not be empty")
        if value:
            string_match = StringMatcher(_LEGACY_HEADER_FIELDS[which], value)
        else:
            present = True  # Envoy 1.40 reads a legacy `exact_match: ""` as presence
    elif which == "range_match":
        int_range = Int64Range(msg.range_match.start, msg.range_match.end)
    elif which == "present_match":
        present = msg.present_match
    else:
        present = True
    return HeaderMatcher(
        name=header_safe("name", msg.name).lower(),
        string_match=string_match,
        range=int_range,
        present=present,
        invert=msg.invert_match,
        treat_missing_as_empty=msg.treat_missing_header_as_empty,
    )


def decode_query_parameter_matcher(msg: Any) -> QueryParameterMatcher:
    """Envoy's `route.v3.QueryParameterMatcher`.

    `present_match: true` asks for the parameter, `false` for its absence (Envoy 1.40);
    no specifier at all asks for presence and decodes to `present=None`.
    """
    if not msg.name:
        raise Invalid("name", "must not be empty")
    which = msg.WhichOneof("query_parameter_match_specifier")
    if which == "string_match":
        with at("string_match"):
            return QueryParameterMatcher(msg.name, decode_string_matcher(msg.string_match))
    if which == "present_match":
        return QueryParameterMatcher(msg.name, present=msg.present_match)
    return QueryParameterMatcher(msg.name)


def decode_fraction(msg: Any) -> FractionalPercent:
    """Envoy's `type.v3.FractionalPercent`."""
    denominator = DENOMINATORS.get(msg.denominator)
    if denominator is None:
        raise Invalid("denominator", f"unknown denominator {msg.denominator}")
    return FractionalPercent(msg.numerator, denominator)
