"""Hypothesis properties of the router, and the index checked against a plain scan."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sail.errors import NoRoute
from sail.model import PathMatchKind, RouteMatch
from sail.routing import Router
from tests.unit.routing.routing_helpers import (
    by_domains,
    config,
    fixed,
    headers,
    match,
    one_host,
    prefix,
    route,
    vhost,
)

NO_HEADERS = headers()
LABEL = st.text("abc-", min_size=1, max_size=6)
HOST = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
TARGET = st.text("/abAB?#=&x", max_size=12).map(lambda s: "/" + s)


@given(host=HOST, other=HOST)
def test_exact_domain_beats_every_wildcard(host: str, other: str) -> None:
    # Every wildcard form that could also match `host` is configured, before the exact one.
    labels = host.split(".")
    wildcards = ["*", "*" + host[1:], labels[0] + "*", host[:-1] + "*", "*" + other]
    cfg = by_domains(("wild", tuple(wildcards)), ("exact", (host.upper(),)))
    result = Router.build(cfg).route(host, "/", NO_HEADERS)
    assert result.virtual_host.name == "exact"


@given(host=HOST, port=st.integers(0, 65535))
def test_port_fallback_finds_the_bare_host(host: str, port: int) -> None:
    result = Router.build(by_domains(("bare", (host,)))).route(f"{host}:{port}", "/", NO_HEADERS)
    assert result.virtual_host.name == "bare"


@given(target=TARGET)
def test_slash_prefix_matches_every_path(target: str) -> None:
    result = Router.build(one_host(route(prefix("/"), "root"))).route("svc", target, NO_HEADERS)
    assert result.cluster == "root"
    assert result.path == target


@given(rest=TARGET, query=st.text("ab=&%+", max_size=8))
def test_prefix_rewrite_keeps_the_query(rest: str, query: str) -> None:
    rest = rest.split("?", maxsplit=1)[0].split("#", maxsplit=1)[0]
    router = Router.build(one_host(route(prefix("/api"), "r", prefix_rewrite="/v2")))
    result = router.route("svc", f"/api{rest}?{query}", NO_HEADERS)
    assert result.path == f"/v2{rest}?{query}"


@given(weights=st.lists(st.integers(0, 5), min_size=2, max_size=6), u=st.floats(0, 1))
def test_weighted_pick_never_takes_a_zero_weight(weights: list[int], u: float) -> None:
    named = tuple((f"c{i}", w) for i, w in enumerate(weights))
    if sum(weights) == 0:
        return
    router = Router.build(one_host(route(prefix("/"), "w", weights=named)))
    cluster = router.route("svc", "/", NO_HEADERS, fixed(u)).cluster
    assert dict(named)[str(cluster)] > 0


# The index must never change the answer: compare with a literal reading of Envoy's rules.

KINDS = st.sampled_from(list(PathMatchKind))
VALUE = st.text("/abAB", min_size=0, max_size=4).map(lambda s: "/" + s)


def reference(m: RouteMatch, bare: str) -> bool:
    """Envoy's path rules, written as plainly as possible."""
    kind, value = m.path.kind, m.path.value
    if kind is PathMatchKind.REGEX:
        return re.fullmatch(value, bare) is not None
    subject, wanted = (bare, value) if m.case_sensitive else (bare.lower(), value.lower())
    if kind is PathMatchKind.PREFIX:
        return subject.startswith(wanted)
    if kind is PathMatchKind.EXACT:
        return subject == wanted
    return subject == wanted or subject.startswith(wanted + "/")


@st.composite
def route_matches(draw: st.DrawFn) -> RouteMatch:
    kind = draw(KINDS)
    value = draw(VALUE)
    if kind is PathMatchKind.REGEX:
        value = re.escape(value) + draw(st.sampled_from(["", ".*", "/?", "[ab]"]))
    return match(kind, value, case=draw(st.booleans()))


@settings(max_examples=300)
@given(matches=st.lists(route_matches(), min_size=1, max_size=24), target=TARGET)
def test_router_agrees_with_a_plain_scan(matches: list[RouteMatch], target: str) -> None:
    cfg = config(vhost("vh", ("*",), *(route(m, f"r{i}") for i, m in enumerate(matches))))
    bare = re.split("[?#]", target)[0]
    expected = next((f"r{i}" for i, m in enumerate(matches) if reference(m, bare)), None)
    try:
        got: str | None = Router.build(cfg).route("svc", target, NO_HEADERS).route.name
    except NoRoute:
        got = None
    assert got == expected
