"""Header mutations, sail against a real Envoy: one route configuration with request and
response header mutations at all four levels (route configuration, virtual host, route,
weighted cluster entry), in both orders (`most_specific_header_mutations_wins` false and
true). Envoy forwards to an echo server; sail's compiled `HeaderMutation` for the same
config, applied to the same headers, must give the same values header by header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sail.routing import Router
from sail.xds.codec import decode_route_configuration, parse_resource
from tests.e2e.envoy import Envoy, start_envoy
from tests.e2e.test_registry_envoy_fault import Echo

pytestmark = pytest.mark.e2e

UPSTREAM_RESPONSE = (("x-t-r", "upstream"), ("x-t-s", "upstream"), ("x-t-gone", "upstream"))


def option(name: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD", **kw: Any) -> Any:
    return {"header": {"key": name, "value": value}, "append_action": action, **kw}


SET = "OVERWRITE_IF_EXISTS_OR_ADD"


def level(tag: str) -> dict[str, Any]:
    """The same mutations at every level, tagged, so the winner of each header shows."""
    return {
        "request_headers_to_add": [
            option("x-t-a", tag, SET),
            option("x-t-b", tag),
            option("x-t-c", tag, "ADD_IF_ABSENT"),
            option("x-t-d", tag, "OVERWRITE_IF_EXISTS"),
            option("x-t-empty", ""),
            option("x-t-kept", "", keep_empty_value=True),
            option("x-t-pct", f"100%% {tag}", SET),
        ],
        "response_headers_to_add": [
            option("x-t-r", tag, SET),
            option("x-t-s", tag),
            option("x-t-new", tag, "ADD_IF_ABSENT"),
        ],
    }


def route_config(wins: bool) -> dict[str, Any]:
    config = level("config")
    config["request_headers_to_remove"] = ["x-t-vhost-only"]
    vhost = level("vhost")
    vhost["request_headers_to_add"].append(option("x-t-vhost-only", "vhost"))
    route = level("route")
    route["request_headers_to_remove"] = ["x-t-drop"]
    route["response_headers_to_remove"] = ["x-t-gone"]
    cluster = level("cluster")
    return {
        "name": "parity",
        "most_specific_header_mutations_wins": wins,
        **config,
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                **vhost,
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        **route,
                        "route": {
                            "weighted_clusters": {
                                "clusters": [{"name": "echo", "weight": 1, **cluster}]
                            }
                        },
                    }
                ],
            }
        ],
    }


REQUESTS = [
    [],
    [("x-t-a", "caller"), ("x-t-c", "caller"), ("x-t-d", "caller"), ("x-t-drop", "1")],
    [("x-t-b", "caller"), ("x-t-b", "again"), ("x-t-vhost-only", "caller")],
]


def by_name(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        if name.lower().startswith("x-t-"):
            out.setdefault(name.lower(), []).append(value)
    return out


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    server = Echo("echo", UPSTREAM_RESPONSE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=[False, True], ids=["default", "most-specific-wins"])
def case(
    request: pytest.FixtureRequest, echo: Echo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[bool, Envoy]]:
    wins: bool = request.param
    workdir: Path = tmp_path_factory.mktemp("envoy-headers")
    envoy = start_envoy(workdir, route_config(wins), {"echo": [("127.0.0.1", echo.port)]})
    try:
        yield wins, envoy
    finally:
        envoy.stop()


@pytest.mark.parametrize("sent", REQUESTS, ids=["none", "some", "repeated"])
def test_sail_mutates_headers_as_envoy(
    case: tuple[bool, Envoy], sent: list[tuple[str, str]]
) -> None:
    wins, envoy = case
    config = decode_route_configuration(parse_resource("RouteConfiguration", route_config(wins)))
    mutation = Router.build(config).route("svc", "/", httpx.Headers()).policy.headers
    assert mutation is not None
    with httpx.Client(timeout=5.0) as client:
        response = client.get(f"{envoy.url}/", headers=httpx.Headers(sent))
    assert response.status_code == 200, (response.text, envoy.log_tail())
    upstream = [tuple(pair) for pair in response.json()["header_list"]]
    assert by_name(mutation.apply_request(sent)) == by_name(upstream)  # type: ignore[arg-type]
    received = [
        (name, value)
        for name in {n for n, _ in response.headers.multi_items()}
        for value in response.headers.get_list(name)
    ]
    assert by_name(mutation.apply_response(list(UPSTREAM_RESPONSE))) == by_name(received)
