"""Request hashing (Envoy's RouteAction.hash_policy) and its config codec."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sail.balancing.hashing import (
    NO_HASH,
    RequestHash,
    cookie_value,
    request_hash,
    set_cookie_header,
    xxh64,
)
from sail.errors import ResourceError
from sail.model import HashPolicy, RouteAction, RouteConfig
from sail.xds.codec import decode_route_configuration, parse_resource
from sail.xds.codec.encode_route import encode_route_configuration

U64 = (1 << 64) - 1


def rotl(h: int) -> int:
    return ((h << 1) | (h >> 63)) & U64


def header(name: str, terminal: bool = False) -> HashPolicy:
    return HashPolicy("header", name, terminal)


# --- the hash function ------------------------------------------------------------------------


def test_xxh64_matches_envoy() -> None:
    # test/common/common/hash_test.cc
    assert xxh64("foo") == 3728699739546630719
    assert xxh64("bar") == 5234164152756840025
    assert xxh64("foo\nbar") == 8917841378505826757
    assert xxh64("lyft") == 4400747396090729504
    assert xxh64("") == 17241709254077376921
    # HashUtil::xxHash64 over {"foo", "bar"}: each value seeded with the hash so far
    assert xxh64("bar", xxh64("foo")) == 17745830980996999794


# --- header -----------------------------------------------------------------------------------


def test_header_hash_is_the_xxhash_of_its_value() -> None:
    result = request_hash([header("x-user")], httpx.Headers({"x-user": "alice"}), "/")
    assert result == RequestHash(xxh64("alice"))


def test_header_absent_gives_no_hash() -> None:
    assert request_hash([header("x-user")], httpx.Headers(), "/") is NO_HASH
    assert request_hash([header("x-user")], {}, "/").value is None


def test_repeated_header_values_hash_sorted_whatever_their_order() -> None:
    one = httpx.Headers([("x-user", "foo"), ("x-user", "bar")])
    two = httpx.Headers([("x-user", "bar"), ("x-user", "foo")])
    expected = xxh64("foo", xxh64("bar"))
    assert request_hash([header("x-user")], one, "/").value == expected
    assert request_hash([header("x-user")], two, "/").value == expected


def test_a_plain_dict_of_headers_works() -> None:
    assert request_hash([header("x-user")], {"x-user": "alice"}, "/").value == xxh64("alice")


def test_pseudo_headers() -> None:
    h = httpx.Headers({"host": "reviews:9080"})
    assert request_hash([header(":path")], h, "/a?b=1").value == xxh64("/a?b=1")
    assert request_hash([header(":authority")], h, "/").value == xxh64("reviews:9080")
    assert request_hash([header(":authority")], h, "/", authority="r").value == xxh64("r")
    assert request_hash([header(":method")], h, "/", method="GET").value == xxh64("GET")
    assert request_hash([header(":method")], h, "/").value is None


# --- cookie -----------------------------------------------------------------------------------


def test_cookie_hash_is_the_xxhash_of_its_value() -> None:
    h = httpx.Headers({"cookie": 'a=1; session="abc"; b=2'})
    assert request_hash([HashPolicy("cookie", "session")], h, "/") == RequestHash(xxh64("abc"))


def test_cookie_parsing_follows_envoy() -> None:
    h = httpx.Headers([("cookie", "x=1;  session=first"), ("cookie", "session=second")])
    assert cookie_value(h, "session") == "first"  # leading spaces dropped, first one wins
    assert cookie_value(httpx.Headers({"cookie": "session"}), "session") == ""  # no '='
    assert cookie_value(httpx.Headers({"cookie": 'session="'}), "session") == '"'
    assert cookie_value({"cookie": "sessions=1"}, "session") == ""


def test_absent_cookie_without_ttl_gives_no_hash() -> None:
    assert request_hash([HashPolicy("cookie", "session")], httpx.Headers(), "/") is NO_HASH


def test_absent_cookie_with_ttl_is_generated_and_set_on_the_response() -> None:
    policy = HashPolicy(
        "cookie",
        "session",
        ttl=3600.0,
        path="/cart",
        attributes=(("SameSite", "Strict"), ("Secure", "")),
    )
    seed = "10.0.0.1:51234" + "10.0.0.2:8080"  # Envoy: remote + local address
    result = request_hash([policy], httpx.Headers(), "/", cookie_seed=seed)
    value = f"{xxh64(seed):016x}"
    assert result.value == xxh64(value)
    assert result.set_cookies == (
        f'session="{value}"; Max-Age=3600; Path=/cart; SameSite=Strict; Secure; HttpOnly',
    )
    # The next request carries it: same hash, nothing more to set.
    again = request_hash([policy], httpx.Headers({"cookie": f'session="{value}"'}), "/")
    assert again == RequestHash(result.value)


def test_generated_cookies_without_a_seed_are_random_and_zero_ttl_is_a_session_cookie() -> None:
    policy = HashPolicy("cookie", "s", ttl=0.0)
    a = request_hash([policy], httpx.Headers(), "/")
    b = request_hash([policy], httpx.Headers(), "/")
    assert a.value != b.value
    assert a.set_cookies[0].endswith("; HttpOnly") and "Max-Age" not in a.set_cookies[0]


def test_set_cookie_header_format() -> None:
    assert set_cookie_header("k", "v") == 'k="v"; HttpOnly'
    assert set_cookie_header("k", "v", "/p", 10) == 'k="v"; Max-Age=10; Path=/p; HttpOnly'


# --- source ip, query parameter ----------------------------------------------------------------


def test_source_ip() -> None:
    policy = HashPolicy("connection_properties")
    assert request_hash([policy], {}, "/", "10.1.2.3").value == xxh64("10.1.2.3")
    assert request_hash([policy], {}, "/", "::1").value == xxh64("::1")
    assert request_hash([policy], {}, "/") is NO_HASH


@pytest.mark.parametrize(
    ("target", "value"),
    [
        ("/cart?user=7", "7"),
        ("/cart?a=1&user=7&user=8", "7"),  # the first value
        ("/cart?user=a%20b+c", "a%20b+c"),  # raw, not decoded
        ("/cart?user", ""),
        ("/cart?user=", ""),
        ("/cart?users=7", None),
        ("/cart", None),
    ],
)
def test_query_parameter(target: str, value: str | None) -> None:
    result = request_hash([HashPolicy("query_parameter", "user")], {}, target)
    assert result.value == (None if value is None else xxh64(value))


# --- several policies ------------------------------------------------------------------------


def test_policies_combine_by_rotate_and_xor() -> None:
    h = {"x-a": "1", "x-b": "2"}
    result = request_hash([header("x-a"), header("x-b")], h, "/")
    assert result.value == rotl(xxh64("1")) ^ xxh64("2")
    # The same policy twice does not cancel out.
    twice = request_hash([header("x-a"), header("x-a")], h, "/").value
    assert twice == rotl(xxh64("1")) ^ xxh64("1") != 0


def test_a_policy_without_a_hash_is_skipped() -> None:
    result = request_hash([header("x-missing"), header("x-b")], {"x-b": "2"}, "/")
    assert result.value == xxh64("2")


def test_terminal_stops_once_a_hash_exists() -> None:
    h = {"x-a": "1", "x-b": "2"}
    assert request_hash([header("x-a", terminal=True), header("x-b")], h, "/").value == xxh64("1")
    # A terminal policy that produced nothing, with nothing before it, does not stop the walk.
    later = request_hash([header("x-none", terminal=True), header("x-b")], h, "/")
    assert later.value == xxh64("2")
    # A terminal policy that produced nothing stops it when an earlier one did.
    early = request_hash([header("x-a"), header("x-none", terminal=True), header("x-b")], h, "/")
    assert early.value == xxh64("1")


def test_header_then_source_ip() -> None:
    policies = [header("x-user"), HashPolicy("connection_properties")]
    result = request_hash(policies, {"x-user": "u"}, "/", "10.0.0.1")
    assert result.value == rotl(xxh64("u")) ^ xxh64("10.0.0.1")


# --- the route config codec ---------------------------------------------------------------


def route_config(*hash_policy: dict[str, Any]) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c", "hash_policy": list(hash_policy)}}
    return {"name": "r", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [route]}]}


def decode(data: dict[str, Any]) -> RouteConfig:
    return decode_route_configuration(parse_resource("RouteConfiguration", data))


def policies_of(config: RouteConfig) -> tuple[HashPolicy, ...]:
    action = config.virtual_hosts[0].routes[0].action
    assert isinstance(action, RouteAction)
    return action.hash_policies


def test_cookie_ttl_path_and_attributes_decode_and_round_trip() -> None:
    config = decode(
        route_config(
            {
                "cookie": {
                    "name": "session",
                    "ttl": "3600s",
                    "path": "/cart",
                    "attributes": [{"name": "SameSite", "value": "Lax"}],
                }
            },
            {"cookie": {"name": "plain"}, "terminal": True},
            {"header": {"header_name": "X-User"}},
        )
    )
    assert policies_of(config) == (
        HashPolicy(
            "cookie", "session", ttl=3600.0, path="/cart", attributes=(("SameSite", "Lax"),)
        ),
        HashPolicy("cookie", "plain", terminal=True),
        HashPolicy("header", "x-user"),
    )
    again = decode_route_configuration(encode_route_configuration(config))
    assert policies_of(again) == policies_of(config)


@pytest.mark.parametrize(
    ("cookie", "reason"),
    [
        (
            {"name": "s", "attributes": [{"name": ""}]},
            "cookie.attributes[0].name: must not be empty",
        ),
        ({"name": "s", "path": "/a\nb"}, "cookie.path: '/a\\nb' contains NUL, CR or LF"),
        ({"name": ""}, "cookie.name: must not be empty"),
    ],
)
def test_bad_cookie_policies_are_rejected_naming_the_field(
    cookie: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ResourceError) as info:
        decode(route_config({"cookie": cookie}))
    assert info.value.reason.endswith("route.hash_policy[0]." + reason)
