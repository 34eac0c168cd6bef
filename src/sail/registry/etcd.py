"""`EtcdStore`: the registry's `Store` kept in etcd (v3), so registries can restart and share.

```sh
sail registry --store etcd://127.0.0.1:2379                  # prefix /sail/
sail registry --store etcd://10.0.0.5:2379,10.0.0.6:2379/team-a/sail
```

It talks to etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`, `/v3/kv/txn`,
`/v3/lease/*`, `/v3/watch`) with httpx, without blocking the registry's event loop: writes
are coroutines, reads (`workloads()`, `configs()`) come from an in-memory mirror of the
prefix that one etcd watch keeps current. Several registries sharing one etcd (and prefix)
see each other's workloads and config; a restarted registry loads them all at start.

## Key layout

Under the prefix (default `/sail/`), keys percent-encoded so that `/` and `:` in a name
cannot be confused with the separators:

| key | value |
|---|---|
| `<prefix>workloads/<service>/<address>:<port>` | its `Register` body, JSON; under its lease |
| `<prefix>configs/<source>` | the config document, raw YAML text |
| `<prefix>meta/configs` | the last source changed; its revision orders config writes |
| `<prefix>values/<key>` | the registry's own state (`create_value`): CA, join-token secret |

A workload's JSON has `service`, `address`, `port`, `labels`, `locality`, `weight`,
`health`, `ttl` (and `service_port` if set), read back as strictly as `Register` reads it.

## Leases

A workload's lease *is* an etcd lease: `Register` grants one (etcd counts whole seconds and
grants at least its minimum, 2 s by default; the lease returned says what was granted) and
puts the workload key under it; the lease id given to clients is the etcd lease id in hex.
`Heartbeat` is an etcd keep-alive, so it works at any registry sharing the etcd;
`Deregister` revokes the lease (its key goes with it); etcd expires a lease nobody renews
and deletes the key, and the watch takes the workload out of EDS (`expire()` returns `[]`).
Registering a key again moves it to the new lease and revokes the old one.

## Config writes

`put_config` and `delete_config` are etcd transactions that also rewrite
`<prefix>meta/configs`, on condition that it is still at the revision this registry's
mirror has: a config applied meanwhile at another registry makes them raise
`StoreConflict` (after the mirror has caught up), and the API validates again.

## When etcd cannot be reached

* At start, `start()` raises `StoreUnavailable` (`sail registry` exits saying so).
* Later, writes raise `StoreUnavailable` naming etcd and its address (the API answers
  UNAVAILABLE; registrars retry); the mirror keeps its last state, so the registry keeps
  serving the last good xDS. The watch reconnects with a bounded backoff (0.1 s doubling to
  5 s, with jitter, trying each endpoint in turn) and resumes from the last revision it
  applied; if etcd compacted that revision away, the store reads the whole prefix again and
  tells watchers if anything changed. A probe (every 2 s) notices an etcd that stopped
  answering while the watch connection still looks open. Losing and regaining etcd is
  logged (warning, then every minute while it lasts; info when back).

A write returns once the watch has delivered its revision (at most `catch_up_timeout`
seconds, then it logs a warning and returns), so the mirror, and the xDS rebuilt from it,
has seen it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote

import attrs
import httpx

from sail.model import HealthStatus
from sail.registration import Workload
from sail.registry.store import (
    DEFAULT_TTL,
    Lease,
    StoreConflict,
    StoreUnavailable,
    Watchers,
    check_ttl,
)
from sail.registry.wire import decode, encode, workload_from_json, workload_to_json

__all__ = [
    "DEFAULT_PREFIX",
    "EtcdError",
    "EtcdStore",
    "EtcdUrl",
    "KeyLayout",
    "decode_workload",
    "encode_workload",
    "lease_id_text",
    "parse_etcd_url",
    "parse_lease_id",
]

log = logging.getLogger("sail.registry.etcd")

Json = dict[str, Any]

DEFAULT_PREFIX = "/sail/"
DEFAULT_PORT = 2379

_NOT_FOUND = 5
_UNAVAILABLE_CODES = frozenset({4, 14})  # DEADLINE_EXCEEDED ("request timed out"), UNAVAILABLE
_WARN_EVERY = 60.0
_SET_HEALTH_ATTEMPTS = 5


class _WatchCanceled(ConnectionError):
    """etcd canceled the watch (not for a compaction): read everything before resuming."""


class EtcdError(Exception):
    """etcd answered a request with an error other than being unavailable."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- URLs, keys, values -------------------------------------------------------------------------


@attrs.frozen
class EtcdUrl:
    """A parsed `etcd://` URL: `endpoints` as `host:port` (IPv6 in brackets), and the key
    `prefix` (starts and ends with `/`)."""

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$")


def parse_etcd_url(url: str) -> EtcdUrl:
    """`etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]`; the port defaults to 2379 and the
    prefix to `/sail/`. `ValueError` naming what is wrong."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme != "etcd":
        raise ValueError(f"etcd store URL must start with 'etcd://', got {url!r}")
    if "?" in rest or "#" in rest or "@" in rest:
        raise ValueError(f"etcd store URL takes no query, fragment or credentials: {url!r}")
    hosts, _, path = rest.partition("/")
    endpoints = []
    for part in hosts.split(","):
        match = _HOST.match(part.strip())
        if not match:
            raise ValueError(f"etcd store URL {url!r}: expected HOST:PORT, got {part!r}")
        port = int(match.group(2) or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"etcd store URL {url!r}: port {port} is out of range")
        endpoints.append(f"{match.group(1)}:{port}")
    segments = [s for s in path.split("/") if s]
    prefix = "/" + "".join(s + "/" for s in segments) if segments else DEFAULT_PREFIX
    return EtcdUrl(tuple(endpoints), prefix)


@attrs.frozen
class KeyLayout:
    """Where the store keeps what, under `prefix` (see the module docstring)."""

    prefix: str = DEFAULT_PREFIX

    def __attrs_post_init__(self) -> None:
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")):
            raise ValueError(f"etcd key prefix must start and end with '/', got {self.prefix!r}")

    @property
    def workloads(self) -> str:
        return f"{self.prefix}workloads/"

    @property
    def configs(self) -> str:
        return f"{self.prefix}configs/"

    @property
    def marker(self) -> str:
        return f"{self.prefix}meta/configs"

    def value(self, key: str) -> str:
        return f"{self.prefix}values/{quote(key, safe='')}"

    def workload(self, workload: Workload) -> str:
        service = quote(workload.service, safe="")
        address = quote(workload.address, safe="")
        return f"{self.workloads}{service}/{address}:{workload.port}"

    def config(self, source: str) -> str:
        return f"{self.configs}{quote(source, safe='')}"

    def source_of(self, key: str) -> str | None:
        """The config source a key holds, or None if it is not a config key."""
        if not key.startswith(self.configs) or len(key) == len(self.configs):
            return None
        return unquote(key[len(self.configs):])

    def is_workload(self, key: str) -> bool:
        return key.startswith(self.workloads) and len(key) > len(self.workloads)


def range_end(prefix: str) -> bytes:
    """The end of etcd's range holding every key that starts with `prefix`."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # every key
    raw[-1] += 1
    return bytes(raw)


def encode_workload(workload: Workload, health: HealthStatus, ttl: float) -> bytes:
    """A workload key's value: its `Register` body, JSON."""
    return encode(workload_to_json(workload, health, ttl))


def decode_workload(value: bytes) -> tuple[Workload, HealthStatus, float]:
    """`encode_workload` reversed, as strictly as the API parses a Register body
    (`ValueError` naming the field)."""
    return workload_from_json(decode(value), DEFAULT_TTL)


def lease_id_text(lease: int) -> str:
    """The lease id clients see: etcd's lease id in hex, as etcdctl prints it."""
    return format(lease, "x")


def parse_lease_id(text: str) -> int | None:
    """`lease_id_text` reversed; None for text that no etcd lease id could be."""
    if not re.fullmatch(r"[0-9a-f]{1,16}", text):
        return None
    lease = int(text, 16)
    return lease if 0 < lease < 2**63 else None


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(text: Any) -> bytes:
    return base64.b64decode(text) if isinstance(text, str) and text else b""


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _revision(answer: Json) -> int:
    header = answer.get("header")
    return _int(header.get("revision")) if isinstance(header, dict) else 0


def _error_of(data: Any, status: int) -> tuple[int, str] | None:
    """(gRPC code, message) if an answer of the gateway is an error."""
    if not isinstance(data, dict):
        return 2, f"unexpected answer (HTTP {status})"
    error = data.get("error")
    if isinstance(error, dict):  # streaming methods: {"error": {"grpc_code", "message"}}
        return _int(error.get("grpc_code")) or 2, str(error.get("message") or error)
    if error is not None:
        return _int(data.get("code")) or 2, str(data.get("message") or error)
    if status != 200:
        return (14 if status in (502, 503, 504) else 2), f"HTTP {status}"
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@attrs.frozen
class _Mirrored:
    workload: Workload
    health: HealthStatus
    lease: int


# -- the store ----------------------------------------------------------------------------------


class EtcdStore:
    """A `Store` in etcd (module docstring). Use it from one event loop, the registry's;
    `await start()` first.

    **Parameters**

    * `endpoints` - etcd client addresses, `host:port`; tried in turn when one fails.
    * `prefix` - the key prefix (default `/sail/`); registries sharing it share the mesh.
    * `timeout` - seconds for each request to etcd.
    * `probe_interval` - seconds between liveness probes of the watched etcd.
    * `backoff` - (first, longest) delay in seconds between reconnection attempts.
    * `catch_up_timeout` - how long a write waits for the watch to deliver it.
    * `clock` - the monotonic clock `Lease.expires_at` is on.
    * `transport` - an httpx transport (tests).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        probe_interval: float = 2.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        catch_up_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, longest) with 0 < first <= longest, "
                             f"got {backoff!r}")
        self._endpoints = tuple(endpoints)
        self._where = ", ".join(self._endpoints)
        self._layout = KeyLayout(prefix)
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._backoff = backoff
        self._catch_up_timeout = catch_up_timeout
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._current = 0  # index of the endpoint that last answered
        self._tasks: list[asyncio.Task[None]] = []
        self._attempt: asyncio.Task[bool] | None = None
        self._watchers = Watchers()
        # The mirror of the prefix, at `_revision`.
        self._workloads: dict[str, _Mirrored] = {}
        self._configs: dict[str, str] = {}
        self._config_serial = 0  # mod revision of the marker key (0: absent)
        self._revision = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Connection state, for logs and `status()`.
        self._connected = False
        self._watching = False
        self._error = ""
        self._down_since: float | None = None
        self._last_warning = 0.0
        self.loads = 0
        """How many times the whole prefix was read (1 at start; +1 after a compaction)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> EtcdStore:
        """A store for an `etcd://` URL (`parse_etcd_url`)."""
        target = parse_etcd_url(url)
        return cls(target.endpoints, prefix=target.prefix, **kwargs)

    @property
    def layout(self) -> KeyLayout:
        return self._layout

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                trust_env=False,  # etcd is reached directly, never through an HTTP proxy
                transport=self._transport,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            )
        try:
            await self._load()
        except BaseException:
            await self.close()
            raise
        self._connected = True
        log.info(
            "etcd store: %d workloads and %d config documents in etcd at %s under %r "
            "(revision %d)", len(self._workloads), len(self._configs), self._where,
            self._layout.prefix, self._revision,
        )
        self._tasks = [
            asyncio.ensure_future(self._run_watch()),
            asyncio.ensure_future(self._run_probe()),
        ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("etcd store: background task failed while closing")
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def status(self) -> dict[str, Any]:
        return {
            "kind": "etcd",
            "endpoints": list(self._endpoints),
            "prefix": self._layout.prefix,
            "connected": self._connected,
            "revision": self._revision,
            "error": self._error,
        }

    # -- reads --------------------------------------------------------------------------------

    def workloads(self) -> list[tuple[Workload, HealthStatus]]:
        entries = sorted(self._workloads.values(), key=lambda e: e.workload.key)
        return [(e.workload, e.health) for e in entries]

    def configs(self) -> dict[str, str]:
        return dict(self._configs)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._watchers.add(callback)

    def expire(self, now: float | None = None) -> list[Workload]:
        return []  # etcd expires leases itself; the watch reports the deletions

    # -- workloads ----------------------------------------------------------------------------

    async def put_workload(
        self, workload: Workload, health: HealthStatus = HealthStatus.HEALTHY,
        ttl: float = DEFAULT_TTL,
    ) -> Lease:
        check_ttl(ttl)
        grant = await self._call("lease/grant", {"TTL": max(1, math.ceil(ttl))})
        lease = _int(grant.get("ID"))
        granted = _int(grant.get("TTL")) or max(1, math.ceil(ttl))
        if lease <= 0:
            raise EtcdError(2, f"etcd at {self._where}: lease grant returned no id: {grant!r}")
        key = self._layout.workload(workload)
        value = encode_workload(workload, health, float(granted))
        try:
            put = await self._call(
                "kv/put",
                {"key": _b64(key), "value": _b64(value), "lease": str(lease), "prev_kv": True},
            )
        except Exception:
            await self._revoke_quietly(lease)
            raise
        previous = put.get("prev_kv")
        old = _int(previous.get("lease")) if isinstance(previous, dict) else 0
        if old and old != lease:
            await self._revoke_quietly(old)  # its only key now belongs to the new lease
        await self._caught_up(_revision(put))
        return Lease(id=lease_id_text(lease), ttl=float(granted),
                     expires_at=self._clock() + granted)

    async def heartbeat(self, lease_id: str) -> bool:
        lease = parse_lease_id(lease_id)
        if lease is None:
            return False
        answer = await self._call("lease/keepalive", {"ID": str(lease)})
        result = answer.get("result")
        return _int((result if isinstance(result, dict) else answer).get("TTL")) > 0

    async def set_health(self, lease_id: str, health: HealthStatus) -> bool:
        lease = parse_lease_id(lease_id)
        if lease is None:
            return False
        for _ in range(_SET_HEALTH_ATTEMPTS):
            key = await self._key_of_lease(lease)
            if key is None:
                return False
            found = await self._call("kv/range", {"key": _b64(key)})
            kvs = found.get("kvs") or []
            if not kvs or _int(kvs[0].get("lease")) != lease:
                return False  # deleted, or registered again under another lease meanwhile
            workload, current, ttl = decode_workload(_unb64(kvs[0].get("value")))
            if current == health:
                return await self.heartbeat(lease_id)
            answer = await self._call("kv/txn", {
                "compare": [{"target": "MOD", "key": _b64(key),
                             "mod_revision": str(_int(kvs[0].get("mod_revision")))}],
                "success": [{"request_put": {
                    "key": _b64(key), "value": _b64(encode_workload(workload, health, ttl)),
                    "lease": str(lease),
                }}],
            })
            if answer.get("succeeded"):
                renewed = await self.heartbeat(lease_id)
                await self._caught_up(_revision(answer))
                return renewed
        raise EtcdError(10, f"etcd at {self._where}: the workload of lease {lease_id} kept "
                            f"changing while its health was set; try again")

    async def remove_workload(self, lease_id: str) -> bool:
        lease = parse_lease_id(lease_id)
        if lease is None or await self._key_of_lease(lease) is None:
            return False  # unknown, lapsed, or not a lease of this registry's workloads
        try:
            answer = await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code == _NOT_FOUND:
                return False
            raise
        await self._caught_up(_revision(answer))
        return True

    async def _key_of_lease(self, lease: int) -> str | None:
        """The workload key attached to a live lease, or None."""
        answer = await self._call("lease/timetolive", {"ID": str(lease), "keys": True})
        if _int(answer.get("TTL")) <= 0:
            return None
        for raw in answer.get("keys") or []:
            key = _unb64(raw).decode(errors="replace")
            if self._layout.is_workload(key):
                return key
        return None

    async def _revoke_quietly(self, lease: int) -> None:
        try:
            await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code != _NOT_FOUND:
                log.warning("etcd store: could not revoke lease %s: %s", lease_id_text(lease), exc)
        except Exception as exc:  # it expires on its own
            log.warning("etcd store: could not revoke lease %s (it will expire): %s",
                        lease_id_text(lease), exc)

    # -- config documents ---------------------------------------------------------------------

    async def put_config(self, source: str, text: str) -> None:
        if self._configs.get(source) == text:
            return
        key = self._layout.config(source)
        await self._config_txn(source, {"request_put": {"key": _b64(key), "value": _b64(text)}})

    async def delete_config(self, source: str) -> bool:
        key = self._layout.config(source)
        answer = await self._config_txn(source, {"request_delete_range": {"key": _b64(key)}})
        responses = answer.get("responses") or [{}]
        deleted = responses[0].get("response_delete_range") or {}
        return _int(deleted.get("deleted")) > 0

    async def _config_txn(self, source: str, operation: Json) -> Json:
        """`operation` and a rewrite of the marker, if the marker is still at the revision
        the mirror has (no config changed elsewhere since `configs()`)."""
        marker = _b64(self._layout.marker)
        answer = await self._call("kv/txn", {
            "compare": [{"target": "MOD", "key": marker,
                         "mod_revision": str(self._config_serial)}],
            "success": [operation, {"request_put": {"key": marker, "value": _b64(source)}}],
            "failure": [{"request_range": {"key": marker}}],
        })
        if not answer.get("succeeded"):
            responses = answer.get("responses") or [{}]
            kvs = (responses[0].get("response_range") or {}).get("kvs") or []
            changed_at = _int(kvs[0].get("mod_revision")) if kvs else _revision(answer)
            await self._caught_up(changed_at)
            raise StoreConflict(
                f"config documents changed at another registry (etcd revision {changed_at}) "
                f"while {source!r} was being validated; validate again"
            )
        await self._caught_up(_revision(answer))
        return answer

    # -- the registry's own values ------------------------------------------------------------

    async def create_value(self, key: str, value: str) -> str:
        """`Store.create_value`: one etcd transaction, put on condition that the key was
        never created, else read what is there."""
        where = _b64(self._layout.value(key))
        answer = await self._call("kv/txn", {
            "compare": [{"target": "CREATE", "key": where, "create_revision": "0"}],
            "success": [{"request_put": {"key": where, "value": _b64(value)}}],
            "failure": [{"request_range": {"key": where}}],
        })
        if answer.get("succeeded"):
            return value
        responses = answer.get("responses") or [{}]
        kvs = (responses[0].get("response_range") or {}).get("kvs") or []
        if not kvs:  # deleted between the compare and the read: cannot happen in one txn
            raise StoreUnavailable(f"etcd at {self._where}: {key!r} vanished in a transaction")
        try:
            return _unb64(kvs[0].get("value")).decode()
        except UnicodeDecodeError:
            raise StoreUnavailable(f"etcd at {self._where}: the value of {key!r} is not "
                                   "UTF-8") from None

    # -- requests -----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise StoreUnavailable(f"etcd store for {self._where} is not started")
        return self._client

    async def _call(self, path: str, body: Json, *, timeout: float | None = None) -> Json:
        """POST `body` to `/v3/<path>` at the first endpoint that answers; the answer.
        `StoreUnavailable` if none can, `EtcdError` if etcd refuses."""
        client = self._http()
        failures = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._current + step) % count
            endpoint = self._endpoints[index]
            try:
                response = await client.post(
                    f"http://{endpoint}/v3/{path}", json=body,
                    timeout=self._timeout if timeout is None else timeout,
                )
                data = response.json()
            except (httpx.TransportError, ValueError) as exc:
                failures.append(f"{endpoint}: {_describe(exc)}")
                continue
            error = _error_of(data, response.status_code)
            if error is not None:
                code, message = error
                if code in _UNAVAILABLE_CODES:
                    failures.append(f"{endpoint}: {message}")
                    continue
                raise EtcdError(code, f"etcd at {endpoint}: {path}: {message}")
            self._current = index
            return data  # type: ignore[no-any-return]
        raise StoreUnavailable(f"etcd at {self._where} is unreachable: {'; '.join(failures)}")

    async def _caught_up(self, revision: int) -> None:
        """Wait until the mirror has applied `revision` (bounded; see the docstring)."""
        if revision <= self._revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (revision, future)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, self._catch_up_timeout)
        except TimeoutError:
            log.warning(
                "etcd store: the watch has not delivered revision %d after %gs (mirror at "
                "%d); going on without it", revision, self._catch_up_timeout, self._revision,
            )
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _advance(self, revision: int) -> None:
        self._revision = max(self._revision, revision)
        for at, future in list(self._waiters):
            if at <= self._revision and not future.done():
                future.set_result(None)

    # -- the mirror ---------------------------------------------------------------------------

    async def _load(self) -> None:
        """Read the whole prefix into the mirror; tell watchers if anything changed."""
        prefix = self._layout.prefix
        answer = await self._call(
            "kv/range", {"key": _b64(prefix), "range_end": _b64(range_end(prefix))}
        )
        workloads: dict[str, _Mirrored] = {}
        configs: dict[str, str] = {}
        serial = 0
        for kv in answer.get("kvs") or []:
            key = _unb64(kv.get("key")).decode(errors="replace")
            if key == self._layout.marker:
                serial = _int(kv.get("mod_revision"))
            else:
                self._put(key, kv, workloads, configs)
        changed = workloads != self._workloads or configs != self._configs
        self._workloads, self._configs, self._config_serial = workloads, configs, serial
        self.loads += 1
        if self.loads > 1:
            log.info("etcd store: read %d workloads and %d config documents again at "
                     "revision %d", len(workloads), len(configs), _revision(answer))
        self._advance(_revision(answer))
        if changed:
            self._watchers.notify()

    def _apply(self, events: list[Json], revision: int) -> None:
        changed = False
        for event in events:
            kv = event.get("kv") or {}
            key = _unb64(kv.get("key")).decode(errors="replace")
            if key == self._layout.marker:
                deleted = event.get("type") == "DELETE"
                self._config_serial = 0 if deleted else _int(kv.get("mod_revision"))
            elif event.get("type") == "DELETE":
                changed |= self._workloads.pop(key, None) is not None
                source = self._layout.source_of(key)
                changed |= source is not None and self._configs.pop(source, None) is not None
            else:
                changed |= self._put(key, kv, self._workloads, self._configs)
        if changed:
            self._watchers.notify()
        self._advance(revision)

    def _put(
        self, key: str, kv: Json, workloads: dict[str, _Mirrored], configs: dict[str, str]
    ) -> bool:
        """Mirror one key's value; True if what readers see changed."""
        value = _unb64(kv.get("value"))
        if self._layout.is_workload(key):
            try:
                workload, health, _ = decode_workload(value)
                if self._layout.workload(workload) != key:
                    raise ValueError(f"it holds {workload.key!r}, whose key is "
                                     f"{self._layout.workload(workload)!r}")
            except ValueError as exc:
                log.error("etcd store: ignoring workload key %r: %s", key, exc)
                return workloads.pop(key, None) is not None
            entry = _Mirrored(workload, health, _int(kv.get("lease")))
            old = workloads.get(key)
            workloads[key] = entry
            return old is None or (old.workload, old.health) != (workload, health)
        source = self._layout.source_of(key)
        if source is not None:
            try:
                text = value.decode()
            except UnicodeDecodeError as exc:
                log.error("etcd store: ignoring config key %r: not UTF-8 (%s)", key, exc)
                return configs.pop(source, None) is not None
            changed = configs.get(source) != text
            configs[source] = text
            return changed
        log.debug("etcd store: ignoring unknown key %r", key)
        return False

    # -- watching -----------------------------------------------------------------------------

    async def _run_watch(self) -> None:
        """Watch the prefix forever: reconnect with backoff, resume from the last revision,
        re-read everything after a compaction (at once) or a cancellation (after the
        backoff, so a watch etcd keeps refusing is not retried in a tight loop)."""
        delay = self._backoff[0]
        reload = False
        while True:
            try:
                if reload:
                    await self._load()
                    reload = False
                reload = await self._watch_attempt()
                continue  # compacted: re-read at once
            except asyncio.CancelledError:
                raise
            except (StoreUnavailable, EtcdError, httpx.HTTPError, ConnectionError,
                    ValueError) as exc:
                reload = reload or isinstance(exc, _WatchCanceled)
                self._lost(_describe(exc))
            except Exception as exc:  # a bug: say so loudly, and keep watching
                log.exception("etcd store: the watch failed unexpectedly; reconnecting")
                self._lost(_describe(exc))
            if self._watching:  # it was working: start the backoff over
                self._watching = False
                delay = self._backoff[0]
            if len(self._endpoints) > 1:
                self._current = (self._current + 1) % len(self._endpoints)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._backoff[1])

    async def _watch_attempt(self) -> bool:
        """One watch connection, in a task the probe can cancel. True if it ended because
        the revision to resume from was compacted."""
        attempt = asyncio.ensure_future(self._watch())
        self._attempt = attempt
        try:
            await asyncio.wait([attempt])
        finally:
            self._attempt = None
            if not attempt.done():  # we are being cancelled: take the attempt down with us
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
        if attempt.cancelled():
            raise ConnectionError(f"etcd at {self._endpoints[self._current]} stopped answering")
        return attempt.result()

    async def _watch(self) -> bool:
        endpoint = self._endpoints[self._current]
        start = self._revision + 1
        prefix = self._layout.prefix
        body = {"create_request": {
            "key": _b64(prefix), "range_end": _b64(range_end(prefix)),
            "start_revision": str(start),
        }}
        async with self._http().stream(
            "POST", f"http://{endpoint}/v3/watch", json=body,
            timeout=httpx.Timeout(self._timeout, read=None),
        ) as response:
            if response.status_code != 200:
                raise ConnectionError(
                    f"etcd at {endpoint}: watch answered HTTP {response.status_code}"
                )
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                message = json.loads(line)
                error = _error_of(message, 200)
                if error is not None:
                    raise ConnectionError(f"etcd at {endpoint}: watch failed: {error[1]}")
                result = message.get("result") or {}
                compacted = _int(result.get("compact_revision"))
                if compacted:
                    log.warning(
                        "etcd store: etcd at %s has compacted its history up to revision %d, "
                        "past revision %d where the watch was to resume: reading everything "
                        "again", endpoint, compacted, start,
                    )
                    return True
                if result.get("canceled"):
                    reason = result.get("cancel_reason") or "no reason given"
                    raise _WatchCanceled(f"etcd at {endpoint}: watch canceled: {reason}")
                if result.get("created"):
                    self._up(endpoint, start)
                    continue
                events = result.get("events") or []
                if events:
                    self._apply(events, _revision(result))
        raise ConnectionError(f"etcd at {endpoint} closed the watch stream")

    async def _run_probe(self) -> None:
        """Ask etcd something small every `probe_interval`; if it does not answer while a
        watch is open, the watch's connection is likely dead: drop it and reconnect."""
        while True:
            await asyncio.sleep(self._probe_interval)
            attempt = self._attempt
            if attempt is None or not self._watching:
                continue  # the watch is reconnecting already
            try:
                await self._call(
                    "kv/range", {"key": _b64(self._layout.marker), "count_only": True},
                    timeout=self._probe_interval,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt is self._attempt:
                    log.warning("etcd store: probe failed (%s): reconnecting the watch",
                                _describe(exc))
                    attempt.cancel()

    def _up(self, endpoint: str, start: int) -> None:
        self._watching = True
        if not self._connected:
            down = self._clock() - self._down_since if self._down_since is not None else 0.0
            log.info(
                "etcd store: etcd at %s is back after %.1fs; watching from revision %d",
                endpoint, down, start,
            )
        self._connected = True
        self._error = ""
        self._down_since = None

    def _lost(self, reason: str) -> None:
        now = self._clock()
        self._error = reason
        if self._connected or self._down_since is None:
            self._connected = False
            self._down_since = now
            self._last_warning = now
            log.warning(
                "etcd store: lost etcd at %s (%s); serving the last known state and "
                "reconnecting", self._where, reason,
            )
        elif now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning("etcd store: etcd at %s still unreachable after %.0fs: %s",
                        self._where, now - self._down_since, reason)
        else:
            log.debug("etcd store: reconnecting to etcd at %s failed: %s", self._where, reason)

