"""Header mutations as the data plane applies them: one level's semantics (remove, then
overwrite, then append, each action's condition), the order of levels (weighted cluster,
route, virtual host, route configuration, or reversed with
`most_specific_header_mutations_wins`), and what `RouteResult.policy` carries."""

from __future__ import annotations

from typing import Any

import httpx

from sail.model import (
    ClusterWeight,
    DirectResponse,
    HeaderAppendAction,
    HeaderMutations,
    HeaderValueOption,
    PathMatch,
    PathMatchKind,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from sail.routing import Router
from sail.routing.headers import HeaderMutation, compile_header_mutation
from sail.routing.policy import EMPTY_POLICY

APPEND = HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
ADD_IF_ABSENT = HeaderAppendAction.ADD_IF_ABSENT
SET = HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
SET_IF_EXISTS = HeaderAppendAction.OVERWRITE_IF_EXISTS
EVERYTHING = RouteMatch(PathMatch(PathMatchKind.PREFIX, "/"))


def opt(
    name: str, value: str, action: HeaderAppendAction = APPEND, keep: bool = False
) -> HeaderValueOption:
    return HeaderValueOption(name, value, action, keep)


def request(*adds: HeaderValueOption, remove: tuple[str, ...] = ()) -> HeaderMutations:
    return HeaderMutations(request_headers_to_add=adds, request_headers_to_remove=remove)


def one(mutations: HeaderMutations) -> HeaderMutation:
    compiled = compile_header_mutation([mutations])
    assert compiled is not None
    return compiled


# -- one level --------------------------------------------------------------------------


def test_append_adds_a_line_whatever_is_there() -> None:
    m = one(request(opt("x-a", "2")))
    assert m.apply_request([("X-A", "1"), ("y", "0")]) == [("X-A", "1"), ("y", "0"), ("x-a", "2")]
    assert m.apply_request([]) == [("x-a", "2")]


def test_overwrite_replaces_every_value_whatever_the_case() -> None:
    m = one(request(opt("x-a", "new", SET)))
    assert m.apply_request([("X-A", "1"), ("b", "0"), ("x-a", "2")]) == [("b", "0"), ("x-a", "new")]
    assert m.apply_request([("b", "0")]) == [("b", "0"), ("x-a", "new")]


def test_add_if_absent_and_overwrite_if_exists() -> None:
    m = one(request(opt("x-a", "added", ADD_IF_ABSENT), opt("x-b", "set", SET_IF_EXISTS)))
    assert m.apply_request([]) == [("x-a", "added")]
    assert m.apply_request([("x-a", "1"), ("X-B", "2")]) == [("x-a", "1"), ("x-b", "set")]


def test_removals_come_first_and_conditions_see_the_headers_before_the_levels_adds() -> None:
    m = one(
        request(
            opt("x-a", "1", ADD_IF_ABSENT),
            opt("x-a", "2", ADD_IF_ABSENT),  # x-a was absent before this level: both added
            opt("x-new", "3", APPEND),
            opt("x-new", "4", SET_IF_EXISTS),  # x-new is not there yet: nothing
            opt("x-gone", "5", SET_IF_EXISTS),  # removed by this level first: nothing
            remove=("x-gone",),
        )
    )
    assert m.apply_request([("X-Gone", "0")]) == [("x-a", "1"), ("x-a", "2"), ("x-new", "3")]


def test_overwrites_before_appends_last_overwrite_wins() -> None:
    m = one(request(opt("x", "appended"), opt("x", "first", SET), opt("x", "second", SET)))
    assert m.apply_request([("x", "old")]) == [("x", "second"), ("x", "appended")]


def test_empty_values_add_nothing_unless_kept() -> None:
    m = one(request(opt("x-empty", ""), opt("x-kept", "", SET, keep=True)))
    assert m.apply_request([("x-empty", "1")]) == [("x-empty", "1"), ("x-kept", "")]


def test_response_side_and_input_left_alone() -> None:
    m = one(
        HeaderMutations(
            response_headers_to_add=(opt("x-served-by", "sail", SET),),
            response_headers_to_remove=("server",),
        )
    )
    assert m.request is False and m.response is True
    headers = [("Server", "uvicorn"), ("x-served-by", "app")]
    assert m.apply_response(headers) == [("x-served-by", "sail")]
    assert headers == [("Server", "uvicorn"), ("x-served-by", "app")]
    assert m.apply_request(headers) == headers


def test_nothing_to_do_compiles_to_none() -> None:
    assert compile_header_mutation([None, HeaderMutations(), None]) is None
    empty_value = request(opt("x", ""))
    assert compile_header_mutation([empty_value]) is None


# -- levels -----------------------------------------------------------------------------


def sets(value: str) -> HeaderMutations:
    return request(opt("x-level", value, SET))


def config_with(
    *,
    wins: bool = False,
    cluster: HeaderMutations | None = None,
    route: HeaderMutations | None = None,
    vhost: HeaderMutations | None = None,
    config: HeaderMutations | None = None,
) -> RouteConfig:
    action = RouteAction(
        weighted_clusters=(ClusterWeight("a", 1, header_mutations=cluster), ClusterWeight("b", 1))
    )
    return RouteConfig(
        "r",
        (
            VirtualHost(
                "vh",
                ("*",),
                (Route(EVERYTHING, action, header_mutations=route),),
                header_mutations=vhost,
            ),
        ),
        header_mutations=config,
        most_specific_header_mutations_wins=wins,
    )


def level_value(config: RouteConfig, rand: float = 0.1) -> list[tuple[str, str]]:
    result = Router.build(config).route("svc", "/", httpx.Headers(), lambda: rand)
    assert result.cluster == ("a" if rand < 0.5 else "b")
    mutation = result.policy.headers
    assert mutation is not None
    return mutation.apply_request([("x-level", "caller")])


def test_by_default_the_least_specific_wins() -> None:
    everything: dict[str, Any] = {
        "cluster": sets("cluster"),
        "route": sets("route"),
        "vhost": sets("vhost"),
        "config": sets("config"),
    }
    assert level_value(config_with(**everything)) == [("x-level", "config")]
    assert level_value(config_with(cluster=sets("c"), route=sets("r"), vhost=sets("v"))) == [
        ("x-level", "v")
    ]
    assert level_value(config_with(cluster=sets("c"), route=sets("r"))) == [("x-level", "r")]
    assert level_value(config_with(cluster=sets("c"))) == [("x-level", "c")]


def test_most_specific_wins_but_the_weighted_cluster_still_goes_first() -> None:
    everything: dict[str, Any] = {
        "cluster": sets("cluster"),
        "route": sets("route"),
        "vhost": sets("vhost"),
        "config": sets("config"),
    }
    assert level_value(config_with(wins=True, **everything)) == [("x-level", "route")]
    assert level_value(config_with(wins=True, vhost=sets("v"), config=sets("g"))) == [
        ("x-level", "v")
    ]
    # Envoy evaluates the weighted cluster entry's headers before every other level, so any
    # level that sets the header overrides it, in either mode.
    assert level_value(config_with(wins=True, cluster=sets("c"), config=sets("g"))) == [
        ("x-level", "g")
    ]


def test_a_later_level_removes_what_an_earlier_one_added() -> None:
    adds = request(opt("x-debug", "1"))
    removes = request(remove=("x-debug",))
    assert level_value(config_with(route=adds, config=removes)) == [("x-level", "caller")]
    # reversed order: the configuration removes first, the route then adds
    assert level_value(config_with(wins=True, route=adds, config=removes)) == [
        ("x-level", "caller"),
        ("x-debug", "1"),
    ]


def test_each_weighted_cluster_entry_has_its_own_mutation() -> None:
    config = config_with(cluster=request(opt("x-to", "a")), route=request(opt("x-route", "1")))
    router = Router.build(config)
    to_a = router.route("svc", "/", httpx.Headers(), lambda: 0.1).policy.headers
    to_b = router.route("svc", "/", httpx.Headers(), lambda: 0.9).policy.headers
    assert to_a is not None and to_b is not None
    assert to_a.apply_request([]) == [("x-to", "a"), ("x-route", "1")]
    assert to_b.apply_request([]) == [("x-route", "1")]


def test_policy_of_plain_and_direct_response_routes() -> None:
    plain = RouteConfig(
        "r",
        (
            VirtualHost(
                "vh",
                ("*",),
                (
                    Route(
                        RouteMatch(PathMatch(PathMatchKind.EXACT, "/direct")),
                        DirectResponse(200),
                        header_mutations=HeaderMutations(
                            response_headers_to_add=(opt("x-direct", "1"),)
                        ),
                    ),
                    Route(EVERYTHING, RouteAction(cluster="c")),
                ),
            ),
        ),
    )
    router = Router.build(plain)
    assert router.route("svc", "/x", httpx.Headers()).policy is EMPTY_POLICY
    direct = router.route("svc", "/direct", httpx.Headers())
    assert direct.cluster is None
    assert direct.policy.headers is not None
    assert direct.policy.headers.apply_response([]) == [("x-direct", "1")]
