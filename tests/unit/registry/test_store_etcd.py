"""EtcdStore without etcd: URLs, key layout, value and lease id encoding, the mirror kept
from a (fake) watch, and how etcd's errors reach the caller. `tests/e2e/test_registry_etcd.py`
runs it against a real etcd."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from sail.model import HealthStatus, Locality
from sail.registration import Workload
from sail.registry.etcd import (
    DEFAULT_PREFIX,
    EtcdStore,
    EtcdUrl,
    KeyLayout,
    decode_workload,
    encode_workload,
    lease_id_text,
    parse_etcd_url,
    parse_lease_id,
    range_end,
)
from sail.registry.store import Store, StoreUnavailable
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(20)

REVIEWS = Workload("reviews", "10.0.0.1", 9080, {"version": "v1"}, Locality("eu", "eu-1"), 2,
                   service_port=80)


# -- URLs, keys and values --------------------------------------------------------------------


def test_etcd_urls() -> None:
    assert parse_etcd_url("etcd://127.0.0.1:2379") == EtcdUrl(("127.0.0.1:2379",), "/sail/")
    assert parse_etcd_url("etcd://etcd") == EtcdUrl(("etcd:2379",), DEFAULT_PREFIX)
    assert parse_etcd_url("etcd://a:1,b:2/team-a/sail") == EtcdUrl(("a:1", "b:2"), "/team-a/sail/")
    assert parse_etcd_url("etcd://[::1]:2379/x/") == EtcdUrl(("[::1]:2379",), "/x/")
    assert parse_etcd_url("etcd://h:2379/") == EtcdUrl(("h:2379",), "/sail/")
    for bad in ("http://h:2379", "etcd://", "etcd://h:x", "etcd://h:70000", "etcd://h,",
                "etcd://u:p@h:2379", "etcd://h:2379?x=1", "etcd:/h"):
        with pytest.raises(ValueError, match="etcd"):
            parse_etcd_url(bad)


def test_key_layout() -> None:
    layout = KeyLayout()
    assert layout.workload(REVIEWS) == "/sail/workloads/reviews/10.0.0.1:9080"
    ipv6 = Workload("a/b", "::1", 80)
    assert layout.workload(ipv6) == "/sail/workloads/a%2Fb/%3A%3A1:80"
    assert layout.is_workload(layout.workload(ipv6))
    assert not layout.is_workload("/sail/workloads/")
    assert layout.config("mesh/reviews.yaml") == "/sail/configs/mesh%2Freviews.yaml"
    assert layout.source_of(layout.config("mesh/reviews.yaml")) == "mesh/reviews.yaml"
    assert layout.source_of("/sail/configs/") is None
    assert layout.source_of(layout.workload(REVIEWS)) is None
    assert layout.marker == "/sail/meta/configs"
    assert KeyLayout("/team/").workload(REVIEWS).startswith("/team/workloads/")
    for bad in ("sail/", "/sail", ""):
        with pytest.raises(ValueError, match="prefix"):
            KeyLayout(bad)


def test_distinct_workloads_have_distinct_keys() -> None:
    layout = KeyLayout()
    tricky = [Workload("a", "b:1", 2), Workload("a", "b", 1), Workload("a/b", "c", 1),
              Workload("a", "b/c", 1)]
    assert len({layout.workload(w) for w in tricky}) == len(tricky)


def test_range_end_covers_the_prefix() -> None:
    assert range_end("/sail/") == b"/sail0"
    assert range_end("/équipe/") == "/équipe0".encode()


def test_workload_values_round_trip_strictly() -> None:
    value = encode_workload(REVIEWS, HealthStatus.DRAINING, 10.0)
    assert json.loads(value)["health"] == "DRAINING"
    assert decode_workload(value) == (REVIEWS, HealthStatus.DRAINING, 10.0)
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        decode_workload(json.dumps({"service": "x", "address": "a", "port": 1,
                                    "colour": "red"}).encode())
    with pytest.raises(ValueError):
        decode_workload(b"not json")


def test_lease_ids_are_etcd_ids_in_hex() -> None:
    assert lease_id_text(0x3916_1234_abcd_0001) == "39161234abcd0001"
    assert parse_lease_id("39161234abcd0001") == 0x3916_1234_abcd_0001
    for bad in ("", "0", "xyz", "DEADBEEF", "-1", "1" * 17, "8000000000000000"):
        assert parse_lease_id(bad) is None


# -- a fake etcd gateway ------------------------------------------------------------------------


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def kv(key: str, value: str | bytes, revision: int, lease: int = 0) -> dict[str, Any]:
    entry = {"key": b64(key), "value": b64(value), "mod_revision": str(revision)}
    if lease:
        entry["lease"] = str(lease)
    return entry


class FakeEtcd:
    """Answers the gateway's JSON as etcd 3.5 does, from what the test sets: `kvs` for range
    reads, `watch` for the watch stream's messages, `answers` by path for the rest."""

    def __init__(self) -> None:
        self.kvs: list[dict[str, Any]] = []
        self.revision = 1
        self.watch: asyncio.Queue[dict[str, Any]] | None = None
        self.watch_starts: list[int] = []
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.down = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path.removeprefix("/v3/")
        body = json.loads(request.content) if request.content else {}
        header = {"revision": str(self.revision)}
        if path == "kv/range":
            return httpx.Response(200, json={"header": header, "kvs": self.kvs})
        if path == "watch":
            self.watch_starts.append(int(body["create_request"]["start_revision"]))
            self.watch = asyncio.Queue()
            return httpx.Response(200, content=self._stream(self.watch))
        status, answer = self.answers[path]
        return httpx.Response(status, json=answer)

    async def _stream(self, queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[bytes]:
        yield json.dumps({"result": {"header": {"revision": "1"}, "created": True}}).encode()
        yield b"\n"
        while True:
            message = await queue.get()
            if message.get("end"):
                return
            yield json.dumps(message).encode() + b"\n"

    async def send(self, revision: int, *events: dict[str, Any]) -> None:
        assert self.watch is not None
        await self.watch.put({"result": {"header": {"revision": str(revision)},
                                         "events": list(events)}})


def run(fake: FakeEtcd, test: Callable[[EtcdStore], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        store = EtcdStore(["etcd-a:2379"], transport=fake.transport(), probe_interval=60,
                          backoff=(0.01, 0.05), **kwargs)
        typed: Store = store  # mypy checks the protocol
        await typed.start()
        try:
            async with asyncio.timeout(10):
                await test(store)
        finally:
            await store.close()

    asyncio.run(main())


async def until(predicate: Callable[[], Any]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_the_mirror_loads_then_follows_the_watch(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeEtcd()
    layout = KeyLayout()
    fake.revision = 7
    fake.kvs = [
        kv(layout.workload(REVIEWS), encode_workload(REVIEWS, HealthStatus.HEALTHY, 10), 5, 99),
        kv(layout.config("a.yaml"), "kind: A", 6),
        kv(layout.marker, "a.yaml", 6),
        kv("/sail/something-else", "ignored", 7),
    ]
    ratings = Workload("ratings", "10.0.0.2", 9080)

    async def test(store: EtcdStore) -> None:
        assert store.workloads() == [(REVIEWS, HealthStatus.HEALTHY)]
        assert store.configs() == {"a.yaml": "kind: A"}
        changes: list[int] = []
        store.watch(lambda: changes.append(1))
        await until(lambda: fake.watch is not None)
        assert fake.watch_starts == [8]
        await fake.send(8, {"kv": kv(layout.workload(ratings),
                                     encode_workload(ratings, HealthStatus.DRAINING, 5), 8, 7)})
        await until(lambda: len(changes) == 1)
        assert store.workloads() == [(ratings, HealthStatus.DRAINING),
                                     (REVIEWS, HealthStatus.HEALTHY)]
        # A value that changes nothing readers see (a new lease) tells no watcher.
        await fake.send(9, {"kv": kv(layout.workload(ratings),
                                     encode_workload(ratings, HealthStatus.DRAINING, 5), 9, 8)})
        await fake.send(10, {"type": "DELETE", "kv": {"key": b64(layout.workload(REVIEWS))}},
                        {"type": "DELETE", "kv": {"key": b64(layout.config("a.yaml"))}})
        await until(lambda: len(changes) == 2)
        assert store.workloads() == [(ratings, HealthStatus.DRAINING)]
        assert store.configs() == {}
        # A corrupt workload is logged and left out, never served half-read.
        with caplog.at_level(logging.ERROR, logger="sail.registry.etcd"):
            await fake.send(11, {"kv": kv(layout.workload(ratings), b"{not json", 11)})
            await until(lambda: len(changes) == 3)
        assert store.workloads() == []
        assert "ignoring workload key '/sail/workloads/ratings/10.0.0.2:9080'" in caplog.text
        assert store.status()["revision"] == 11
        assert store.expire() == []

    run(fake, test)


def test_the_watch_resumes_after_its_revision_or_reads_again_after_a_compaction() -> None:
    fake = FakeEtcd()
    layout = KeyLayout()

    async def test(store: EtcdStore) -> None:
        await until(lambda: fake.watch is not None)
        await fake.send(4, {"kv": kv(layout.config("a.yaml"), "kind: A", 4)})
        await until(lambda: store.configs() == {"a.yaml": "kind: A"})
        assert fake.watch is not None
        await fake.watch.put({"end": True})  # etcd goes away mid-stream
        await until(lambda: len(fake.watch_starts) == 2)
        assert fake.watch_starts == [2, 5]  # resumed after the last revision applied
        assert store.loads == 1
        # Compacted past where it resumes: the whole prefix is read again.
        fake.revision = 9
        fake.kvs = [kv(layout.config("b.yaml"), "kind: B", 9)]
        await fake.watch.put({"result": {"header": {}, "canceled": True,
                                         "compact_revision": "8"}})
        await until(lambda: store.configs() == {"b.yaml": "kind: B"})
        assert store.loads == 2
        await until(lambda: len(fake.watch_starts) == 3)
        assert fake.watch_starts[-1] == 10

    run(fake, test)


def test_etcd_errors_reach_the_caller_clearly() -> None:
    fake = FakeEtcd()

    async def test(store: EtcdStore) -> None:
        fake.answers["lease/keepalive"] = (200, {"result": {"ID": "1"}})  # no TTL: gone
        assert await store.heartbeat("1") is False
        assert await store.heartbeat("not-a-lease") is False
        fake.answers["lease/timetolive"] = (200, {"ID": "1", "TTL": "-1"})
        assert await store.remove_workload("1") is False
        assert await store.set_health("1", HealthStatus.DRAINING) is False
        fake.answers["lease/grant"] = (503, {"error": "etcdserver: no leader", "code": 14,
                                             "message": "etcdserver: no leader"})
        with pytest.raises(StoreUnavailable, match=r"etcd at etcd-a:2379 is unreachable: "
                                                   r"etcd-a:2379: etcdserver: no leader"):
            await store.put_workload(REVIEWS)
        fake.down = True
        with pytest.raises(StoreUnavailable, match="etcd at etcd-a:2379 is unreachable: "
                                                   "etcd-a:2379: ConnectError"):
            await store.heartbeat("1")
        with pytest.raises(ValueError, match="ttl"):
            await store.put_workload(REVIEWS, ttl=0)

    run(fake, test)


def test_start_fails_clearly_when_etcd_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    store = EtcdStore([f"127.0.0.1:{port}"], timeout=2)
    with pytest.raises(StoreUnavailable, match=rf"etcd at 127\.0\.0\.1:{port} is unreachable"):
        asyncio.run(store.start())
    assert store.status()["connected"] is False
