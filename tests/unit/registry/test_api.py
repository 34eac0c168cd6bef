"""The registration/admin API over real gRPC on 127.0.0.1: leases, auth, validation, config."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sail.errors import ConfigError
from sail.model import HealthStatus, Locality
from sail.registration import Workload
from sail.registry.api import RegistryApi
from sail.registry.store import MemoryStore
from sail.registry.wire import workload_from_json, workload_to_json
from tests.unit.registry.test_api_harness import TOKEN, RegistryServer

pytestmark = pytest.mark.timeout(20)

BODY = {"service": "reviews", "address": "10.0.0.1", "port": 9080}


@pytest.fixture
def server() -> Iterator[RegistryServer]:
    srv = RegistryServer().start()
    try:
        yield srv
    finally:
        srv.close()


def rejected(server: RegistryServer, method: str, body: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        server.rpc(method, body, **kwargs)
    return info.value


# -- workloads and leases ---------------------------------------------------------------------


def test_register_stores_the_workload_with_every_field(server):
    reply = server.rpc(
        "Register",
        {
            **BODY,
            "labels": {"version": "v2"},
            "weight": 3,
            "ttl": 4.5,
            "locality": {"region": "eu", "zone": "eu-1", "sub_zone": "a"},
        },
    )
    assert reply["ttl"] == 4.5 and isinstance(reply["lease_id"], str)
    expected = Workload(
        "reviews", "10.0.0.1", 9080, {"version": "v2"}, Locality("eu", "eu-1", "a"), 3
    )
    assert server.call(server.store.workloads) == [(expected, HealthStatus.HEALTHY)]


def test_register_defaults_ttl_and_takes_an_initial_health(server):
    reply = server.rpc("Register", {**BODY, "health": "draining"})
    assert reply["ttl"] == 10.0
    [(_, health)] = server.call(server.store.workloads)
    assert health is HealthStatus.DRAINING


def test_heartbeat_keeps_the_lease_and_expiry_removes_a_dead_one(server):
    alive = server.rpc("Register", {**BODY, "ttl": 10})["lease_id"]
    server.rpc("Register", {**BODY, "port": 9081, "ttl": 10})  # never heartbeats: "killed"
    for _ in range(3):
        server.clock.advance(6)
        assert server.rpc("Heartbeat", {"lease_id": alive}) == {"ok": True}
    expired = server.call(server.store.expire)
    assert [w.port for w in expired] == [9081]
    assert [w.port for w, _ in server.call(server.store.workloads)] == [9080]


def test_heartbeat_on_an_unknown_or_expired_lease_is_not_found(server):
    lease = server.rpc("Register", {**BODY, "ttl": 1})["lease_id"]
    server.clock.advance(2)
    for lease_id in (lease, "never-issued"):
        err = rejected(server, "Heartbeat", {"lease_id": lease_id})
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert lease_id in err.details() and "register again" in err.details()


def test_drain_then_deregister(server):
    lease = server.rpc("Register", BODY)["lease_id"]
    assert server.rpc("SetHealth", {"lease_id": lease, "health": "DRAINING"}) == {"ok": True}
    [(_, health)] = server.call(server.store.workloads)
    assert health is HealthStatus.DRAINING
    assert server.rpc("Deregister", {"lease_id": lease}) == {"ok": True}
    assert server.call(server.store.workloads) == []
    err = rejected(server, "Deregister", {"lease_id": lease})
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_set_health_rejects_an_unknown_value_listing_the_valid_ones(server):
    lease = server.rpc("Register", BODY)["lease_id"]
    err = rejected(server, "SetHealth", {"lease_id": lease, "health": "SICK"})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(
        "SetHealth: 'health' must be one of UNKNOWN, HEALTHY, UNHEALTHY, DRAINING, TIMEOUT"
    )
    assert "'SICK'" in err.details()


def test_store_watchers_see_api_changes(server):
    changes: list[int] = []
    server.call(lambda: server.store.watch(lambda: changes.append(1)))
    lease = server.rpc("Register", BODY)["lease_id"]
    server.rpc("Heartbeat", {"lease_id": lease})
    server.rpc("SetHealth", {"lease_id": lease, "health": "DRAINING"})
    server.rpc("Deregister", {"lease_id": lease})
    server.rpc("Apply", {"source": "a.yaml", "yaml": "x: 1"})
    assert len(changes) == 4  # the heartbeat changed nothing visible


# -- authentication ---------------------------------------------------------------------------


def test_a_call_without_a_token_is_unauthenticated(server):
    err = rejected(server, "Register", BODY, token=None)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details().startswith("Register: missing 'authorization' metadata")
    assert server.call(server.store.workloads) == []


def test_a_wrong_token_is_unauthenticated_without_echoing_it(server):
    err = rejected(server, "Apply", {"source": "a", "yaml": ""}, token="guess")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "Apply: wrong bearer token"
    assert TOKEN not in err.details()


def test_a_malformed_authorization_is_unauthenticated(server):
    err = rejected(server, "Status", {}, metadata=(("authorization", f"Basic {TOKEN}"),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "must be 'Bearer <token>'" in err.details() and "'Basic'" in err.details()


def test_authentication_comes_before_body_checks(server):
    err = rejected(server, "Register", b"not json", token=None)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_no_token_disables_authentication():
    srv = RegistryServer(token=None).start()
    try:
        assert srv.rpc("Register", BODY, token=None)["lease_id"]
        assert srv.rpc("Status", {}, token="anything") == {"ok": True}
    finally:
        srv.close()


def test_an_empty_token_is_refused_at_construction():
    with pytest.raises(ValueError, match="empty"):
        RegistryApi(MemoryStore(), "  ", lambda c: None, dict)


# -- input validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"service": None}, "missing required field 'service'"),
        ({"address": None}, "missing required field 'address'"),
        ({"port": None}, "missing required field 'port'"),
        ({"service": " "}, "'service' must be a non-empty string"),
        ({"port": 0}, "'port' must be an integer from 1 to 65535, got 0"),
        ({"port": 70000}, "'port' must be an integer from 1 to 65535, got 70000"),
        ({"port": "9080"}, "'port' must be an integer"),
        ({"port": True}, "'port' must be an integer"),
        ({"weight": 0}, "'weight' must be an integer from 1"),
        ({"ttl": -1}, "'ttl' must be a number of seconds in (0, 3600]"),
        ({"ttl": 7200}, "'ttl' must be a number of seconds"),
        ({"labels": {"version": 2}}, "'labels' must be an object of strings to strings"),
        ({"locality": {"subzone": "a"}}, "unknown field 'locality.subzone'"),
        ({"health": "SICK"}, "'health' must be one of"),
        ({"wieght": 2}, "unknown field 'wieght'"),
    ],
)
def test_register_names_the_invalid_field(server, change, message):
    body = {**BODY, **change}
    body = {k: v for k, v in body.items() if v is not None}
    err = rejected(server, "Register", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Register: ")
    assert message in err.details()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Heartbeat: body is not JSON"),
        (b"[" * 100_000, "Heartbeat: body is not JSON: nested too deeply"),
        (b"[1, 2]", "Heartbeat: body must be a JSON object"),
        (b"{}", "Heartbeat: missing required field 'lease_id'"),
    ],
)
def test_a_malformed_body_is_invalid_argument(server, body, message):
    err = rejected(server, "Heartbeat", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(message)


def test_register_body_round_trips():
    workload = Workload("reviews", "::1", 9080, {"a": "b"}, Locality("r", "z", "s"), 7)
    body = workload_to_json(workload, HealthStatus.DEGRADED, ttl=3)
    assert workload_from_json(body, default_ttl=10) == (workload, HealthStatus.DEGRADED, 3.0)


# -- config and status ------------------------------------------------------------------------


class RejectBadRule:
    """Rejects any config set containing 'bad', and records every set it was shown."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def __call__(self, configs: dict[str, str]) -> None:
        self.seen.append(dict(configs))
        for source, text in configs.items():
            if "bad" in text:
                raise ConfigError(f"{source}: VirtualService 'reviews': spec.http[0] is bad")


@pytest.fixture
def config_server() -> Iterator[tuple[RegistryServer, RejectBadRule]]:
    validate = RejectBadRule()
    srv = RegistryServer(validate=validate).start()
    try:
        yield srv, validate
    finally:
        srv.close()


def test_apply_validates_the_whole_resulting_set_and_stores(config_server):
    server, validate = config_server
    assert server.rpc("Apply", {"source": "a.yaml", "yaml": "kind: A"}) == {"ok": True}
    server.rpc("Apply", {"source": "b.yaml", "yaml": "kind: B"})
    assert validate.seen[-1] == {"a.yaml": "kind: A", "b.yaml": "kind: B"}
    assert server.call(server.store.configs) == {"a.yaml": "kind: A", "b.yaml": "kind: B"}


def test_a_rejected_apply_is_invalid_argument_and_stores_nothing(config_server):
    server, _ = config_server
    server.rpc("Apply", {"source": "a.yaml", "yaml": "kind: A"})
    err = rejected(server, "Apply", {"source": "a.yaml", "yaml": "kind: bad"})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "Apply: a.yaml: VirtualService 'reviews': spec.http[0] is bad"
    assert server.call(server.store.configs) == {"a.yaml": "kind: A"}


def test_delete_validates_what_remains(config_server):
    server, validate = config_server
    server.rpc("Apply", {"source": "a.yaml", "yaml": "kind: A"})
    server.rpc("Apply", {"source": "b.yaml", "yaml": "kind: B"})
    assert server.rpc("Delete", {"source": "a.yaml"}) == {"ok": True}
    assert validate.seen[-1] == {"b.yaml": "kind: B"}
    err = rejected(server, "Delete", {"source": "a.yaml"})
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Delete: no config source 'a.yaml'"


def test_a_delete_leaving_an_invalid_set_is_refused(server):
    def needs_base(configs: dict[str, str]) -> None:
        if "vs.yaml" in configs and "dr.yaml" not in configs:
            raise ConfigError("vs.yaml: subset 'v1' is defined by no DestinationRule")

    server.validate = needs_base
    server.restart_empty()
    server.rpc("Apply", {"source": "dr.yaml", "yaml": "dr"})
    server.rpc("Apply", {"source": "vs.yaml", "yaml": "vs"})
    err = rejected(server, "Delete", {"source": "dr.yaml"})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Delete: vs.yaml: subset 'v1'" in err.details()
    assert set(server.call(server.store.configs)) == {"dr.yaml", "vs.yaml"}


def test_an_unexpected_validator_failure_is_internal_and_stores_nothing(server):
    def broken(configs: dict[str, str]) -> None:
        raise KeyError("oops")

    server.validate = broken
    server.restart_empty()
    err = rejected(server, "Apply", {"source": "a", "yaml": "x"})
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details().startswith("Apply: internal error: KeyError")
    assert server.call(server.store.configs) == {}


def test_apply_requires_yaml_text(server):
    err = rejected(server, "Apply", {"source": "a", "yaml": {"kind": "A"}})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'yaml' must be a string" in err.details()


def test_status_returns_what_the_provider_gives():
    status = {"version": 7, "clients": [{"node": "a", "state": "SYNCED"}]}
    srv = RegistryServer(status=lambda: status).start()
    try:
        assert srv.rpc("Status", {}) == status
        assert srv.rpc("Status", b"") == status  # an empty body is {}
    finally:
        srv.close()


def test_a_status_that_is_not_json_is_internal_not_a_hang():
    srv = RegistryServer(status=lambda: {"since": object()}).start()
    try:
        err = rejected(srv, "Status", {})
        assert err.code() == grpc.StatusCode.INTERNAL
        assert err.details().startswith("Status: internal error: TypeError")
    finally:
        srv.close()
