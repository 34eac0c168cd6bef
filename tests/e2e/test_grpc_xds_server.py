"""xDS-enabled gRPC servers (gRFC A36): `mesh.grpc_server(..., xds=True)` and its aio twin
serve only as their Listener says, against a real ADS server on loopback.

Each test runs against both servers (`Running` drives either from the test's thread).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import sail
from sail import testing
from sail.grpc.xds_server import ServingState
from sail.xds.resolver import LDS
from tests.e2e.test_grpc_server import NOT_SERVING, SERVICE, SERVING, Running
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

TEMPLATE = "test/server/%s"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


@pytest.fixture
def xds() -> Iterator[testing.XdsServer]:
    with testing.XdsServer() as server:
        yield server


@pytest.fixture
def mesh(xds: testing.XdsServer) -> Iterator[sail.Mesh]:
    boot = xds.bootstrap(server_listener_resource_name_template=TEMPLATE)
    with sail.Mesh.from_bootstrap(boot, registrar=sail.InProcessRegistrar()) as mesh:
        yield mesh


@pytest.fixture(params=["sync", "aio"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def listener(running: Running, **options: Any) -> dict[str, Any]:
    port = running.server.port
    return testing.server_listener("127.0.0.1", port, name=f"test/server/127.0.0.1:{port}",
                                   **options)


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def unavailable(running: Running, **kwargs: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        running.call("Context", timeout=5, **kwargs)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
    return str(info.value.details())


def test_listens_only_once_its_listener_arrives_then_follows_it(
    kind: str, mesh: sail.Mesh, xds: testing.XdsServer
) -> None:
    states: list[ServingState] = []
    running = Running(kind, mesh, xds=True, on_serving=states.append)
    try:
        port = running.server.port
        running.start()
        # registered (so that a registry can make its Listener), but not listening yet
        assert [w.port for w, _ in mesh.registrar.workloads.values()] == [port]  # type: ignore[attr-defined]
        wait_until(lambda: running.server.serving_state.reason.startswith("Listener")
                   or "waiting" in running.server.serving_state.reason)
        assert not running.server.serving
        assert refuses_connections(port)

        xds.put(listener(running))
        wait_until(lambda: running.server.serving)
        assert running.call("Context", timeout=5)["ctx"]["path"] == f"/{SERVICE}/Context"
        assert running.health() == SERVING
        assert states[-1] == ServingState(True, "", states[-1].router)

        # the Listener goes: still listening (grpcio cannot unlisten), but not serving
        xds.remove(LDS, f"test/server/127.0.0.1:{port}")
        wait_until(lambda: not running.server.serving)
        assert "does not exist" in unavailable(running)
        wait_until(lambda: running.health() == NOT_SERVING)
        assert "does not exist" in states[-1].reason

        xds.put(listener(running))  # and comes back
        wait_until(lambda: running.server.serving)
        assert running.call("Context", timeout=5)["ctx"] is not None
        wait_until(lambda: running.health() == SERVING)
    finally:
        running.close()


def test_calls_follow_the_listener_routes(
    kind: str, mesh: sail.Mesh, xds: testing.XdsServer
) -> None:
    running = Running(kind, mesh, xds=True)
    try:
        running.start()
        routes = [
            # a forwarding route is not for a server: calls it matches fail
            {"name": "denied", "match": {"prefix": "/", "headers": [
                {"name": "x-deny", "exact_match": "1"}]}, "route": {"cluster": "elsewhere"}},
            {"name": "served", "match": {"prefix": f"/{SERVICE}/Context"},
             "non_forwarding_action": {}},
        ]
        xds.put(listener(running, routes=routes))
        wait_until(lambda: running.server.serving)
        assert running.call("Context", timeout=5)["ctx"] is not None
        assert "'denied' is not a non-forwarding route" in unavailable(
            running, metadata=(("x-deny", "1"),)
        )
        with pytest.raises(grpc.RpcError) as info:  # no route matches this method
            running.channel.unary_unary(f"/{SERVICE}/Stream")(b"", timeout=5).__next__()
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no route" in str(info.value.details())
        # routes from RDS: served once they arrive
        xds.put(listener(running, rds="inbound-routes"))
        wait_until(lambda: "have not arrived" in outcome(running))
        xds.put(testing.route_config("inbound-routes", [
            {"match": {"prefix": "/"}, "non_forwarding_action": {}}]))
        wait_until(lambda: outcome(running) == "ok")
    finally:
        running.close()


def outcome(running: Running) -> str:
    """"ok", or the details of the error a call got."""
    try:
        running.call("Context", timeout=5)
    except grpc.RpcError as exc:
        return str(exc.details())
    return "ok"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"address": "127.0.0.2"}, "is for 127.0.0.2"),
        ({"filter": RBAC}, "is not supported on servers"),
    ],
)
def test_a_listener_it_cannot_honour_leaves_it_not_serving(
    kind: str, mesh: sail.Mesh, xds: testing.XdsServer, change: dict[str, str], reason: str
) -> None:
    running = Running(kind, mesh, xds=True)
    try:
        running.start()
        port = running.server.port
        name = f"test/server/127.0.0.1:{port}"
        filters = [{"name": "authz", "typed_config": {"@type": change["filter"]}}] \
            if "filter" in change else []
        address = change.get("address", "127.0.0.1")
        xds.put(testing.server_listener(address, port, name=name, http_filters=filters))
        wait_until(lambda: reason in running.server.serving_state.reason)
        assert not running.server.serving
        assert refuses_connections(port)
    finally:
        running.close()


def test_needs_the_bootstrap_template(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        with pytest.raises(sail.BootstrapError, match="server_listener_resource_name_template"):
            mesh.grpc_server("ratings", xds=True)


def chain(route_name: str, forwarding: bool, **match: Any) -> dict[str, Any]:
    """A filter chain whose one route (named `route_name`) serves every call, or forwards."""
    action = {"route": {"cluster": "elsewhere"}} if forwarding else {"non_forwarding_action": {}}
    out: dict[str, Any] = {"filters": [{
        "name": "hcm",
        "typed_config": {
            "@type": testing.HCM,
            "stat_prefix": "in",
            "http_filters": [{"name": "router", "typed_config": {"@type": testing.ROUTER}}],
            "route_config": {"virtual_hosts": [{
                "name": "in", "domains": ["*"],
                "routes": [{"name": route_name, "match": {"prefix": "/"}, **action}],
            }]},
        },
    }]}
    if match:
        out["filter_chain_match"] = match
    return out


def test_each_call_takes_the_filter_chain_of_its_connection(
    kind: str, mesh: sail.Mesh, xds: testing.XdsServer
) -> None:
    running = Running(kind, mesh, xds=True)
    try:
        running.start()
        base = listener(running)
        del base["filter_chains"]

        def serve(*chains: dict[str, Any], default: dict[str, Any] | None = None) -> None:
            resource = {**base, "filter_chains": list(chains)}
            if default is not None:
                resource["default_filter_chain"] = default
            xds.put(resource)

        # the connection comes from 127.0.0.1: not 10/8, so the default chain serves it
        serve(chain("ten", True, source_prefix_ranges=[{"address_prefix": "10.0.0.0",
                                                         "prefix_len": 8}]),
              default=chain("fallback", False))
        wait_until(lambda: outcome(running) == "ok")
        # a loopback chain is more specific than the default: its forwarding route refuses
        serve(chain("ten", True, source_prefix_ranges=[{"address_prefix": "10.0.0.0",
                                                         "prefix_len": 8}]),
              chain("loopback", True, source_type="SAME_IP_OR_LOOPBACK"),
              default=chain("fallback", False))
        wait_until(lambda: "'loopback' is not a non-forwarding route" in outcome(running))
        # a longer source prefix wins over a shorter one
        serve(chain("wide", True, source_prefix_ranges=[{"address_prefix": "127.0.0.0",
                                                          "prefix_len": 8}]),
              chain("narrow", False, source_prefix_ranges=[{"address_prefix": "127.0.0.1",
                                                             "prefix_len": 32}]))
        wait_until(lambda: outcome(running) == "ok")
        # nothing matches and no default: refused, naming why
        serve(chain("ten", False, source_prefix_ranges=[{"address_prefix": "10.0.0.0",
                                                          "prefix_len": 8}]),
              chain("tls", False, transport_protocol="tls"))
        wait_until(lambda: "no filter chain matches" in outcome(running))
    finally:
        running.close()


def test_a_port_it_cannot_open_yet_is_tried_again_and_stop_unsubscribes(
    kind: str, mesh: sail.Mesh, xds: testing.XdsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sail.grpc.server._LISTEN_RETRY", 0.1)
    running = Running(kind, mesh, xds=True)
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", running.server.port))  # someone else has the port
        squatter.listen()
        running.start()
        xds.put(listener(running))
        wait_until(lambda: running.server.serving_state.serving)  # the Listener says serve
        time.sleep(0.3)  # a few tries
        assert not running.server.serving  # but the port is taken
        squatter.close()
        wait_until(lambda: running.server.serving)  # taken at the next try
        assert outcome(running) == "ok"
        name = f"test/server/127.0.0.1:{running.server.port}"
        assert name in mesh._source.resolver.interest
        assert running.stop(None).wait(15)
        wait_until(lambda: name not in mesh._source.resolver.interest)  # no longer asked for
    finally:
        squatter.close()
        running.close()
