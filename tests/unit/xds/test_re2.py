"""Every config regex is RE2 with Envoy's program-size limit: over xDS, in routing, and at
`sail apply` (the Istio validator), one function (`sail.model.regex.compile_regex`)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from sail.errors import ConfigError, NoRoute, ResourceError
from sail.model.regex import MAX_PROGRAM_SIZE, InvalidRegex, compile_regex
from sail.registry.istio import IstioConfigError, load_documents
from sail.routing import Router
from sail.xds.codec import decode_route_configuration, parse_resource

NESTED = "(" * 600 + ")" * 600  # RecursionError in Python's re
BACKREFERENCE = "(a)\\1"
LOOKAHEAD = "a(?=x)"
OVER_LIMIT = "a" * (MAX_PROGRAM_SIZE + 1)  # one instruction per literal byte


def decode(match: dict[str, Any], **action: Any) -> Any:
    data = {
        "name": "rc",
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["svc"],
                "routes": [{"match": match, "route": {"cluster": "c", **action}}],
            }
        ],
    }
    return decode_route_configuration(parse_resource("RouteConfiguration", data))


def nack(match: dict[str, Any], **action: Any) -> str:
    with pytest.raises(ResourceError) as info:
        decode(match, **action)
    return info.value.reason


def header_match(regex: str) -> dict[str, Any]:
    return {
        "prefix": "/",
        "headers": [{"name": "x-user", "string_match": {"safe_regex": {"regex": regex}}}],
    }


HEADER_FIELD = "virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex: "
PATH_FIELD = "virtual_hosts[0].routes[0].match.safe_regex.regex: "


# -- the one function ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (BACKREFERENCE, "does not compile (RE2): invalid escape sequence: \\1"),
        (LOOKAHEAD, "does not compile (RE2): invalid perl operator: (?="),
        (NESTED, "RE2 program size of 1204 > max program size of 100"),
        (OVER_LIMIT, f"> max program size of {MAX_PROGRAM_SIZE}"),
        ("", "must not be empty"),
        ("a\udcff", "does not compile (RE2)"),  # a lone surrogate cannot be UTF-8
    ],
)
def test_refused_with_re2s_reason_naming_the_field(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidRegex) as info:
        compile_regex(pattern, "spec.x.regex")
    assert isinstance(info.value, ConfigError)
    assert info.value.field == "spec.x.regex"
    assert reason in info.value.reason
    assert str(info.value).startswith("spec.x.regex: ")


def test_program_size_at_the_limit_is_accepted() -> None:
    # RE2 counts a literal byte as one instruction plus four of overhead: 96 bytes make 100
    assert compile_regex("a" * (MAX_PROGRAM_SIZE - 4)).program_size == MAX_PROGRAM_SIZE
    with pytest.raises(InvalidRegex, match="program size of 101 > max program size of 100"):
        compile_regex("a" * (MAX_PROGRAM_SIZE - 3))


def test_huge_repeat_count_is_a_literal_as_in_re2() -> None:
    # Python's re raises OverflowError; RE2 reads a repeat it cannot count as literal text,
    # so Envoy accepts it and matches the braces literally. So does sail.
    regex = compile_regex("a{4294967296}")
    assert regex.matches("a{4294967296}")
    assert not regex.matches("aaaa")
    # a counted repeat over RE2's 1000 is refused
    with pytest.raises(InvalidRegex, match="invalid repetition size"):
        compile_regex("a{1001}")


def test_full_match_over_non_ascii_text() -> None:
    regex = compile_regex("é+[0-9]")
    assert regex.matches("éé7")
    assert not regex.matches("xéé7")
    assert not regex.matches("éé7x")


# -- over xDS: NACKed naming the field -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (BACKREFERENCE, "invalid escape sequence"),
        (LOOKAHEAD, "invalid perl operator"),
        (NESTED, "RE2 program size of 1204 > max program size of 100"),
        (OVER_LIMIT, "max program size of 100"),
    ],
)
def test_xds_header_and_path_regexes_are_nacked(pattern: str, reason: str) -> None:
    header_reason = nack(header_match(pattern))
    assert header_reason.startswith(HEADER_FIELD)
    assert reason in header_reason
    path_reason = nack({"safe_regex": {"regex": pattern}})
    assert path_reason.startswith(PATH_FIELD)
    assert reason in path_reason


def test_xds_regex_rewrite_pattern_is_nacked() -> None:
    reason = nack(
        {"prefix": "/"}, regex_rewrite={"pattern": {"regex": NESTED}, "substitution": "x"}
    )
    assert reason.startswith("virtual_hosts[0].routes[0].route.regex_rewrite.pattern.regex: ")
    assert "program size" in reason


def test_xds_substitution_with_a_non_ascii_digit_does_not_crash() -> None:
    # `"\\²".isdigit()` is true but int("²") raises: the decoder must not reach it.
    config = decode(
        {"prefix": "/"}, regex_rewrite={"pattern": {"regex": "/(a)"}, "substitution": "\\²"}
    )
    rewrite = config.virtual_hosts[0].routes[0].action.regex_rewrite
    assert rewrite is not None
    assert rewrite.pattern.groups == 1


def test_xds_rewrite_uses_re2_groups() -> None:
    config = decode(
        {"prefix": "/"},
        regex_rewrite={"pattern": {"regex": "^/v([0-9]+)/(.*)$"}, "substitution": "/\\2/v\\1"},
    )
    router = Router.build(config)
    assert router.route("svc", "/v2/items?q=1", httpx.Headers()).path == "/items/v2?q=1"


# -- ReDoS: matching is linear ---------------------------------------------------------------


def test_catastrophic_pattern_matches_a_long_header_in_linear_time() -> None:
    router = Router.build(decode(header_match("^(a+)+$")))
    value = "a" * 50_000 + "b"  # Python's re backtracks for ever on this
    started = time.perf_counter()
    for _ in range(10):
        with pytest.raises(NoRoute):
            router.route("svc", "/", httpx.Headers({"x-user": value}))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert router.route("svc", "/", httpx.Headers({"x-user": "a" * 50_000})).cluster == "c"


# -- at `sail apply`: the Istio validator and translation use the same function --------------

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [a]
  http:
  - match: [MATCH]
    route: [{destination: {host: a}}]
"""


def refused(match: str) -> IstioConfigError:
    with pytest.raises(IstioConfigError) as info:
        load_documents(VS.replace("MATCH", match), "mesh.yaml")
    assert isinstance(info.value, ConfigError)
    return info.value


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (BACKREFERENCE, "invalid escape sequence"),
        (LOOKAHEAD, "invalid perl operator"),
        (NESTED, "RE2 program size of 1204 > max program size of 100"),
        (OVER_LIMIT, "max program size of 100"),
    ],
)
def test_istio_regexes_are_refused_naming_the_field(pattern: str, reason: str) -> None:
    quoted = "'" + pattern + "'"
    err = refused("{uri: {regex: " + quoted + "}}")
    assert err.field == "spec.http[0].match[0].uri.regex"
    assert reason in str(err)
    err = refused("{headers: {x-user: {regex: " + quoted + "}}}")
    assert err.field.startswith("spec.http[0].match[0].headers")
    assert err.field.endswith(".regex")
    assert reason in str(err)


def test_istio_regex_translates_to_re2() -> None:
    (vs,) = load_documents(VS.replace("MATCH", "{uri: {regex: '/v[12]/.*'}}"), "mesh.yaml")
    assert vs.ref == "VirtualService default/reviews"


def test_istio_duration_of_400_digits_is_refused_naming_the_field() -> None:
    text = VS.replace("MATCH", "{uri: {prefix: /}}") + "    timeout: " + "9" * 400 + "s\n"
    with pytest.raises(IstioConfigError) as info:
        load_documents(text, "mesh.yaml")
    assert info.value.field == "spec.http[0].timeout"
    assert "out of range" in str(info.value)


def test_the_public_fullmatch_fallback_decides_as_the_fast_path() -> None:
    """Without google-re2's private `Match` (a release that renames it), `matches` falls
    back to the public `fullmatch`, with the same answers."""
    from sail.model.regex import compile_regex

    for pattern, texts in [("^(a+)+$", ["a" * 100, "a" * 100 + "b", ""]),
                           ("v[0-9]+", ["v1", "v12x", "xv1"]), ("é.", ["éa", "é", "aé"])]:
        fast = compile_regex(pattern)
        slow = compile_regex(pattern)
        slow._raw = None
        for text in texts:
            assert fast.matches(text) == slow.matches(text), (pattern, text)
