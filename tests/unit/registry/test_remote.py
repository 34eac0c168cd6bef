"""RemoteRegistrar and AdminClient against a real registry API on 127.0.0.1."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from sail.errors import ConfigError, XdsError
from sail.model import HealthStatus
from sail.registration import Registrar, Workload
from sail.registry.remote import AdminClient, RegistryError, RemoteRegistrar
from sail.registry.store import MemoryStore
from sail.xds.client import Backoff
from tests.helpers import free_port, wait_until
from tests.unit.registry.test_api_harness import TOKEN, FakeClock, RegistryServer

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(initial=0.02, multiplier=1.6, maximum=0.1, jitter=0.1)
REVIEWS = Workload("reviews", "10.0.0.1", 9080, {"version": "v1"})


class CountingStore(MemoryStore):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.beats = 0

    async def heartbeat(self, lease_id: str) -> bool:
        self.beats += 1
        return await super().heartbeat(lease_id)


@pytest.fixture
def server() -> Iterator[RegistryServer]:
    srv = RegistryServer()
    srv.store = CountingStore(srv.clock)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def make_registrar() -> Iterator[Callable[..., RemoteRegistrar]]:
    made: list[RemoteRegistrar] = []

    def make(target: str, token: str | None = TOKEN, **kwargs: object) -> RemoteRegistrar:
        options: dict[str, object] = {
            "heartbeat_interval": 0.05,
            "ttl": 10.0,
            "call_timeout": 2.0,
            "backoff": FAST,
        }
        options.update(kwargs)
        registrar = RemoteRegistrar(target, token, **options)  # type: ignore[arg-type]
        made.append(registrar)
        return registrar

    yield make
    for registrar in made:
        registrar.close()


def listed(server: RegistryServer) -> list[tuple[Workload, HealthStatus]]:
    return server.call(server.store.workloads)


def beats(server: RegistryServer) -> int:
    store = server.store
    assert isinstance(store, CountingStore)
    return store.beats


# -- RemoteRegistrar --------------------------------------------------------------------------


def test_it_is_a_registrar(server, make_registrar):
    registrar: Registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    assert listed(server) == [(REVIEWS, HealthStatus.HEALTHY)]


def test_heartbeats_keep_a_live_workload_past_its_ttl(server, make_registrar):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    assert registrar.lease_id(REVIEWS)
    for _ in range(3):
        server.clock.advance(8)  # within the 10 s TTL of the last renewal...
        seen = beats(server)
        wait_until(lambda seen=seen: beats(server) > seen + 1)  # ...renewed after the move
    server.call(server.store.expire)
    assert listed(server) == [(REVIEWS, HealthStatus.HEALTHY)]


def test_a_closed_registrar_lets_its_workload_expire(server, make_registrar):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    registrar.close()  # as if killed: no deregistration
    server.clock.advance(10)
    assert server.call(server.store.expire) == [REVIEWS]
    assert listed(server) == []


def test_a_lease_the_registry_lost_is_registered_again(server, make_registrar, caplog):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    old = registrar.lease_id(REVIEWS)
    with caplog.at_level(logging.WARNING, logger="sail.registry.remote"):
        assert server.call(lambda: server.store.remove_workload(old))
        wait_until(lambda: registrar.lease_id(REVIEWS) not in (None, old))
    assert listed(server) == [(REVIEWS, HealthStatus.HEALTHY)]
    assert "no longer knows the lease of reviews/10.0.0.1:9080" in caplog.text


def test_after_a_registry_restart_workloads_return_with_their_health(server, make_registrar):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    registrar.set_health(REVIEWS, HealthStatus.DRAINING)
    server.restart_empty()
    assert listed(server) == []
    wait_until(lambda: listed(server) == [(REVIEWS, HealthStatus.DRAINING)])


def test_drain_sets_draining_then_deregisters(server, make_registrar):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    registrar.set_health(REVIEWS, HealthStatus.DRAINING)
    assert listed(server) == [(REVIEWS, HealthStatus.DRAINING)]  # delivered at once
    registrar.deregister(REVIEWS)
    assert listed(server) == []
    assert registrar.lease_id(REVIEWS) is None
    registrar.deregister(REVIEWS)  # again: nothing to do
    seen = beats(server)
    time.sleep(0.3)  # six heartbeat intervals: the thread neither heartbeats nor re-registers
    assert listed(server) == [] and beats(server) == seen


def test_register_while_the_registry_is_down_succeeds_later(make_registrar, caplog):
    port = free_port()
    registrar = make_registrar(f"127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="sail.registry.remote"):
        registrar.register(REVIEWS)  # logs, does not raise
    assert registrar.lease_id(REVIEWS) is None
    assert "UNAVAILABLE" in caplog.text and "retrying with backoff" in caplog.text
    srv = RegistryServer(port=port).start()
    try:
        wait_until(lambda: listed(srv) == [(REVIEWS, HealthStatus.HEALTHY)])
    finally:
        srv.close()


def test_heartbeats_resume_after_an_outage(server, make_registrar, caplog):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    lease = registrar.lease_id(REVIEWS)
    with caplog.at_level(logging.INFO, logger="sail.registry.remote"):
        server.stop()
        wait_until(lambda: "retrying with backoff" in caplog.text)
        server.start()  # same port, same store: the lease is still good
        seen = beats(server)
        wait_until(lambda: beats(server) > seen + 2)
        wait_until(lambda: "answers again" in caplog.text)
    assert registrar.lease_id(REVIEWS) == lease


def test_the_thread_survives_an_unexpected_error(server, make_registrar, caplog):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    real = registrar._channel.call
    failures = [RuntimeError("unexpected")]

    def flaky(method, body):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real(method, body)

    with caplog.at_level(logging.ERROR, logger="sail.registry.remote"):
        registrar._channel.call = flaky  # type: ignore[method-assign]
        wait_until(lambda: not failures)
        seen = beats(server)
        wait_until(lambda: beats(server) > seen + 1)
    assert "going on" in caplog.text


def test_a_refused_registration_raises_and_keeps_nothing(server, make_registrar):
    registrar = make_registrar(server.address, token="wrong")
    with pytest.raises(RegistryError) as info:
        registrar.register(REVIEWS)
    assert isinstance(info.value, XdsError)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert str(info.value) == "Register: wrong bearer token"
    assert registrar.lease_id(REVIEWS) is None

    good = make_registrar(server.address)
    with pytest.raises(ConfigError, match="'port' must be an integer from 1 to 65535, got 0"):
        good.register(Workload("reviews", "10.0.0.1", 0))
    assert listed(server) == []


def test_close_stops_the_thread_and_is_idempotent(server, make_registrar):
    registrar = make_registrar(server.address)
    registrar.register(REVIEWS)
    thread = registrar._thread
    assert thread is not None and thread.is_alive()
    registrar.close()
    registrar.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        registrar.register(REVIEWS)


def test_heartbeat_interval_must_be_below_ttl():
    with pytest.raises(ValueError, match="below the lease ttl"):
        RemoteRegistrar("127.0.0.1:1", None, heartbeat_interval=10, ttl=10)


# -- AdminClient ------------------------------------------------------------------------------


def test_admin_apply_delete_status():
    validated: list[dict[str, str]] = []
    srv = RegistryServer(validate=validated.append, status=lambda: {"version": 3}).start()
    try:
        with AdminClient(srv.address, TOKEN) as admin:
            admin.apply("reviews.yaml", "kind: VirtualService\n")
            assert srv.call(srv.store.configs) == {"reviews.yaml": "kind: VirtualService\n"}
            admin.delete("reviews.yaml")
            assert srv.call(srv.store.configs) == {}
            assert validated == [{"reviews.yaml": "kind: VirtualService\n"}, {}]
            assert admin.status() == {"version": 3}
    finally:
        srv.close()


def test_admin_errors_carry_the_registry_message():
    def reject(configs: dict[str, str]) -> None:
        if any("bad" in t for t in configs.values()):
            raise ConfigError("r.yaml: DestinationRule 'reviews': spec.subsets[0].name missing")

    srv = RegistryServer(validate=reject).start()
    try:
        with AdminClient(srv.address, TOKEN) as admin:
            with pytest.raises(ConfigError) as rejected:
                admin.apply("r.yaml", "bad")
            assert str(rejected.value) == (
                "Apply: r.yaml: DestinationRule 'reviews': spec.subsets[0].name missing"
            )
            with pytest.raises(RegistryError) as missing:
                admin.delete("nope.yaml")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            assert str(missing.value) == "Delete: no config source 'nope.yaml'"
        with AdminClient(srv.address, "wrong") as admin:
            with pytest.raises(XdsError, match="Status: wrong bearer token"):
                admin.status()
    finally:
        srv.close()


def test_admin_against_an_unreachable_registry():
    target = f"127.0.0.1:{free_port()}"
    with AdminClient(target, TOKEN, timeout=2) as admin:
        with pytest.raises(RegistryError) as info:
            admin.status()
    assert isinstance(info.value, ConnectionError)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach the registry at {target} (Status)" in str(info.value)
