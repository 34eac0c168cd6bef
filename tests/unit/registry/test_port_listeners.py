"""Envoy's default port listeners: one per service port on loopback, routes named by port
(Istio's outbound shape), served to wildcard LDS subscribers only."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sail.cli import main as cli
from sail.model import HealthStatus
from sail.registration import Workload
from sail.registry.translate import HTTP_FILTERS, port_listeners, translate
from sail.xds.codec.decode_listener import decode_listener
from sail.xds.codec.decode_route import decode_route_configuration
from sail.xds.codec.encode import encode_listener, encode_route_configuration
from sail.xds.codec.types import unpack
from sail.xds.resolver import LDS, RDS
from tests.unit.registry.test_registry_server import Running, on_loop, run

HEALTHY = HealthStatus.HEALTHY
WORKLOADS = [
    (Workload("reviews", "10.0.0.1", 8001, service_port=9080), HEALTHY),
    (Workload("ratings", "10.0.0.2", 8002, service_port=9080), HEALTHY),
    (Workload("details", "10.0.0.3", 8003, service_port=9081), HEALTHY),
    (Workload("details", "10.0.0.4", 8004, service_port=9082), HEALTHY),
]


def test_one_listener_per_port_and_one_virtual_host_per_service() -> None:
    resources = translate([], WORKLOADS)
    listeners, routes = port_listeners(resources.route_configs)
    assert [(x.name, x.address, x.hcm.rds_name) for x in listeners] == [
        ("127.0.0.1_9080", ("127.0.0.1", 9080), "9080"),
        ("127.0.0.1_9081", ("127.0.0.1", 9081), "9081"),
        ("127.0.0.1_9082", ("127.0.0.1", 9082), "9082"),
    ]
    assert all(x.hcm.http_filters == HTTP_FILTERS for x in listeners)
    assert [r.name for r in routes] == ["9080", "9081", "9082"]
    by_name = {r.name: r for r in routes}
    shared = by_name["9080"].virtual_hosts
    assert [v.name for v in shared] == ["ratings:9080", "reviews:9080"]
    assert shared[1].domains == (
        "reviews", "reviews:9080",
        "reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local:9080",
    )  # the service's own domains, less `*`: here Host chooses
    own = {c.name: c for c in resources.route_configs}
    assert shared[1].routes == own["reviews:9080"].virtual_hosts[0].routes
    # one service on two ports: each port's listener has that port's routes
    assert [v.name for v in by_name["9081"].virtual_hosts] == ["details:9081"]
    assert [v.name for v in by_name["9082"].virtual_hosts] == ["details:9082"]
    assert "details:9082" in by_name["9082"].virtual_hosts[0].domains


def test_they_encode_and_decode() -> None:
    listeners, routes = port_listeners(translate([], WORKLOADS).route_configs)
    for listener in listeners:
        assert decode_listener(encode_listener(listener)).address == listener.address
    for config in routes:
        assert decode_route_configuration(encode_route_configuration(config)) == config


def test_a_domain_two_services_claim_on_one_port_stays_with_the_first() -> None:
    # Envoy compares domains case-blind and NACKs a route configuration claiming one twice.
    twins = [(Workload(name, "10.0.0.9", 8009, service_port=9080), HEALTHY)
             for name in ("Reviews", "reviews")]
    _, routes = port_listeners(translate([], [*WORKLOADS, *twins]).route_configs)
    hosts = {v.name: v.domains for v in routes[0].virtual_hosts}
    assert hosts["Reviews:9080"][:2] == ("Reviews", "Reviews:9080")
    assert "reviews:9080" not in hosts  # every domain it has is the first one's
    domains = [d.lower() for v in routes[0].virtual_hosts for d in v.domains]
    assert len(domains) == len(set(domains))


def test_a_custom_bind_address() -> None:
    listeners, _ = port_listeners(translate([], WORKLOADS[:1]).route_configs, "::1")
    assert [(x.name, x.address) for x in listeners] == [("::1_9080", ("::1", 9080))]


# -- served by the registry ------------------------------------------------------------------


def answer(address: str, type_url: str, names: list[str]) -> Any:
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, node={"id": "probe"}
        )
        done.wait(15)

    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        try:
            return next(iter(stub.StreamAggregatedResources(requests(), timeout=5)))
        finally:
            done.set()


def listener_names(address: str, names: list[str]) -> list[str]:
    return sorted(decode_listener(unpack(a)[1]).name for a in answer(address, LDS, names).resources)


@pytest.fixture(params=[{}, {"envoy_listeners": False}, {"envoy_listener": ("127.0.0.1", 15001)}],
                ids=["default", "off", "custom"])
def registry(request: pytest.FixtureRequest) -> Iterator[tuple[Running, dict[str, Any]]]:
    r = Running(registration_grace=0, **request.param)
    for workload, health in WORKLOADS:
        on_loop(lambda w=workload, h=health: r.registry.store.put_workload(w, h, 30))
    try:
        yield r, request.param
    finally:
        run(r.registry.stop(0))


def test_wildcard_lds_gets_the_port_listeners(registry: tuple[Running, dict[str, Any]]) -> None:
    running, options = registry
    api = ["details", "details:9081", "details:9082", "ratings", "ratings:9080",
           "reviews", "reviews:9080"]
    wildcard = listener_names(running.address, [])
    if options == {}:
        assert wildcard == sorted([*api, "127.0.0.1_9080", "127.0.0.1_9081", "127.0.0.1_9082"])
    elif "envoy_listener" in options:
        assert wildcard == sorted([*api, "sail_outbound_15001"])  # as before: one, by Host
    else:
        assert wildcard == api


def test_clients_asking_by_name_get_only_what_they_ask(
    registry: tuple[Running, dict[str, Any]],
) -> None:
    running, _ = registry
    assert listener_names(running.address, ["reviews:9080", "ratings"]) == [
        "ratings", "reviews:9080"
    ]


def test_the_port_route_configuration_is_served_by_name() -> None:
    r = Running(registration_grace=0)
    try:
        for workload, health in WORKLOADS:
            on_loop(lambda w=workload, h=health: r.registry.store.put_workload(w, h, 30))
        response = answer(r.address, RDS, ["9080"])
        (config,) = (decode_route_configuration(unpack(a)[1]) for a in response.resources)
        assert [v.name for v in config.virtual_hosts] == ["ratings:9080", "reviews:9080"]
    finally:
        run(r.registry.stop(0))


def test_cli_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(cli, "_run_registry", lambda args: seen.append(args) or 0)
    assert cli.main(["registry"]) == 0
    assert (seen[-1].envoy_listener, seen[-1].no_envoy_listeners) == (None, False)
    assert cli.main(["registry", "--no-envoy-listeners"]) == 0
    assert seen[-1].no_envoy_listeners is True
    assert cli.main(["registry", "--envoy-listener", "127.0.0.1:15001"]) == 0
    assert seen[-1].envoy_listener == ("127.0.0.1", 15001)
    with pytest.raises(SystemExit):  # one or the other
        cli.main(["registry", "--no-envoy-listeners", "--envoy-listener", "127.0.0.1:1"])
