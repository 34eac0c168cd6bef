"""RemoteRegistrar with several registries: real registry API servers on 127.0.0.1, each with
a memory store of its own (so a lease taken at one is unknown at the other)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc
import pytest

from sail.model import HealthStatus
from sail.registration import Workload
from sail.registry.remote import RegistryError, RemoteRegistrar
from sail.xds.client import Backoff
from tests.helpers import free_port, wait_until
from tests.unit.registry.test_api_harness import TOKEN, RegistryServer

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(initial=0.02, multiplier=1.6, maximum=0.1, jitter=0.1)
REVIEWS = Workload("reviews", "10.0.0.1", 9080, {"version": "v1"})
RATINGS = Workload("ratings", "10.0.0.2", 9080)


@pytest.fixture
def servers() -> Iterator[tuple[RegistryServer, RegistryServer]]:
    first, second = RegistryServer().start(), RegistryServer().start()
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.fixture
def make_registrar() -> Iterator[Callable[..., RemoteRegistrar]]:
    made: list[RemoteRegistrar] = []

    def make(targets: object, token: str | None = TOKEN, **kwargs: object) -> RemoteRegistrar:
        options: dict[str, object] = {
            "heartbeat_interval": 0.05, "ttl": 10.0, "call_timeout": 2.0, "backoff": FAST}
        options.update(kwargs)
        registrar = RemoteRegistrar(targets, token, **options)  # type: ignore[arg-type]
        made.append(registrar)
        return registrar

    yield make
    for registrar in made:
        registrar.close()


def listed(server: RegistryServer) -> list[tuple[Workload, HealthStatus]]:
    return server.call(server.store.workloads)


def test_one_address_or_several(make_registrar):
    assert make_registrar("127.0.0.1:1").targets == ("127.0.0.1:1",)
    registrar = make_registrar(["127.0.0.1:1", "127.0.0.1:2"])
    assert registrar.targets == ("127.0.0.1:1", "127.0.0.1:2")
    assert registrar.target == "127.0.0.1:1"
    with pytest.raises(ValueError, match="registry address"):
        RemoteRegistrar([], TOKEN)


def test_a_lease_the_next_registry_does_not_know_is_registered_there(
    servers, make_registrar, caplog
):
    first, second = servers
    registrar = make_registrar([first.address, second.address])
    registrar.register(REVIEWS)
    registrar.set_health(REVIEWS, HealthStatus.DRAINING)
    assert listed(first) == [(REVIEWS, HealthStatus.DRAINING)] and listed(second) == []
    with caplog.at_level(logging.WARNING, logger="sail.registry.remote"):
        first.stop()
        # The next heartbeat finds the first unreachable, is made at the second (NOT_FOUND
        # there: a store of its own) and the workload registers there, with its health.
        wait_until(lambda: listed(second) == [(REVIEWS, HealthStatus.DRAINING)])
    assert registrar.target == second.address
    assert (f"registry at {first.address} is unreachable (UNAVAILABLE" in caplog.text
            and f"now uses the registry at {second.address}" in caplog.text)
    assert "no longer knows the lease of reviews/10.0.0.1:9080" in caplog.text


def test_a_call_finding_the_registry_unreachable_is_made_at_the_next_at_once(
    servers, make_registrar
):
    first, second = servers
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    registrar = make_registrar([down, first.address, second.address])
    registrar.register(REVIEWS)  # within this one call
    assert registrar.lease_id(REVIEWS) is not None
    assert listed(first) == [(REVIEWS, HealthStatus.HEALTHY)]
    assert registrar.target == first.address
    first.stop()
    # set_health, register and deregister each move on within the call, too.
    registrar.set_health(REVIEWS, HealthStatus.DRAINING)
    assert listed(second) == [(REVIEWS, HealthStatus.DRAINING)]
    registrar.register(RATINGS)
    assert (RATINGS, HealthStatus.HEALTHY) in listed(second)
    registrar.deregister(REVIEWS)
    assert listed(second) == [(RATINGS, HealthStatus.HEALTHY)]
    # It stays with the registry that answered: the first back (its store as it was)
    # hears nothing more.
    first.start()
    registrar.set_health(RATINGS, HealthStatus.DRAINING)
    assert listed(second) == [(RATINGS, HealthStatus.DRAINING)]
    assert listed(first) == [(REVIEWS, HealthStatus.HEALTHY)]
    assert registrar.target == second.address


def test_when_none_answers_it_backs_off_and_uses_the_first_back(make_registrar, caplog):
    ports = [free_port(), free_port()]
    targets = [f"127.0.0.1:{p}" for p in ports]
    registrar = make_registrar(targets)
    with caplog.at_level(logging.WARNING, logger="sail.registry.remote"):
        registrar.register(REVIEWS)  # logs, does not raise
    assert registrar.lease_id(REVIEWS) is None
    assert f"every registry at {', '.join(targets)} failed (UNAVAILABLE" in caplog.text
    second = RegistryServer(port=ports[1]).start()
    try:
        wait_until(lambda: listed(second) == [(REVIEWS, HealthStatus.HEALTHY)])
        assert registrar.target == targets[1]
    finally:
        second.close()


def test_a_refusal_is_not_failed_over(servers, make_registrar):
    first, second = servers
    registrar = make_registrar([first.address, second.address], token="wrong")
    with pytest.raises(RegistryError) as info:
        registrar.register(REVIEWS)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert registrar.target == first.address
    assert listed(first) == [] and listed(second) == []


def test_admin_calls_go_to_the_first_registry_that_answers(servers):
    from sail.registry.remote import AdminClient

    first, second = servers
    dead = f"127.0.0.1:{free_port()}"
    with AdminClient([dead, second.address], TOKEN, timeout=2.0) as admin:
        admin.apply("reviews.yaml", "# nothing")
    assert second.call(second.store.configs) == {"reviews.yaml": "# nothing"}
    assert first.call(first.store.configs) == {}
    with AdminClient([first.address, second.address], "wrong", timeout=2.0) as admin:
        with pytest.raises(RegistryError, match="wrong bearer token"):
            admin.status()  # a refusal is an answer: not tried elsewhere
