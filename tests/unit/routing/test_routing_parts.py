"""The routing package's parts, one at a time: domains, request reading, matchers, rewrites."""

from __future__ import annotations

import pytest

from sail.errors import ConfigError
from sail.model.regex import compile_regex
from sail.routing.domains import DomainIndex, strip_port
from sail.routing.matchers import compile_header_matcher, compile_string_matcher
from sail.routing.request import header_getter, parse_query, path_end
from sail.routing.rewrite import compile_substitution, global_replace
from tests.unit.routing.routing_helpers import S, header, headers, sm


@pytest.mark.parametrize(
    ("host", "bare"),
    [
        ("reviews:9080", "reviews"),
        ("reviews", None),
        ("[::1]:80", "[::1]"),
        ("[::1]", None),
        ("[fe80::1%eth0]", None),
        ("reviews:", None),
        ("reviews:http", None),
        ("a:1:2", "a:1"),
    ],
)
def test_strip_port(host: str, bare: str | None) -> None:
    assert strip_port(host) == bare


def test_domain_index_search_order_and_first_wins() -> None:
    index = DomainIndex(
        [
            ("*", "star"),
            ("*", "second-star"),
            ("api.*", "prefix"),
            ("*.example.com", "suffix"),
            ("*.api.example.com", "long-suffix"),
            ("api.example.com", "exact"),
            ("API.example.com", "dup"),
        ]
    )
    assert index.find("API.Example.com") == "exact"
    assert index.find("v1.api.example.com") == "long-suffix"
    assert index.find("www.example.com") == "suffix"
    assert index.find("api.internal") == "prefix"
    assert index.find("other") == "star"
    assert index.exact == {"api.example.com": "exact"}


def test_domain_index_empty() -> None:
    assert DomainIndex([]).find("anything:80") is None


@pytest.mark.parametrize(
    ("target", "end"),
    [("/a", 2), ("/a?x", 2), ("/a#f", 2), ("/a#f?x", 2), ("/a?x#f", 2), ("", 0), ("?", 0)],
)
def test_path_end(target: str, end: int) -> None:
    assert path_end(target) == end


@pytest.mark.parametrize(
    ("target", "params"),
    [
        ("/p", {}),
        ("/p?", {}),
        ("/p?a=1&a=2&b", {"a": "1", "b": ""}),
        ("/p?q=a+b%21", {"q": "a+b%21"}),
        ("/p?x=a=b&=1&&y", {"x": "a=b", "": "1", "y": ""}),
        ("/p?x=1;y=2", {"x": "1;y=2"}),
        ("/p?a=1#frag&b=2", {"a": "1"}),
        ("/p#frag?a=1", {}),
    ],
)
def test_parse_query(target: str, params: dict[str, str]) -> None:
    assert parse_query(target, path_end(target)) == params


def test_header_getter_pseudo_headers() -> None:
    request = headers({"X-A": "1", "host": "ignored"})
    args = (request, "svc:80", "PUT", "/p?q", "https")
    assert header_getter(":authority")(*args) == "svc:80"
    assert header_getter(":method")(*args) == "PUT"
    assert header_getter(":path")(*args) == "/p?q"
    assert header_getter(":scheme")(*args) == "https"
    assert header_getter(":protocol")(*args) is None
    assert header_getter("host")(*args) == "svc:80"
    assert header_getter("X-a")(*args) == "1"


@pytest.mark.parametrize(
    ("kind", "value", "ignore_case", "subject", "expected"),
    [
        (S.EXACT, "abc", False, "abc", True),
        (S.EXACT, "abc", False, "ABC", False),
        (S.EXACT, "abc", True, "ABC", True),
        (S.EXACT, "", False, "", True),
        (S.EXACT, "", False, "x", False),
        (S.PREFIX, "ab", True, "ABc", True),
        (S.PREFIX, "abcd", True, "ab", False),
        (S.SUFFIX, "bc", True, "aBC", True),
        (S.SUFFIX, "abcd", True, "cd", False),
        (S.CONTAINS, "B", True, "abc", True),
        (S.CONTAINS, "B", False, "abc", False),
        (S.REGEX, "a.c", False, "abc", True),
        (S.REGEX, "b", False, "abc", False),
        (S.REGEX, "a.c", True, "ABC", False),  # ignore_case has no effect on safe_regex
    ],
)
def test_string_matcher(
    kind: S, value: str, ignore_case: bool, subject: str, expected: bool
) -> None:
    assert compile_string_matcher(sm(kind, value, ignore_case=ignore_case))(subject) is expected


def test_string_matcher_compiles_a_missing_regex_and_rejects_a_bad_one() -> None:
    from sail.model import StringMatcher

    assert compile_string_matcher(StringMatcher(S.REGEX, "[0-9]+"))("42")
    with pytest.raises(ConfigError, match="invalid regex"):
        compile_string_matcher(StringMatcher(S.REGEX, "("))


# Envoy `HeaderUtility::matchHeaders` truth table for absent / present headers:
# (present_match, invert_match, treat_missing_as_empty, header value, expected)
PRESENCE = [
    (True, False, False, None, False),
    (True, True, False, None, True),
    (False, False, False, None, True),
    (False, True, False, None, False),
    (True, False, False, "", True),
    (True, True, False, "v", False),
    (False, False, False, "v", False),
    (False, True, False, "v", True),
    (True, False, True, None, True),  # treated as present, with value ""
    (False, False, True, None, False),
]


@pytest.mark.parametrize(("present", "invert", "empty", "value", "expected"), PRESENCE)
def test_presence_truth_table(
    present: bool, invert: bool, empty: bool, value: str | None, expected: bool
) -> None:
    matcher = header("x", present=present, invert=invert, missing_as_empty=empty)
    request = headers({} if value is None else {"x": value})
    assert compile_header_matcher(matcher)(request, "svc", "GET", "/", "http") is expected


@pytest.mark.parametrize(
    ("value", "start", "end", "expected"),
    [
        ("5", 0, 10, True),
        ("", 0, 10, False),
        (" 5", 0, 10, False),
        ("1_0", 0, 100, False),
        ("٣", 0, 10, False),  # Arabic-Indic three: int() takes it, Envoy does not
        (str(2**63), 0, 2**63 - 1, False),  # overflows int64
        (str(-(2**63)), -(2**63), 0, True),
    ],
)
def test_range(value: str, start: int, end: int, expected: bool) -> None:
    test = compile_header_matcher(header("x", range=(start, end)))
    assert test({"x": value}, "svc", "GET", "/", "http") is expected


@pytest.mark.parametrize(
    ("substitution", "groups", "parts"),
    [
        ("plain", 0, ("plain",)),
        ("\\1-\\0", 1, (1, "-", 0)),
        ("a\\\\b\\1", 1, ("a\\b", 1)),
        ("", 0, ()),
    ],
)
def test_compile_substitution(substitution: str, groups: int, parts: tuple[str | int, ...]) -> None:
    assert compile_substitution(substitution, groups) == parts


@pytest.mark.parametrize(
    ("pattern", "substitution", "text", "expected"),
    [
        # Observed from Envoy 1.40: RE2 skips an empty match where the last match ended.
        ("x*", "-", "/e/axxb", "-/-e-/-a-b-"),
        ("x*", "-", "/e/ab", "-/-e-/-a-b-"),
        ("[0-9]+", "<\\0>", "/w/a1/22", "/w/a<1>/<22>"),
        ("(a)|(b)", "[\\1\\2]", "ab", "[a][b]"),  # an unmatched group is empty
        ("^/", "", "/a/b", "a/b"),  # `^` is the start of the text, not of each search
        ("z", "y", "/a", "/a"),
        ("a", "\\\\n", "a", "\\n"),  # RE2's `\\` is a backslash; `n` stays an `n`
    ],
)
def test_global_replace(pattern: str, substitution: str, text: str, expected: str) -> None:
    compiled = compile_regex(pattern)
    parts = compile_substitution(substitution, compiled.groups)
    assert global_replace(compiled, parts, text) == expected
