"""Conformance table: one request, one config, the answer Envoy gives.

Each case names the rule it pins (`envoy`), quoting `route_components.proto` /
`HeaderUtility` / the router where it matters; `sail:` marks sail's own documented choices.
A case expects the name of the route that matches (`None`: `NoRoute`), and optionally the
cluster, the forwarded path and the Host rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sail.errors import NoRoute
from sail.model import FractionalPercent, HeaderMatcher, QueryParameterMatcher, RouteConfig
from sail.routing import Router, RouteResult
from tests.unit.routing.routing_helpers import (
    S,
    by_domains,
    fixed,
    header,
    headers,
    one_host,
    path,
    prefix,
    qp,
    regex,
    route,
    sep,
    sm,
)

SAME = "<the route's name>"


@dataclass(frozen=True)
class Case:
    id: str
    envoy: str
    config: RouteConfig
    authority: str = "svc"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    expect: str | None = None
    cluster: str | None = SAME
    forward: str | None = None
    host: str | None = None
    method: str = "GET"
    scheme: str = "http"
    rand: float = 0.5


def gate(*matchers: HeaderMatcher) -> RouteConfig:
    """`hit` when all header matchers pass, else `miss`."""
    return one_host(route(prefix("/", headers=matchers), "hit"), route(prefix("/"), "miss"))


def qgate(*matchers: QueryParameterMatcher) -> RouteConfig:
    return one_host(route(prefix("/", query=matchers), "hit"), route(prefix("/"), "miss"))


def fgate(numerator: int, denominator: int = 100) -> RouteConfig:
    fraction = FractionalPercent(numerator, denominator)
    return one_host(route(prefix("/", fraction=fraction), "hit"), route(prefix("/"), "miss"))


H = tuple[tuple[str, str], ...]
XENV: H = (("x-env", "prod"),)

# The table is aligned by hand: one `Case` per entry, its rule on the first line.
# fmt: off
DOMAIN_CASES = [
    Case("exact-beats-suffix", "Envoy domain order: 1. exact before 2. suffix wildcards",
         by_domains(("suffix", ("*.foo.com",)), ("exact", ("www.foo.com",))),
         "www.foo.com", expect="exact"),
    Case("suffix-beats-prefix", "Envoy domain order: 2. suffix before 3. prefix wildcards",
         by_domains(("prefix", ("www.*",)), ("suffix", ("*.foo.com",))),
         "www.foo.com", expect="suffix"),
    Case("prefix-beats-star", "Envoy domain order: 3. prefix wildcards before 4. `*`",
         by_domains(("star", ("*",)), ("prefix", ("www.*",))), "www.bar.org", expect="prefix"),
    Case("star-catches-the-rest", "Envoy: `*` matches any host/authority",
         by_domains(("exact", ("a.com",)), ("star", ("*",))), "b.net", expect="star"),
    Case("longest-suffix-wins", "Envoy: the longest wildcards match first",
         by_domains(("short", ("*.foo.com",)), ("long", ("*-bar.foo.com",))),
         "baz-bar.foo.com", expect="long"),
    Case("shorter-suffix-when-longer-misses", "Envoy: longest *matching* wildcard",
         by_domains(("short", ("*.foo.com",)), ("long", ("*-bar.foo.com",))),
         "baz.foo.com", expect="short"),
    Case("suffix-wildcard-needs-a-char", "Envoy: the wildcard will not match the empty string",
         by_domains(("suffix", ("*.foo.com",))), ".foo.com", expect=None),
    Case("dash-wildcard-needs-a-char", "Envoy: `*-bar.foo.com` does not match `-bar.foo.com`",
         by_domains(("suffix", ("*-bar.foo.com",))), "-bar.foo.com", expect=None),
    Case("suffix-not-the-bare-domain", "Envoy: `*.foo.com` is not `foo.com`",
         by_domains(("suffix", ("*.foo.com",))), "foo.com", expect=None),
    Case("longest-prefix-wins", "Envoy: the longest prefix wildcard matches first",
         by_domains(("short", ("foo.*",)), ("long", ("foo.bar.*",))),
         "foo.bar.baz", expect="long"),
    Case("prefix-wildcard-needs-a-char", "Envoy: the wildcard will not match the empty string",
         by_domains(("prefix", ("foo.*",))), "foo.", expect=None),
    Case("domains-case-insensitive", "Envoy lower-cases the host and the domains",
         by_domains(("exact", ("WWW.Foo.com",))), "www.FOO.COM", expect="exact"),
    Case("port-matched-as-given", "Envoy matches the authority with its port (Istio lists both)",
         by_domains(("bare", ("reviews",)), ("ported", ("reviews:9080",))),
         "reviews:9080", expect="ported"),
    Case("port-fallback", "sail: nothing matched `reviews:9080`, so `reviews` is tried",
         by_domains(("bare", ("reviews",))), "reviews:9080", expect="bare"),
    Case("port-fallback-after-star", "sail: the fallback only runs when even `*` did not match",
         by_domains(("bare", ("reviews",)), ("star", ("*",))), "reviews:9080", expect="star"),
    Case("port-fallback-for-wildcards", "sail: the port-less retry runs the whole search",
         by_domains(("suffix", ("*.foo.com",))), "a.foo.com:8443", expect="suffix"),
    Case("ipv6-port-fallback", "Envoy getPortStart: the port follows the IPv6 brackets",
         by_domains(("v6", ("[::1]",))), "[::1]:8080", expect="v6"),
    Case("ipv6-no-port", "Envoy getPortStart: a colon inside brackets is not a port",
         by_domains(("v6", ("[::1]",))), "[::1]", expect="v6"),
    Case("non-numeric-port-kept", "sail: only a numeric port is stripped",
         by_domains(("bare", ("reviews",))), "reviews:http", expect=None),
    Case("duplicate-domain-first-wins", "a domain in two virtual hosts belongs to the first",
         by_domains(("first", ("a.com",)), ("second", ("a.com", "b.com"))),
         "a.com", expect="first"),
]

PATH_CASES = [
    Case("prefix", "Envoy prefix: the prefix must match the beginning of :path",
         one_host(route(prefix("/api"), "api")), path="/api/v1", expect="api"),
    Case("prefix-is-not-segment-aware", "Envoy prefix is a string prefix: `/api` matches `/apiv2`",
         one_host(route(prefix("/api"), "api")), path="/apiv2", expect="api"),
    Case("separated-prefix-segment", "Envoy path_separated_prefix: `/api` never `/apiv2`",
         one_host(route(sep("/api"), "api")), path="/apiv2", expect=None),
    Case("separated-prefix-itself", "Envoy path_separated_prefix: equal to the prefix matches",
         one_host(route(sep("/api"), "api")), path="/api?x=1", expect="api"),
    Case("separated-prefix-slash", "Envoy path_separated_prefix: prefix followed by `/`",
         one_host(route(sep("/api"), "api")), path="/api/", expect="api"),
    Case("separated-prefix-ignore-case", "Envoy: case_sensitive applies to path_separated_prefix",
         one_host(route(sep("/API", case=False), "api")), path="/api/x", expect="api"),
    Case("exact-excludes-query", "Envoy path: must match :path once the query is removed",
         one_host(route(path("/search"), "s")), path="/search?q=1", expect="s"),
    Case("exact-excludes-fragment", "Envoy removeQueryAndFragment: `#...` is not the path",
         one_host(route(path("/search"), "s")), path="/search#top", expect="s"),
    Case("exact-is-exact", "Envoy path: `/a` is not `/a/`",
         one_host(route(path("/a"), "a")), path="/a/", expect=None),
    Case("regex-full-match", "Envoy safe_regex: the entire path must match",
         one_host(route(regex("/v[0-9]+"), "v")), path="/v12", expect="v"),
    Case("regex-not-a-subsequence", "Envoy safe_regex: a matching subsequence is not enough",
         one_host(route(regex("/v[0-9]+"), "v")), path="/v12/x", expect=None),
    Case("regex-excludes-query", "Envoy safe_regex: matched once the query string is removed",
         one_host(route(regex("/v[0-9]+"), "v")), path="/v1?x=2", expect="v"),
    Case("prefix-ignore-case", "Envoy case_sensitive=false applies to prefix",
         one_host(route(prefix("/API", case=False), "api")), path="/api/x", expect="api"),
    Case("case-sensitive-by-default", "Envoy: case_sensitive defaults to true",
         one_host(route(prefix("/API"), "api")), path="/api", expect=None),
    Case("exact-ignore-case", "Envoy case_sensitive=false applies to path",
         one_host(route(path("/Login", case=False), "l")), path="/LOGIN", expect="l"),
    Case("case-flag-not-for-regex", "Envoy: case_sensitive never applies to safe_regex",
         one_host(route(regex("/abc", case=False), "r")), path="/ABC", expect=None),
    Case("first-match-wins", "Envoy: routes are tried in order, the first match wins",
         one_host(route(prefix("/"), "root"), route(prefix("/api"), "api")),
         path="/api/x", expect="root"),
    Case("order-matters", "Envoy: the first match wins, so put specific routes first",
         one_host(route(prefix("/api"), "api"), route(prefix("/"), "root")),
         path="/api/x", expect="api"),
    Case("empty-prefix-matches-all", "Envoy: an empty prefix matches every path",
         one_host(route(prefix(""), "all")), path="/anything", expect="all"),
    Case("query-looks-like-a-path", "Envoy: the query is not part of the matched path",
         one_host(route(prefix("/a/b"), "ab"), route(prefix("/"), "root")),
         path="/a?/b", expect="root"),
]

HEADER_CASES = [
    Case("header-exact", "Envoy StringMatcher exact", gate(header("x-env", sm(S.EXACT, "prod"))),
         headers=XENV, expect="hit"),
    Case("header-mismatch-falls-through", "Envoy: all headers must match, else the next route",
         gate(header("x-env", sm(S.EXACT, "dev"))), headers=XENV, expect="miss"),
    Case("header-name-case-insensitive", "HTTP header names are case-insensitive",
         gate(header("x-env", sm(S.EXACT, "prod"))), headers=(("X-Env", "prod"),), expect="hit"),
    Case("header-prefix", "Envoy StringMatcher prefix",
         gate(header("x-env", sm(S.PREFIX, "pr"))), headers=XENV, expect="hit"),
    Case("header-suffix", "Envoy StringMatcher suffix",
         gate(header("x-env", sm(S.SUFFIX, "od"))), headers=XENV, expect="hit"),
    Case("header-contains", "Envoy StringMatcher contains",
         gate(header("x-env", sm(S.CONTAINS, "ro"))), headers=XENV, expect="hit"),
    Case("header-regex-full", "Envoy StringMatcher safe_regex: full match",
         gate(header("x-env", sm(S.REGEX, "p.*d"))), headers=XENV, expect="hit"),
    Case("header-regex-partial", "Envoy StringMatcher safe_regex: a partial match fails",
         gate(header("x-env", sm(S.REGEX, "ro"))), headers=XENV, expect="miss"),
    Case("header-ignore-case", "Envoy StringMatcher ignore_case",
         gate(header("x-env", sm(S.EXACT, "PROD", ignore_case=True))), headers=XENV,
         expect="hit"),
    Case("header-case-matters", "Envoy StringMatcher is case-sensitive by default",
         gate(header("x-env", sm(S.EXACT, "PROD"))), headers=XENV, expect="miss"),
    Case("present-true-present", "Envoy present_match true: the header is in the request",
         gate(header("x-env", present=True)), headers=XENV, expect="hit"),
    Case("present-true-absent", "Envoy present_match true: an absent header fails",
         gate(header("x-env", present=True)), expect="miss"),
    Case("present-false-absent", "Envoy present_match false: matches when the header is absent",
         gate(header("x-env", present=False)), expect="hit"),
    Case("present-false-present", "Envoy present_match false: fails when the header is there",
         gate(header("x-env", present=False)), headers=XENV, expect="miss"),
    Case("present-inverted-absent", "Envoy HeaderUtility: invert + present_match on absence",
         gate(header("x-env", present=True, invert=True)), expect="hit"),
    Case("no-specifier-is-present", "Envoy: no specifier defaults to present_match",
         gate(header("x-env")), headers=XENV, expect="hit"),
    Case("invert-value", "Envoy invert_match: the regex result is inverted",
         gate(header("x-env", sm(S.EXACT, "dev"), invert=True)), headers=XENV, expect="hit"),
    Case("invert-absent-no-match", "Envoy: an absent header is ignored, even inverted",
         gate(header("x-env", sm(S.EXACT, "dev"), invert=True)), expect="miss"),
    Case("missing-as-empty-inverted-range",
         "Envoy treat_missing_header_as_empty example header1: empty not in range, inverted",
         gate(header("x-n", range=(0, 10), invert=True, missing_as_empty=True)), expect="hit"),
    Case("missing-as-empty-regex", "Envoy treat_missing_header_as_empty example header3: `^$`",
         gate(header("x-n", sm(S.REGEX, "^$"), missing_as_empty=True)), expect="hit"),
    Case("missing-not-empty-regex", "Envoy treat_missing_header_as_empty example header4",
         gate(header("x-n", sm(S.REGEX, "^$"))), expect="miss"),
    Case("range-inside", "Envoy range_match: [start, end)",
         gate(header("x-n", range=(0, 10))), headers=(("x-n", "5"),), expect="hit"),
    Case("range-start-inclusive", "Envoy range_match: start inclusive",
         gate(header("x-n", range=(0, 10))), headers=(("x-n", "0"),), expect="hit"),
    Case("range-end-exclusive", "Envoy range_match: end exclusive",
         gate(header("x-n", range=(0, 10))), headers=(("x-n", "10"),), expect="miss"),
    Case("range-negative", "Envoy range_match doc: [-10,0) matches -1",
         gate(header("x-n", range=(-10, 0))), headers=(("x-n", "-1"),), expect="hit"),
    Case("range-float", "Envoy range_match doc: 10.9 is not an integer",
         gate(header("x-n", range=(0, 100))), headers=(("x-n", "10.9"),), expect="miss"),
    Case("range-trailing-junk", "Envoy range_match doc: `-1somestring` does not match",
         gate(header("x-n", range=(-10, 0))), headers=(("x-n", "-1somestring"),),
         expect="miss"),
    Case("range-plus-sign", "Envoy range_match doc: an optional plus or minus sign",
         gate(header("x-n", range=(0, 10))), headers=(("x-n", "+3"),), expect="hit"),
    Case("all-headers-must-match", "Envoy: a match needs every header matcher",
         gate(header("x-env", sm(S.EXACT, "prod")), header("x-b", present=True)),
         headers=XENV, expect="miss"),
    Case("method-pseudo-header", "Envoy: route on method with the `:method` header",
         gate(header(":method", sm(S.EXACT, "POST"))), method="POST", expect="hit"),
    Case("method-pseudo-header-miss", "Envoy: `:method` GET is not POST",
         gate(header(":method", sm(S.EXACT, "POST"))), expect="miss"),
    Case("authority-pseudo-header", "Envoy: match the Host as `:authority`, port included",
         gate(header(":authority", sm(S.EXACT, "svc:8080"))), authority="svc:8080",
         expect="hit"),
    Case("path-pseudo-header", "Envoy: `:path` carries the query",
         gate(header(":path", sm(S.SUFFIX, "?debug=1"))), path="/x?debug=1", expect="hit"),
    Case("scheme-pseudo-header", "Envoy: `:scheme`",
         gate(header(":scheme", sm(S.EXACT, "https"))), scheme="https", expect="hit"),
    Case("host-reads-authority", "Envoy 1.40: a `host` matcher sees `:authority` as sent",
         gate(header("host", sm(S.EXACT, "svc:8080"))), authority="svc:8080", expect="hit"),
    Case("host-case-as-sent", "Envoy 1.40: the authority is matched as sent, not lower-cased",
         gate(header("host", sm(S.EXACT, "svc"))), authority="SVC", expect="miss"),
    Case("repeated-header-any-value", "Envoy 1.40: a repeated header matches if any value does",
         gate(header("x-tag", sm(S.EXACT, "b"))), headers=(("x-tag", "a"), ("x-tag", "b")),
         expect="hit"),
    Case("repeated-header-not-joined", "Envoy 1.40: the joined `a,b` is never matched",
         gate(header("x-tag", sm(S.CONTAINS, "a,b"))), headers=(("x-tag", "a"), ("x-tag", "b")),
         expect="miss"),
    Case("repeated-header-inverted", "Envoy 1.40: invert_match negates 'any value matches'",
         gate(header("x-tag", sm(S.EXACT, "b"), invert=True)),
         headers=(("x-tag", "a"), ("x-tag", "b")), expect="miss"),
    Case("repeated-header-range", "Envoy 1.40: a range on a repeated header, value by value",
         gate(header("x-n", range=(2, 3))), headers=(("x-n", "1"), ("x-n", "2")), expect="hit"),
    Case("comma-in-one-value", "one header whose value holds a comma is one value",
         gate(header("x-tag", sm(S.EXACT, "a,b"))), headers=(("x-tag", "a,b"),), expect="hit"),
]

QUERY_CASES = [
    Case("query-exact", "Envoy QueryParameterMatcher string_match",
         qgate(qp("v", sm(S.EXACT, "2"))), path="/p?v=2", expect="hit"),
    Case("query-first-value", "Envoy: the first value of a repeated parameter is matched",
         qgate(qp("v", sm(S.EXACT, "2"))), path="/p?v=1&v=2", expect="miss"),
    Case("query-present", "Envoy present_match: the parameter exists, with or without value",
         qgate(qp("debug")), path="/p?debug", expect="hit"),
    Case("query-missing", "Envoy: a missing parameter does not match",
         qgate(qp("debug")), path="/p?other=1", expect="miss"),
    Case("query-no-query", "Envoy: no query string, no parameter",
         qgate(qp("debug")), path="/p", expect="miss"),
    Case("query-raw-percent", "Envoy 1.40 compares raw values: `%20` is not decoded",
         qgate(qp("q", sm(S.EXACT, "a b"))), path="/p?q=a%20b", expect="miss"),
    Case("query-raw-plus", "Envoy 1.40 compares raw values: `+` stays `+`",
         qgate(qp("q", sm(S.EXACT, "a+b"))), path="/p?q=a+b", expect="hit"),
    Case("query-raw-name", "Envoy 1.40: names are not decoded either",
         qgate(qp("flag")), path="/p?%66lag=1", expect="miss"),
    Case("query-value-keeps-equals", "Envoy: the value runs from the first `=`",
         qgate(qp("x", sm(S.EXACT, "a=b"))), path="/p?x=a=b", expect="hit"),
    Case("query-empty-pieces", "Envoy: `&&` makes an empty piece, skipped",
         qgate(qp("x")), path="/p?a=1&&x=2", expect="hit"),
    Case("query-absent", "Envoy 1.40 present_match false: the parameter is absent",
         qgate(qp("debug", present=False)), path="/p?other=1", expect="hit"),
    Case("query-absent-but-there", "Envoy 1.40 present_match false: fails when it is there",
         qgate(qp("debug", present=False)), path="/p?debug", expect="miss"),
    Case("query-regex", "Envoy StringMatcher safe_regex over the parameter value",
         qgate(qp("id", sm(S.REGEX, "[0-9]+"))), path="/p?id=123", expect="hit"),
    Case("query-regex-full", "Envoy safe_regex: full match of the value",
         qgate(qp("id", sm(S.REGEX, "[0-9]+"))), path="/p?id=123x", expect="miss"),
    Case("query-ignore-case", "Envoy StringMatcher ignore_case on a parameter",
         qgate(qp("env", sm(S.EXACT, "PROD", ignore_case=True))), path="/p?env=prod",
         expect="hit"),
    Case("query-inside-fragment", "a `?` after `#` belongs to the fragment, not a query",
         qgate(qp("v")), path="/p#x?v=1", expect="miss"),
]

RUNTIME_CASES = [
    Case("fraction-below", "Envoy runtime_fraction: matches when random < numerator",
         fgate(30), rand=0.29, expect="hit"),
    Case("fraction-at-threshold", "Envoy: `random % denominator < numerator` is strict",
         fgate(30), rand=0.30, expect="miss"),
    Case("fraction-ten-thousand", "Envoy FractionalPercent TEN_THOUSAND",
         fgate(25, 10_000), rand=0.0024, expect="hit"),
    Case("fraction-million", "Envoy FractionalPercent MILLION",
         fgate(25, 1_000_000), rand=0.000026, expect="miss"),
    Case("fraction-zero", "Envoy: numerator 0 never matches",
         fgate(0), rand=0.0, expect="miss"),
    Case("fraction-full", "Envoy: 100% always matches",
         fgate(100), rand=0.99, expect="hit"),
    Case("fraction-shared-draw", "Envoy #11560: one random value per request for every route",
         one_host(
             route(prefix("/", fraction=FractionalPercent(5)), "first"),
             route(prefix("/", fraction=FractionalPercent(5)), "second"),
             route(prefix("/"), "rest"),
         ), rand=0.07, expect="rest"),
    Case("fraction-cumulative", "Envoy #11560: cascade 5% then 10% to split 5/5/90",
         one_host(
             route(prefix("/", fraction=FractionalPercent(5)), "first"),
             route(prefix("/", fraction=FractionalPercent(10)), "second"),
             route(prefix("/"), "rest"),
         ), rand=0.07, expect="second"),
]

ACTION_CASES = [
    Case("weighted-first", "Envoy weighted_clusters: cluster i takes weight_i / total",
         one_host(route(prefix("/"), "w", weights=(("a", 80), ("b", 20)))), rand=0.79,
         expect="w", cluster="a"),
    Case("weighted-second", "Envoy weighted_clusters: [80, 100) goes to the second cluster",
         one_host(route(prefix("/"), "w", weights=(("a", 80), ("b", 20)))), rand=0.80,
         expect="w", cluster="b"),
    Case("weight-zero-never-picked", "Envoy: a weight of 0 takes no traffic",
         one_host(route(prefix("/"), "w", weights=(("a", 0), ("b", 10)))), rand=0.0,
         expect="w", cluster="b"),
    Case("cluster-header", "Envoy cluster_header: the header's value names the cluster",
         one_host(route(prefix("/"), "h", cluster_header="x-cluster")),
         headers=(("x-cluster", "canary"),), expect="h", cluster="canary"),
    Case("direct-response", "Envoy direct_response: answered locally, no cluster",
         one_host(route(prefix("/"), "d", direct=404)), expect="d", cluster=None),
    Case("non-forwarding", "Envoy non_forwarding_action (server side): no cluster",
         one_host(route(prefix("/"), "n", forwarding=False)), expect="n", cluster=None),
    Case("host-rewrite", "Envoy host_rewrite_literal replaces the Host",
         one_host(route(prefix("/"), "r", host="backend.internal")), expect="r",
         host="backend.internal"),
]

REWRITE_CASES = [
    Case("prefix-rewrite-keeps-query", "Envoy prefix_rewrite: the matched prefix is replaced",
         one_host(route(prefix("/api/"), "r", prefix_rewrite="/v2/")), path="/api/x?y=1",
         expect="r", forward="/v2/x?y=1"),
    Case("prefix-rewrite-slash-trap", "Envoy docs: `/prefix` rewritten to `/` gives `//etc`",
         one_host(route(prefix("/prefix"), "r", prefix_rewrite="/")), path="/prefix/etc",
         expect="r", forward="//etc"),
    Case("path-rewrite", "Envoy prefix_rewrite on a path route replaces the whole path",
         one_host(route(path("/old"), "r", prefix_rewrite="/new")), path="/old?x=1",
         expect="r", forward="/new?x=1"),
    Case("ignore-case-prefix-rewrite", "Envoy: the request's own prefix characters go",
         one_host(route(prefix("/API", case=False), "r", prefix_rewrite="/v1")),
         path="/api/x", expect="r", forward="/v1/x"),
    Case("separated-prefix-rewrite", "Envoy prefix_rewrite with path_separated_prefix",
         one_host(route(sep("/api"), "r", prefix_rewrite="/internal")), path="/api/x?q",
         expect="r", forward="/internal/x?q"),
    Case("regex-route-prefix-rewrite", "Envoy: a safe_regex route's matched path is all of it",
         one_host(route(regex("/v[0-9]+/.*"), "r", prefix_rewrite="/latest")),
         path="/v3/items?page=2", expect="r", forward="/latest?page=2"),
    Case("regex-rewrite-groups", "Envoy regex_rewrite doc example: `\\2/instance/\\1`",
         one_host(route(prefix("/service"), "r",
                        regex_rewrite=("^/service/([^/]+)(/.*)$", "\\2/instance/\\1"))),
         path="/service/foo/v1/api?x=1", expect="r", forward="/v1/api/instance/foo?x=1"),
    Case("regex-rewrite-global", "Envoy regex_rewrite doc example: every match is replaced",
         one_host(route(prefix("/"), "r", regex_rewrite=("one", "two"))),
         path="/xxx/one/yyy/one/zzz", expect="r", forward="/xxx/two/yyy/two/zzz"),
    Case("regex-rewrite-whole-match", "RE2 rewrite: `\\0` is the whole match",
         one_host(route(prefix("/"), "r", regex_rewrite=("[0-9]+", "<\\0>"))),
         path="/a/42", expect="r", forward="/a/<42>"),
    Case("regex-rewrite-empty-matches", "Envoy 1.40 (RE2 GlobalReplace): no empty match "
         "right after a match", one_host(route(prefix("/"), "r", regex_rewrite=("x*", "-"))),
         path="/axxb", expect="r", forward="-/-a-b-"),
    Case("regex-rewrite-not-query", "Envoy regex_rewrite: matched against the path only",
         one_host(route(prefix("/"), "r", regex_rewrite=("a", "b"))), path="/a?a=a",
         expect="r", forward="/b?a=a"),
]

# fmt: on

CASES = (
    DOMAIN_CASES
    + PATH_CASES
    + HEADER_CASES
    + QUERY_CASES
    + RUNTIME_CASES
    + ACTION_CASES
    + REWRITE_CASES
)


def test_the_table_is_large_and_its_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 60


def send(router: Router, case: Case) -> RouteResult:
    return router.route(
        case.authority,
        case.path,
        headers(list(case.headers)),
        fixed(case.rand),
        method=case.method,
        scheme=case.scheme,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_conformance(case: Case) -> None:
    router = Router.build(case.config)
    if case.expect is None:
        with pytest.raises(NoRoute):
            send(router, case)
        return
    result = send(router, case)
    assert result.route.name == case.expect, case.envoy
    assert result.cluster == (case.expect if case.cluster == SAME else case.cluster), case.envoy
    assert result.path == (case.path if case.forward is None else case.forward), case.envoy
    assert result.host == case.host, case.envoy
    assert result.route in result.virtual_host.routes
