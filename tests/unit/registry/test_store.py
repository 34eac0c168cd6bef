"""MemoryStore: leases, expiry, health, config documents, watchers; and the expiry task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from sail.model import HealthStatus, Locality
from sail.registration import Workload
from sail.registry.etcd import EtcdStore
from sail.registry.leases import run_expiry
from sail.registry.store import DEFAULT_TTL, MemoryStore, Store
from sail.registry.stores import open_store
from tests.unit.registry.test_api_harness import FakeClock

pytestmark = pytest.mark.timeout(10)

T = TypeVar("T")


def done(coro: Coroutine[Any, Any, T]) -> T:
    """Run one of MemoryStore's coroutines, which never suspend, to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("MemoryStore suspended")

REVIEWS = Workload("reviews", "10.0.0.1", 9080, {"version": "v1"}, Locality("eu", "eu-1"), 2)
RATINGS = Workload("ratings", "10.0.0.2", 9080)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def test_memory_store_is_a_store(store):
    typed: Store = store  # mypy checks the protocol; this keeps the import honest
    assert typed.workloads() == []


def test_put_workload_returns_a_lease_expiring_after_ttl(store, clock):
    lease = done(store.put_workload(REVIEWS, HealthStatus.HEALTHY, ttl=5))
    assert lease.id and lease.ttl == 5 and lease.expires_at == clock.now + 5
    assert store.workloads() == [(REVIEWS, HealthStatus.HEALTHY)]
    assert done(store.put_workload(RATINGS)).ttl == DEFAULT_TTL == 10.0


def test_killed_workload_is_gone_after_its_ttl(store, clock):
    lease = done(store.put_workload(REVIEWS, ttl=10))
    clock.advance(9.9)
    assert store.expire() == []
    clock.advance(0.1)
    # Lapsed: already unlisted before the sweep, and the sweep reports it.
    assert store.workloads() == []
    assert store.expire() == [REVIEWS]
    assert done(store.heartbeat(lease.id)) is False


def test_heartbeat_renews_for_another_ttl(store, clock):
    lease = done(store.put_workload(REVIEWS, ttl=10))
    for _ in range(5):
        clock.advance(8)
        assert done(store.heartbeat(lease.id)) is True
    assert store.expire() == []
    assert store.workloads() == [(REVIEWS, HealthStatus.HEALTHY)]


def test_calls_on_a_lapsed_unswept_lease_fail_and_sweep_it(store, clock):
    lease = done(store.put_workload(REVIEWS, ttl=1))
    changes: list[int] = []
    store.watch(lambda: changes.append(1))
    clock.advance(2)
    assert done(store.heartbeat(lease.id)) is False
    assert done(store.set_health(lease.id, HealthStatus.DRAINING)) is False
    assert done(store.remove_workload(lease.id)) is False
    assert changes == [1]  # swept once, watchers told
    assert store.expire() == []


def test_registering_the_same_key_replaces_the_old_lease(store):
    old = done(store.put_workload(REVIEWS))
    moved = Workload("reviews", "10.0.0.1", 9080, {"version": "v2"})
    new = done(store.put_workload(moved, HealthStatus.DRAINING))
    assert new.id != old.id
    assert done(store.heartbeat(old.id)) is False
    assert store.workloads() == [(moved, HealthStatus.DRAINING)]


def test_set_health_notifies_only_on_change(store):
    lease = done(store.put_workload(REVIEWS))
    changes: list[int] = []
    store.watch(lambda: changes.append(1))
    assert done(store.set_health(lease.id, HealthStatus.DRAINING)) is True
    assert done(store.set_health(lease.id, HealthStatus.DRAINING)) is True
    assert store.workloads() == [(REVIEWS, HealthStatus.DRAINING)]
    assert changes == [1]
    assert done(store.set_health("nope", HealthStatus.HEALTHY)) is False


def test_remove_workload(store):
    lease = done(store.put_workload(REVIEWS))
    done(store.put_workload(RATINGS))
    assert done(store.remove_workload(lease.id)) is True
    assert done(store.remove_workload(lease.id)) is False
    assert store.workloads() == [(RATINGS, HealthStatus.HEALTHY)]


def test_workloads_are_ordered_by_key(store):
    done(store.put_workload(REVIEWS))
    done(store.put_workload(RATINGS))
    assert [w.service for w, _ in store.workloads()] == ["ratings", "reviews"]


def test_ttl_must_be_positive(store):
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            done(store.put_workload(REVIEWS, ttl=bad))


def test_config_documents(store):
    changes: list[int] = []
    store.watch(lambda: changes.append(1))
    done(store.put_config("reviews.yaml", "kind: VirtualService"))
    done(store.put_config("reviews.yaml", "kind: VirtualService"))  # unchanged: no event
    done(store.put_config("ratings.yaml", "kind: DestinationRule"))
    configs = store.configs()
    configs["x"] = "mutating the copy changes nothing"
    assert store.configs() == {
        "reviews.yaml": "kind: VirtualService",
        "ratings.yaml": "kind: DestinationRule",
    }
    assert done(store.delete_config("reviews.yaml")) is True
    assert done(store.delete_config("reviews.yaml")) is False
    assert changes == [1, 1, 1]


def test_watch_every_change_and_unsubscribe(store, clock):
    changes: list[str] = []
    stop = store.watch(lambda: changes.append("a"))
    lease = done(store.put_workload(REVIEWS, ttl=1))
    done(store.heartbeat(lease.id))  # renewal alone changes nothing anyone sees
    clock.advance(5)
    store.expire()
    assert changes == ["a", "a"]
    stop()
    stop()
    done(store.put_config("x", "y"))
    assert changes == ["a", "a"]


def test_a_failing_watcher_does_not_stop_the_others(store, caplog):
    seen: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    store.watch(broken)
    store.watch(lambda: seen.append(1))
    with caplog.at_level(logging.ERROR, logger="sail.registry.store"):
        done(store.put_config("x", "y"))
    assert seen == [1]
    assert store.configs() == {"x": "y"}
    assert "boom" in caplog.text


def test_run_expiry_sweeps_periodically_and_survives_errors(clock):
    class Flaky(MemoryStore):
        calls = 0

        def expire(self, now: float | None = None) -> list[Workload]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("first sweep fails")
            return super().expire(now)

    store = Flaky(clock=clock)
    expired: list[int] = []
    store.watch(lambda: expired.append(1))

    async def main() -> None:
        await store.put_workload(REVIEWS, ttl=1)
        clock.advance(2)
        task = asyncio.create_task(run_expiry(store, interval=0.01))
        try:
            async with asyncio.timeout(5):
                while not (store.calls >= 2 and len(expired) == 2):
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(main())
    assert store.workloads() == []


def test_run_expiry_rejects_a_bad_interval(store):
    with pytest.raises(ValueError, match="interval"):
        asyncio.run(run_expiry(store, interval=0))


def test_open_store_by_url():
    assert isinstance(open_store("memory"), MemoryStore)
    etcd = open_store("etcd://127.0.0.1:2379/team/sail")
    assert isinstance(etcd, EtcdStore)
    assert etcd.status() == {
        "kind": "etcd", "endpoints": ["127.0.0.1:2379"], "prefix": "/team/sail/",
        "connected": False, "revision": 0, "error": "",
    }
    for bad in ("redis://x", "", "etcd://", "etcd://host:99999"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_memory_store_lifecycle_and_status(store):
    done(store.start())
    assert store.status() == {"kind": "memory"}
    done(store.close())


def test_the_store_module_does_not_import_the_etcd_one():
    # etcd.py imports store.py (the interface it implements); the factory that knows both
    # lives in stores.py, so there is no import circle.
    import subprocess
    import sys

    code = (
        "import sys, sail.registry.store; "
        "print('sail.registry.etcd' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"
    import sail.registry.store

    assert not hasattr(sail.registry.store, "open_store")
