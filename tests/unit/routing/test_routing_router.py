"""Router behaviour beyond single cases: errors, randomness, laziness, the public surface."""

from __future__ import annotations

import random

import pytest

import sail.routing
import sail.routing.request
import sail.routing.router as router_module
from sail.errors import ConfigError, NoRoute, RequestError
from sail.model import FractionalPercent, StringMatchKind
from sail.routing import Router
from sail.routing.table import INDEX_MIN
from tests.unit.routing.routing_helpers import (
    by_domains,
    config,
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
    vhost,
)

NO_HEADERS = headers()


def test_public_names() -> None:
    assert sail.routing.__all__ == ["DomainIndex", "Headers", "RouteResult", "Router"]


def test_no_virtual_host_names_authority_path_and_config() -> None:
    router = Router.build(by_domains(("a", ("a.com",))))
    with pytest.raises(NoRoute) as err:
        router.route("b.com", "/x?y=1", NO_HEADERS)
    message = str(err.value)
    assert "'b.com'" in message
    assert "'/x?y=1'" in message
    assert "'rc'" in message
    assert isinstance(err.value, RequestError)


def test_no_route_names_authority_path_config_and_virtual_host() -> None:
    router = Router.build(config(vhost("reviews", ("reviews",), route(path("/a"), "a"))))
    with pytest.raises(NoRoute) as err:
        router.route("reviews", "/b", NO_HEADERS)
    message = str(err.value)
    for part in ("'reviews'", "'/b'", "'rc'", "virtual host 'reviews'"):
        assert part in message


@pytest.mark.parametrize("value", [None, ""])
def test_missing_cluster_header_is_no_route_naming_the_header(value: str | None) -> None:
    # Envoy answers an error status when the cluster_header is absent; sail raises NoRoute.
    router = Router.build(one_host(route(prefix("/"), "by-header", cluster_header="x-cluster")))
    request = headers({} if value is None else {"x-cluster": value})
    with pytest.raises(NoRoute, match="'x-cluster'") as err:
        router.route("svc", "/p", request)
    assert "'by-header'" in str(err.value)
    assert "'/p'" in str(err.value)


def test_cluster_header_may_be_a_pseudo_header() -> None:
    router = Router.build(one_host(route(prefix("/"), "h", cluster_header=":authority")))
    assert router.route("backend", "/", NO_HEADERS).cluster == "backend"


def test_weighted_split_proportions() -> None:
    router = Router.build(one_host(route(prefix("/"), "w", weights=(("a", 80), ("b", 20)))))
    rng = random.Random(7)
    picks = [router.route("svc", "/", NO_HEADERS, rng.random).cluster for _ in range(10_000)]
    assert abs(picks.count("a") / 10_000 - 0.80) < 0.01
    assert abs(picks.count("b") / 10_000 - 0.20) < 0.01


def test_weighted_split_three_ways_skips_zero() -> None:
    weights = (("a", 1), ("zero", 0), ("b", 2), ("c", 1))
    router = Router.build(one_host(route(prefix("/"), "w", weights=weights)))
    rng = random.Random(11)
    picks = [router.route("svc", "/", NO_HEADERS, rng.random).cluster for _ in range(8_000)]
    assert "zero" not in picks
    assert abs(picks.count("b") / 8_000 - 0.5) < 0.02


def test_a_rand_returning_one_stays_in_the_split() -> None:
    router = Router.build(one_host(route(prefix("/"), "w", weights=(("a", 1), ("b", 1)))))
    assert router.route("svc", "/", NO_HEADERS, fixed(1.0)).cluster == "b"


def test_runtime_fraction_proportion() -> None:
    fraction = FractionalPercent(2_500, 10_000)
    router = Router.build(
        one_host(route(prefix("/", fraction=fraction), "quarter"), route(prefix("/"), "rest"))
    )
    rng = random.Random(3)
    names = [router.route("svc", "/", NO_HEADERS, rng.random).route.name for _ in range(10_000)]
    assert abs(names.count("quarter") / 10_000 - 0.25) < 0.01


def test_rand_is_not_drawn_without_runtime_fraction_or_split() -> None:
    def forbidden() -> float:
        raise AssertionError("rand() drawn")

    router = Router.build(one_host(route(prefix("/"), "plain")))
    assert router.route("svc", "/", NO_HEADERS, forbidden).cluster == "plain"


def test_runtime_fraction_draws_once_per_request_and_the_split_once_more() -> None:
    draws: list[float] = []

    def rand() -> float:
        draws.append(0.5)
        return 0.5

    ten = FractionalPercent(10)
    router = Router.build(
        one_host(
            route(prefix("/", fraction=ten), "r1"),
            route(prefix("/", fraction=ten), "r2"),
            route(prefix("/", fraction=FractionalPercent(90)), "w", weights=(("a", 1), ("b", 1))),
        )
    )
    assert router.route("svc", "/", NO_HEADERS, rand).route.name == "w"
    assert len(draws) == 2  # one for every runtime_fraction, one for the weighted pick


def test_query_is_not_parsed_without_query_matchers(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(target: str, end: int) -> dict[str, str]:
        raise AssertionError("query parsed")

    monkeypatch.setattr(router_module, "parse_query", forbidden)
    router = Router.build(one_host(route(prefix("/"), "plain")))
    assert router.route("svc", "/p?a=1&b=2", NO_HEADERS).cluster == "plain"


def test_query_is_parsed_once_for_many_query_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = sail.routing.request.parse_query

    def counting(target: str, end: int) -> dict[str, str]:
        calls.append(target)
        return real(target, end)

    monkeypatch.setattr(router_module, "parse_query", counting)
    router = Router.build(
        one_host(
            route(prefix("/", query=(qp("a", sm(StringMatchKind.EXACT, "x")),)), "r1"),
            route(prefix("/", query=(qp("b"),)), "r2"),
        )
    )
    assert router.route("svc", "/p?a=1&b=2", NO_HEADERS).cluster == "r2"
    assert calls == ["/p?a=1&b=2"]


def test_unchanged_path_is_the_same_string() -> None:
    target = "/reviews/1?x=1"
    result = Router.build(one_host(route(prefix("/"), "r"))).route("svc", target, NO_HEADERS)
    assert result.path is target


def test_plain_dict_satisfies_headers() -> None:
    router = Router.build(
        one_host(route(prefix("/", headers=(header("x-a", present=True),)), "hit"))
    )
    plain: dict[str, str] = {"x-a": "1"}
    assert router.route("svc", "/", plain).cluster == "hit"


def test_config_is_kept() -> None:
    cfg = one_host(route(prefix("/"), "r"))
    assert Router.build(cfg).config is cfg


@pytest.mark.parametrize(
    ("bad_route", "reason"),
    [
        (route(prefix("/"), "w", weights=(("a", 0), ("b", 0))), "positive total"),
        (route(prefix("/"), "w", weights=(("a", -1), ("b", 2))), "positive total"),
        (route(prefix("/"), "both", prefix_rewrite="/x", regex_rewrite=("a", "b")), "both"),
        (route(prefix("/"), "sub", regex_rewrite=("(a)", "\\2")), "group 2"),
        (route(prefix("/"), "esc", regex_rewrite=("a", "\\n")), "invalid escape"),
        (route(prefix("/"), "lone", regex_rewrite=("a", "b\\")), "lone backslash"),
    ],
)
def test_build_refuses_what_envoy_refuses(bad_route: object, reason: str) -> None:
    cfg = config(vhost("vh", ("*",), route(prefix("/ok"), "ok"), bad_route))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=reason) as err:
        Router.build(cfg)
    assert "route 1" in str(err.value)
    assert "virtual host 'vh'" in str(err.value)


def test_build_refuses_an_action_without_cluster() -> None:
    from sail.model import Route, RouteAction

    cfg = one_host(Route(prefix("/"), RouteAction(), "empty"))
    with pytest.raises(ConfigError, match="no cluster"):
        Router.build(cfg)


def test_regex_without_compiled_pattern_is_compiled_at_build() -> None:
    from sail.model import PathMatch, PathMatchKind, Route, RouteAction, RouteMatch

    match = RouteMatch(PathMatch(PathMatchKind.REGEX, "/v[0-9]+"))
    router = Router.build(one_host(Route(match, RouteAction(cluster="v"), "v")))
    assert router.route("svc", "/v2", NO_HEADERS).cluster == "v"


def test_long_table_uses_the_index_and_keeps_order() -> None:
    routes = [route(prefix(f"/svc{i}/"), f"r{i}") for i in range(40)]
    routes.insert(10, route(regex("/svc3[0-9]/special"), "regex"))
    routes.insert(20, route(sep("/SVC25", case=False), "sep"))
    routes.append(route(prefix("/"), "root"))
    routes.insert(5, route(path("/svc30/x"), "exact"))
    router = Router.build(one_host(*routes))
    assert len(routes) >= INDEX_MIN

    def name(target: str) -> str:
        return router.route("svc", target, NO_HEADERS).route.name

    assert name("/svc25/x") == "sep"  # the case-insensitive route sits before r25
    assert name("/svc31/special") == "regex"
    assert name("/svc30/x?q=1") == "exact"
    assert name("/svc30/y") == "r30"
    assert name("/svc7/") == "r7"
    assert name("/nothing") == "root"


def test_headers_on_an_indexed_table_fall_through_in_order() -> None:
    gated = prefix("/a/", headers=(header("x-v", sm(StringMatchKind.EXACT, "2")),))
    routes = [route(prefix(f"/z{i}"), f"z{i}") for i in range(INDEX_MIN)]
    routes += [route(gated, "v2"), route(prefix("/a"), "a"), route(prefix("/"), "root")]
    router = Router.build(one_host(*routes))
    assert router.route("svc", "/a/x", headers({"x-v": "2"})).cluster == "v2"
    assert router.route("svc", "/a/x", NO_HEADERS).cluster == "a"


def test_regex_pattern_given_by_model_is_used_as_is() -> None:
    # The model carries the compiled pattern: flags set there are honoured.
    from sail.model import PathMatch, PathMatchKind, Route, RouteAction, RouteMatch
    from sail.model.regex import compile_regex

    pattern = compile_regex("(?i)/abc")
    match = RouteMatch(PathMatch(PathMatchKind.REGEX, "/abc", regex=pattern))
    router = Router.build(one_host(Route(match, RouteAction(cluster="r"), "r")))
    assert router.route("svc", "/ABC", NO_HEADERS).cluster == "r"
