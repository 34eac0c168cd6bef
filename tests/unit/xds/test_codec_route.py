"""RouteConfiguration decoding: virtual hosts, matches, actions, and every NACK's field path."""

from __future__ import annotations

from typing import Any

import pytest

from sail.errors import ResourceError
from sail.model import (
    ClusterWeight,
    DirectResponse,
    FractionalPercent,
    HashPolicy,
    HeaderMatcher,
    Int64Range,
    PathMatch,
    PathMatchKind,
    QueryParameterMatcher,
    ResetHeader,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    StringMatcher,
    StringMatchKind,
)
from sail.xds.codec import decode_route_configuration, parse_resource


def config(*routes: dict[str, Any], **vhost: Any) -> dict[str, Any]:
    host = {"name": "vh", "domains": ["reviews", "reviews:9080"], "routes": list(routes)}
    host.update(vhost)
    return {"name": "reviews-routes", "virtual_hosts": [host]}


def route(match: dict[str, Any] | None = None, **action: Any) -> dict[str, Any]:
    return {"match": match or {"prefix": "/"}, **(action or {"route": {"cluster": "c"}})}


def decode(data: dict[str, Any]) -> RouteConfig:
    return decode_route_configuration(parse_resource("RouteConfiguration", data))


def nack(data: dict[str, Any]) -> str:
    with pytest.raises(ResourceError) as info:
        decode(data)
    assert info.value.type_name == "RouteConfiguration"
    assert info.value.name == data.get("name", "")
    return info.value.reason


def action(**fields: Any) -> RouteAction:
    result = decode(config(route(route=fields))).virtual_hosts[0].routes[0].action
    assert isinstance(result, RouteAction)
    return result


def first_match(match: dict[str, Any]) -> Any:
    return decode(config(route(match))).virtual_hosts[0].routes[0].match


# -- valid resources --------------------------------------------------------------------


def test_a_typical_route_configuration() -> None:
    rc = decode(
        config(
            route(
                {"path": "/health"},
                direct_response={"status": 200, "body": {"inline_string": "ok"}},
            ),
            route(
                {"prefix": "/api", "headers": [{"name": "X-Canary", "exact_match": "1"}]},
                route={
                    "weighted_clusters": {
                        "clusters": [
                            {"name": "v1", "weight": 90},
                            {"name": "v2", "weight": 10},
                        ]
                    },
                    "timeout": "3s",
                    "retry_policy": {"retry_on": "5xx, reset", "num_retries": 2},
                },
            ),
            route(route={"cluster": "reviews"}, name="default"),
        )
    )
    assert rc.name == "reviews-routes"
    vh = rc.virtual_hosts[0]
    assert vh.domains == ("reviews", "reviews:9080")
    health, api, default = vh.routes
    assert health.action == DirectResponse(200, b"ok")
    assert health.match.path == PathMatch(PathMatchKind.EXACT, "/health")
    assert api.match.headers == (
        HeaderMatcher("x-canary", StringMatcher(StringMatchKind.EXACT, "1")),
    )
    assert isinstance(api.action, RouteAction)
    assert api.action.weighted_clusters == (ClusterWeight("v1", 90), ClusterWeight("v2", 10))
    assert api.action.timeout == 3.0
    assert api.action.retry_policy == RetryPolicy(frozenset({"5xx", "reset"}), num_retries=2)
    assert default.name == "default"
    assert rc.cluster_names() == frozenset({"v1", "v2", "reviews"})


def test_regex_path_is_compiled() -> None:
    match = first_match({"safe_regex": {"regex": "/v[12]/.*"}})
    assert match.path.kind is PathMatchKind.REGEX
    assert match.path.regex is not None
    assert match.path.regex.matches("/v2/items")


def test_path_separated_prefix() -> None:
    assert first_match({"path_separated_prefix": "/api"}).path == PathMatch(
        PathMatchKind.PATH_SEPARATED_PREFIX, "/api"
    )


def test_path_separated_prefix_must_not_end_with_a_slash() -> None:
    assert nack(config(route({"path_separated_prefix": "/api/"}))) == (
        "virtual_hosts[0].routes[0].match.path_separated_prefix: '/api/': must not be empty, "
        "end with '/' or contain '?' or '#'"
    )


@pytest.mark.parametrize(("value", "expected"), [(None, True), (True, True), (False, False)])
def test_case_sensitive_defaults_to_true(value: bool | None, expected: bool) -> None:
    match: dict[str, Any] = {"prefix": "/"}
    if value is not None:
        match["case_sensitive"] = value
    assert first_match(match).case_sensitive is expected


@pytest.mark.parametrize(
    ("field", "kind"),
    [
        ("exact_match", StringMatchKind.EXACT),
        ("prefix_match", StringMatchKind.PREFIX),
        ("suffix_match", StringMatchKind.SUFFIX),
        ("contains_match", StringMatchKind.CONTAINS),
    ],
)
def test_legacy_header_match_fields_become_string_match(field: str, kind: StringMatchKind) -> None:
    match = first_match({"prefix": "/", "headers": [{"name": "x-user", field: "bob"}]})
    assert match.headers == (HeaderMatcher("x-user", StringMatcher(kind, "bob")),)


def test_legacy_safe_regex_match_header_is_compiled() -> None:
    header = {"name": "x-user", "safe_regex_match": {"regex": "b.b"}}
    (matcher,) = first_match({"prefix": "/", "headers": [header]}).headers
    assert matcher.string_match == StringMatcher(StringMatchKind.REGEX, "b.b")
    assert matcher.string_match.regex is not None
    assert matcher.string_match.regex.matches("bob")


def test_header_string_match_range_present_and_flags() -> None:
    headers = [
        {"name": "x-a", "string_match": {"prefix": "v", "ignore_case": True}},
        {"name": "x-b", "range_match": {"start": "1", "end": "10"}, "invert_match": True},
        {"name": "x-c", "present_match": False},
        {"name": "x-d"},
        {"name": "x-e", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
    ]
    a, b, c, d, e = first_match({"prefix": "/", "headers": headers}).headers
    assert a == HeaderMatcher("x-a", StringMatcher(StringMatchKind.PREFIX, "v", ignore_case=True))
    assert b == HeaderMatcher("x-b", range=Int64Range(1, 10), invert=True)
    assert c == HeaderMatcher("x-c", present=False)
    assert d == HeaderMatcher("x-d", present=True)
    assert e.treat_missing_as_empty
    assert e.string_match == StringMatcher(StringMatchKind.EXACT, "")


def test_ignore_case_is_dropped_for_regex_string_match() -> None:
    header = {"name": "x", "string_match": {"safe_regex": {"regex": "a+"}, "ignore_case": True}}
    (matcher,) = first_match({"prefix": "/", "headers": [header]}).headers
    assert matcher.string_match == StringMatcher(StringMatchKind.REGEX, "a+")


def test_query_parameters() -> None:
    params = [
        {"name": "debug", "present_match": True},
        {"name": "user", "string_match": {"suffix": "@example.com"}},
        {"name": "trace", "present_match": False},
        {"name": "bare"},
    ]
    assert first_match({"prefix": "/", "query_parameters": params}).query_params == (
        QueryParameterMatcher("debug", present=True),
        QueryParameterMatcher("user", StringMatcher(StringMatchKind.SUFFIX, "@example.com")),
        QueryParameterMatcher("trace", present=False),
        QueryParameterMatcher("bare"),
    )


def test_legacy_empty_exact_match_is_presence() -> None:
    (matcher,) = first_match({"prefix": "/", "headers": [{"name": "x", "exact_match": ""}]}).headers
    assert matcher.present is True and matcher.string_match is None


@pytest.mark.parametrize(
    ("denominator", "value"), [("HUNDRED", 100), ("TEN_THOUSAND", 10_000), ("MILLION", 1_000_000)]
)
def test_runtime_fraction(denominator: str, value: int) -> None:
    fraction = {"default_value": {"numerator": 5, "denominator": denominator}}
    match = first_match({"prefix": "/", "runtime_fraction": fraction})
    assert match.runtime_fraction == FractionalPercent(5, value)


def test_action_fields() -> None:
    a = action(
        cluster="c",
        prefix_rewrite="/v2/",
        host_rewrite_literal="reviews.internal",
        max_stream_duration={"max_stream_duration": "30s"},
        hash_policy=[
            {"header": {"header_name": "X-User"}},
            {"cookie": {"name": "session"}, "terminal": True},
            {"connection_properties": {"source_ip": True}},
            {"query_parameter": {"name": "id"}},
            {"filter_state": {"key": "io.grpc.channel_id"}},
        ],
    )
    assert a.cluster == "c"
    assert a.prefix_rewrite == "/v2/"
    assert a.host_rewrite_literal == "reviews.internal"
    assert a.max_stream_duration == 30.0
    assert a.timeout is None
    assert a.hash_policies == (
        HashPolicy("header", "x-user"),
        HashPolicy("cookie", "session", terminal=True),
        HashPolicy("connection_properties"),
        HashPolicy("query_parameter", "id"),
    )


def test_zero_timeout_is_kept_as_disabled() -> None:
    assert action(cluster="c", timeout="0s").timeout == 0.0


def test_auto_host_rewrite_and_cluster_header() -> None:
    a = action(cluster_header="X-Target", auto_host_rewrite=True)
    assert a.cluster_header == "x-target"
    assert a.auto_host_rewrite
    assert a.cluster_names() == ()


def test_regex_rewrite() -> None:
    a = action(
        cluster="c",
        regex_rewrite={"pattern": {"regex": "^/v1/(.*)$"}, "substitution": "/v2/\\1"},
    )
    assert a.regex_rewrite is not None
    assert a.regex_rewrite.source == "^/v1/(.*)$"
    assert a.regex_rewrite.substitution == "/v2/\\1"


def test_retry_policy_defaults_and_backoff() -> None:
    retry = action(
        cluster="c",
        retry_policy={
            "retry_on": "unavailable",
            "per_try_timeout": "0.5s",
            "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
            "retriable_status_codes": [503, 504],
        },
    ).retry_policy
    assert retry == RetryPolicy(
        retry_on=frozenset({"unavailable"}),
        num_retries=1,
        per_try_timeout=0.5,
        base_interval=0.1,
        max_interval=1.0,
        retriable_status_codes=frozenset({503, 504}),
    )


def test_full_retry_policy_hedging_and_priority() -> None:
    a = action(
        cluster="c",
        priority="HIGH",
        hedge_policy={"hedge_on_per_try_timeout": True},
        retry_policy={
            "retry_on": "retriable-headers,5xx",
            "retriable_headers": [{"name": "x-retry", "string_match": {"exact": "yes"}}],
            "rate_limited_retry_back_off": {
                "reset_headers": [{"name": "Retry-After"},
                                  {"name": "x-ratelimit-reset", "format": "UNIX_TIMESTAMP"}],
                "max_interval": "60s",
            },
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                 "previous_hosts.v3.PreviousHostsPredicate"},
            }],
            "host_selection_retry_max_attempts": 3,
        },
    )
    assert a.priority == 1 and a.hedge_on_per_try_timeout is True
    retry = a.retry_policy
    assert retry is not None and retry.previous_hosts
    assert retry.host_selection_retry_max_attempts == 3
    assert retry.reset_headers == (
        ResetHeader("retry-after"), ResetHeader("x-ratelimit-reset", "unix_timestamp")
    )
    assert retry.rate_limited_max_interval == 60.0
    assert [m.name for m in retry.retriable_headers] == ["x-retry"]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("retry_priority", {"name": "x"}, "retry_priority: is not supported"),
        ("retriable_request_headers", [{"name": "x"}],
         "retriable_request_headers: is not supported"),
        ("retry_host_predicate", [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}],
         "retry_host_predicate[0].typed_config: retry host predicate "
         "'envoy.retry_host_predicates.omit_canary_hosts' is not supported (only previous_hosts)"),
    ],
)
def test_unsupported_retry_fields_are_nacked(field: str, value: Any, error: str) -> None:
    r = route()
    r["route"]["retry_policy"] = {"retry_on": "5xx", field: value}
    assert nack(config(r)) == f"virtual_hosts[0].routes[0].route.retry_policy.{error}"


def test_virtual_host_retry_policy() -> None:
    rc = decode(config(route(), retry_policy={"retry_on": "5xx", "num_retries": 3}))
    assert rc.virtual_hosts[0].retry_policy == RetryPolicy(frozenset({"5xx"}), 3)


def test_non_forwarding_action_has_no_action() -> None:
    rc = decode(config(route(non_forwarding_action={})))
    assert rc.virtual_hosts[0].routes[0].action is None


def test_weighted_clusters_drop_zero_weights() -> None:
    clusters = [{"name": "a", "weight": 0}, {"name": "b", "weight": 1}]
    assert action(weighted_clusters={"clusters": clusters}).weighted_clusters == (
        ClusterWeight("b", 1),
    )


# -- NACKs ------------------------------------------------------------------------------


def test_bad_regex_names_the_field() -> None:
    routes = [route() for _ in range(3)] + [route({"safe_regex": {"regex": "ab(c"}})]
    assert nack(config(*routes)) == (
        "virtual_hosts[0].routes[3].match.safe_regex.regex: does not compile (RE2): "
        "missing ): ab(c"
    )


def test_bad_header_regex_names_the_field() -> None:
    headers = [{"name": "x", "string_match": {"safe_regex": {"regex": "[a-"}}}]
    assert nack(config(route({"prefix": "/", "headers": headers}))) == (
        "virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex: "
        "does not compile (RE2): missing ]: [a-"
    )


def test_weighted_clusters_total_weight_mismatch() -> None:
    wc = {
        "clusters": [{"name": "a", "weight": 60}, {"name": "b", "weight": 30}],
        "total_weight": 100,
    }
    assert nack(config(route(route={"weighted_clusters": wc}))) == (
        "virtual_hosts[0].routes[0].route.weighted_clusters.total_weight: is 100 but the "
        "cluster weights sum to 90"
    )


def test_weighted_clusters_need_a_positive_total() -> None:
    wc = {"clusters": [{"name": "a", "weight": 0}]}
    assert nack(config(route(route={"weighted_clusters": wc}))) == (
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the weights must sum "
        "to more than 0"
    )


def test_redirect_is_rejected() -> None:
    assert nack(config(route(redirect={"path_redirect": "/new"}))) == (
        "virtual_hosts[0].routes[0].redirect: redirect is not supported"
    )


def test_cluster_specifier_plugin_is_rejected() -> None:
    assert nack(config(route(route={"cluster_specifier_plugin": "rls"}))) == (
        "virtual_hosts[0].routes[0].route.cluster_specifier_plugin: cluster specifier "
        "plugins are not supported"
    )


def test_route_without_path_specifier_is_rejected() -> None:
    assert nack(config(route({"headers": [{"name": "x"}]}))) == (
        "virtual_hosts[0].routes[0].match: a path specifier is required "
        "(prefix, path, safe_regex or path_separated_prefix)"
    )


def test_connect_matcher_is_rejected() -> None:
    assert nack(config(route({"connect_matcher": {}}))) == (
        "virtual_hosts[0].routes[0].match.connect_matcher: is not supported"
    )


def test_route_without_action_is_rejected() -> None:
    assert nack(config({"match": {"prefix": "/"}})) == (
        "virtual_hosts[0].routes[0]: an action is required "
        "(route, direct_response or non_forwarding_action)"
    )


@pytest.mark.parametrize("domain", ["a*b.com", "*.a.*", "**", "a.*.com"])
def test_bad_domain_wildcard(domain: str) -> None:
    assert nack(config(route(), domains=["ok", domain])) == (
        f"virtual_hosts[0].domains[1]: invalid domain {domain!r}: at most one '*', "
        "and only at the start or the end"
    )


def test_virtual_host_needs_domains() -> None:
    assert nack(config(route(), domains=[])) == (
        "virtual_hosts[0].domains: at least one domain is required"
    )


def test_duplicate_domain_across_virtual_hosts() -> None:
    data = config(route())
    data["virtual_hosts"].append({"name": "other", "domains": ["x", "Reviews"]})
    assert nack(data) == (
        "virtual_hosts[1].domains[1]: duplicate domain 'Reviews' (also in virtual_hosts[0])"
    )


def test_backoff_max_below_base_is_rejected() -> None:
    retry = {"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}
    assert nack(config(route(route={"cluster": "c", "retry_policy": retry}))) == (
        "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.max_interval: "
        "must not be less than base_interval"
    )


def test_prefix_and_regex_rewrite_together_are_rejected() -> None:
    a = {
        "cluster": "c",
        "prefix_rewrite": "/x",
        "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"},
    }
    assert nack(config(route(route=a))) == (
        "virtual_hosts[0].routes[0].route.regex_rewrite: cannot be combined with prefix_rewrite"
    )


def test_regex_rewrite_substitution_must_name_existing_groups() -> None:
    a = {"cluster": "c", "regex_rewrite": {"pattern": {"regex": "(a)"}, "substitution": "\\2"}}
    assert nack(config(route(route=a))) == (
        "virtual_hosts[0].routes[0].route.regex_rewrite.substitution: \\2 refers to a group "
        "the pattern does not have (it has 1)"
    )


def test_direct_response_status_range() -> None:
    assert nack(config(route(direct_response={"status": 99}))) == (
        "virtual_hosts[0].routes[0].direct_response.status: 99 is not in [200, 600)"
    )


def test_route_configuration_needs_a_name() -> None:
    assert nack({"virtual_hosts": []}) == "name: must not be empty"


def test_negative_duration_is_rejected() -> None:
    assert nack(config(route(route={"cluster": "c", "timeout": "-1s"}))) == (
        "virtual_hosts[0].routes[0].route.timeout: invalid duration -1s 0ns"
    )


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"cluster": "c", "prefix_rewrite": "/a\r\nx-evil: 1"}, "prefix_rewrite"),
        ({"cluster": "c", "host_rewrite_literal": "a\nb"}, "host_rewrite_literal"),
        ({"cluster_header": "x\u0000"}, "cluster_header"),
    ],
)
def test_header_injection_is_rejected(fields: dict[str, Any], where: str) -> None:
    reason = nack(config(route(route=fields)))
    assert reason.startswith(f"virtual_hosts[0].routes[0].route.{where}: ")
    assert reason.endswith("contains NUL, CR or LF")
