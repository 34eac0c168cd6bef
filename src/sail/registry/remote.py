"""Clients of the registry API (`sail.registry.api`): `RemoteRegistrar` keeps a process's
workloads registered; `AdminClient` applies and deletes config and reads the status.

Both use *sync* grpcio, like sail's xDS client: grpc.aio state inherited across a fork
crashes the child, and its poller is bound to the first event loop that used it (see
`sail.xds.client`), while a service's own code may run any event loop, or none.

**Leases and heartbeats.** `RemoteRegistrar.register` takes a lease of `ttl` seconds; a
daemon thread (one per registrar) heartbeats every lease each `heartbeat_interval`. If the
process dies, heartbeats stop and the registry removes the workload once the lease lapses,
so a `kill -9`-ed workload leaves the mesh within about `ttl` seconds.

**When the registry restarts** with the default file store or the memory store it has
forgotten every lease (leases are never written to disk); the next heartbeat is answered
NOT_FOUND and the thread registers the workload again, with the health it last set. With
the etcd store a lease is an etcd lease, so it survives the restart and heartbeats go on.

**Several registries** (`RemoteRegistrar(["a:15010", "b:15010"], ...)`, what
`Mesh.from_bootstrap(register=True)` passes from the bootstrap's `xds_servers`): the
registrar uses one at a time, starting with the first. A call that finds the one in use
unreachable (UNAVAILABLE, DEADLINE_EXCEEDED) moves to the next at once and is made there,
at most one round over the list per call, and the registrar stays with the one that
answered; each move is logged as a warning naming the registry left and the one now used.
The addresses are meant to be replicas of one mesh (registries sharing an etcd), where a
lease taken at one is renewed at any other; a registry that does not know the lease (one
with a store of its own) answers NOT_FOUND, and the workload registers there again.

**While no registry answers** the thread retries with backoff (0.25 s, ×1.6, up to
`heartbeat_interval`; each retry one round over the list), logs a warning when it starts
failing (and every minute while it goes on), and an info line when a registry answers
again. It never stops on an error; only `close()` stops it.

**Graceful drain**:

```python
registrar.set_health(workload, HealthStatus.DRAINING)  # EDS tells clients: stop picking it
time.sleep(drain_seconds)                              # requests in flight finish
registrar.deregister(workload)                         # gone from EDS
registrar.close()
```

DRAINING endpoints take no new requests (only HEALTHY and UNKNOWN do), but stay in EDS so
clients can finish what they started; `deregister` then removes the endpoint. `close()`
alone deregisters nothing: the leases simply lapse after `ttl`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import grpc

from sail.errors import ConfigError, SailError, XdsError
from sail.model import HealthStatus
from sail.registration import Workload
from sail.registry.wire import decode, encode, method_path, workload_to_json
from sail.xds.client import Backoff

__all__ = [
    "AdminClient",
    "RegistryError",
    "RemoteRegistrar",
    "create_certificate",
    "registry_error",
]

log = logging.getLogger("sail.registry.remote")

_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_WARN_EVERY = 60.0


class RegistryError(XdsError):
    """The registry refused a call, or could not be reached (a `ConnectionError`).

    `code` is the gRPC status code (`grpc.StatusCode`); the message is the registry's own,
    which names the method and what was wrong.
    """

    def __init__(self, message: str, code: Any) -> None:
        super().__init__(message)
        self.code = code


def registry_error(target: str, method: str, exc: Any) -> SailError:
    """Map a `grpc.RpcError` from the registry to sail's tree: INVALID_ARGUMENT (bad input,
    rejected config) is a `ConfigError`; the rest is a `RegistryError`."""
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ConfigError(details)
    if code in _UNREACHABLE:
        return RegistryError(f"cannot reach the registry at {target} ({method}): {details}", code)
    return RegistryError(details, code)


class _Channel:
    """One gRPC channel to the registry, with the token and a timeout on every call."""

    def __init__(
        self,
        target: str,
        token: str | None,
        credentials: Any,
        timeout: float,
        max_reconnect_backoff: float = 120.0,
    ):
        self.target = target
        # gRPC's own reconnect backoff grows to 120 s, and a call made meanwhile fails at
        # once without trying: bounding it bounds how long a registry that came back
        # goes unnoticed.
        self._options = [
            ("grpc.initial_reconnect_backoff_ms", min(1000, int(max_reconnect_backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff * 1000)),
        ]
        # A callable gives the credentials for each new channel (a workload certificate
        # that rotates); the channel is made again after the registry was unreachable.
        self._factory = credentials if callable(credentials) else None
        self._credentials = None if callable(credentials) else credentials
        self._channel = self._open()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._stubs: dict[str, Any] = {}

    def _open(self) -> Any:
        credentials = self._factory() if self._factory is not None else self._credentials
        if credentials is None:
            return grpc.insecure_channel(self.target, options=self._options)
        return grpc.secure_channel(self.target, credentials, options=self._options)

    def call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Call one method; raises `grpc.RpcError` as the registry answered."""
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self._channel.unary_unary(
                method_path(method), request_serializer=encode, response_deserializer=decode
            )
        try:
            reply = stub(body, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            if self._factory is not None and exc.code() in _UNREACHABLE:
                try:
                    fresh = self._open()  # the next call dials with the credentials then
                except SailError as error:  # unreadable files: keep the channel, say why
                    log.warning("registry at %s: %s", self.target, error)
                else:
                    self._channel.close()
                    self._channel, self._stubs = fresh, {}
            raise
        return dict(reply) if isinstance(reply, dict) else {}

    def close(self) -> None:
        self._channel.close()


@attrs.define
class _Entry:
    workload: Workload
    health: HealthStatus
    lease_id: str | None = None  # None: not registered (yet, or any more)
    sent_health: HealthStatus | None = None


class RemoteRegistrar:
    """A `sail.registration.Registrar` that registers workloads with a remote registry.

    **Parameters**

    * `target` - the registry's gRPC address (`registry.mesh:15010`), or a sequence of them
      (replicas sharing one store, in order of preference): the registrar fails over to
      the next when the one in use is unreachable (see the module docstring).
    * `token` - its bearer token, or `None` if it runs without authentication.
    * `heartbeat_interval` - seconds between heartbeats (default 3); must be below `ttl`.
    * `ttl` - the lease asked for (default 10 s): how long a dead workload stays in EDS.
    * `call_timeout` - deadline of each call (default 5 s).
    * `credentials` - `grpc.ChannelCredentials` for TLS; `None` is plaintext; or a callable
      returning either, asked again for each new connection after the registry was
      unreachable (a workload certificate that is obtained, then rotates).
    * `backoff` - retry delays while the registry is unreachable.

    `register` makes one attempt at once. If the registry *refuses* it (a bad token, an
    invalid workload) it raises (`RegistryError`, `ConfigError`) and keeps nothing, so a
    misconfiguration shows at startup; if the registry is *unreachable* it logs a warning and
    returns, and the heartbeat thread registers the workload as soon as it can. `set_health`
    and `deregister` never raise for the registry's sake: a change not delivered is retried by
    the thread, and an undelivered deregistration lapses with its lease. A call made while
    the registry in use is unreachable is made at the next one before any of this applies.

    Thread-safe: calls are serialized by one lock (a call waits for at most one RPC per
    registry address).
    """

    def __init__(
        self,
        target: str | Sequence[str],
        token: str | None,
        *,
        heartbeat_interval: float = 3.0,
        ttl: float = 10.0,
        call_timeout: float = 5.0,
        credentials: Any = None,
        backoff: Backoff | None = None,
    ) -> None:
        if not 0 < heartbeat_interval < ttl:
            raise ValueError(
                f"heartbeat_interval ({heartbeat_interval!r}) must be positive and below the "
                f"lease ttl ({ttl!r}); a third of it leaves room for two lost heartbeats"
            )
        targets = (target,) if isinstance(target, str) else tuple(target)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"target must be a registry address or a list of them, got "
                             f"{target!r}")
        self._targets = targets
        self._channels = [
            _Channel(t, token, credentials, call_timeout, max_reconnect_backoff=heartbeat_interval)
            for t in targets
        ]
        self._current = 0  # the registry in use: the one that answered last
        self._interval = heartbeat_interval
        self._ttl = ttl
        self._backoff = backoff or Backoff(initial=0.25, maximum=heartbeat_interval)
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._warned_at = 0.0

    @property
    def targets(self) -> tuple[str, ...]:
        """Every registry address, in order of preference."""
        return self._targets

    @property
    def target(self) -> str:
        """The registry in use now: the one that answered last (the first, to begin with)."""
        return self._targets[self._current]

    @property
    def _target(self) -> str:
        return self._targets[self._current]

    @property
    def _channel(self) -> _Channel:
        """The channel to the registry in use."""
        return self._channels[self._current]

    def lease_id(self, workload: Workload) -> str | None:
        """The workload's current lease, `None` if it is not registered right now."""
        with self._lock:
            entry = self._entries.get(workload.key)
            return entry.lease_id if entry is not None else None

    def register(self, workload: Workload) -> None:
        """Register `workload` as HEALTHY (again, if it was: a new lease replaces the old)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RemoteRegistrar is closed")
            self._entries[workload.key] = _Entry(workload, HealthStatus.HEALTHY)
            self._start()
            try:
                self._sync(workload.key)
            except grpc.RpcError as exc:
                if exc.code() in _UNREACHABLE:
                    self._failed(exc)
                    self._wake.set()
                    return
                del self._entries[workload.key]
                raise registry_error(self._target, "Register", exc) from None
            self._succeeded()

    def set_health(self, workload: Workload, health: HealthStatus) -> None:
        """Change the workload's health (`DRAINING` to drain). A workload not registered yet
        is registered with that health, as `InProcessRegistrar` does."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RemoteRegistrar is closed")
            entry = self._entries.setdefault(workload.key, _Entry(workload, health))
            entry.health = health
            self._start()
            try:
                self._sync(workload.key)
            except grpc.RpcError as exc:
                self._failed(exc)
                self._wake.set()  # the thread delivers it when the registry answers
                return
            self._succeeded()

    def deregister(self, workload: Workload) -> None:
        """Remove the workload now. If the registry cannot be told, its lease lapses."""
        with self._lock:
            entry = self._entries.pop(workload.key, None)
            if entry is None or entry.lease_id is None or self._closed:
                return
            try:
                self._call("Deregister", {"lease_id": entry.lease_id})
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "could not deregister %s at %s (%s: %s); its lease lapses within %gs",
                        workload.key, self._target, exc.code().name, exc.details(), self._ttl,
                    )
                return
            log.info("deregistered %s from %s", workload.key, self._target)

    def close(self) -> None:
        """Stop heartbeating and close the channel. Deregisters nothing (see the module
        docstring for a drain); idempotent."""
        self._closed = True
        self._wake.set()
        for channel in self._channels:
            channel.close()  # cancels a call in flight on the thread
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def __enter__(self) -> RemoteRegistrar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the heartbeat thread -----------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="sail-registrar", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._closed:
            self._wake.clear()
            try:
                self._sweep()
            except Exception as exc:  # never die: log, back off, go on
                if self._closed:
                    return
                if isinstance(exc, grpc.RpcError):
                    self._failed(exc)
                else:
                    log.exception("registrar heartbeat to %s failed; going on", self._target)
                delay = self._backoff.delay(failures)
                failures += 1
            else:
                self._succeeded()
                failures = 0
                delay = self._interval
            self._wake.wait(delay)

    def _sweep(self) -> None:
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            if self._closed:
                return
            with self._lock:
                self._sync(key)

    def _sync(self, key: str) -> None:
        """Bring one workload's lease up to date: heartbeat it, send a changed health, or
        register it (again). Called with the lock held; raises `grpc.RpcError`."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.lease_id is not None:
            try:
                if entry.sent_health != entry.health:
                    body = {"lease_id": entry.lease_id, "health": entry.health.name}
                    self._call("SetHealth", body)
                    entry.sent_health = entry.health
                    log.info("%s is now %s at %s", key, entry.health.name, self._target)
                else:
                    self._call("Heartbeat", {"lease_id": entry.lease_id})
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            log.warning(
                "the registry at %s no longer knows the lease of %s (it expired, or the "
                "registry restarted): registering again", self._target, key,
            )
            entry.lease_id = None
        reply = self._call("Register", workload_to_json(entry.workload, entry.health, self._ttl))
        entry.lease_id = str(reply.get("lease_id", ""))
        entry.sent_health = entry.health
        log.info("registered %s at %s (lease %s)", key, self._target, entry.lease_id)

    def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Call `method` at the registry in use; if it is unreachable, at the next, at most
        one round over the list. The first that answers (even with a refusal) is the one in
        use from then on. Called with the lock held; raises `grpc.RpcError`: the refusal,
        or the last registry's error after a round in which none answered."""
        start = self._current
        count = len(self._channels)
        left: grpc.RpcError | None = None  # why the one in use was left
        for step in range(count):
            index = (start + step) % count
            try:
                reply = self._channels[index].call(method, body)
            except grpc.RpcError as exc:
                if exc.code() in _UNREACHABLE and step < count - 1 and not self._closed:
                    left = left or exc
                    log.debug("registry at %s unreachable (%s: %s) for %s; trying %s",
                              self._targets[index], exc.code().name, exc.details(), method,
                              self._targets[(index + 1) % count])
                    continue
                if exc.code() not in _UNREACHABLE:
                    self._use(index, left)
                raise
            self._use(index, left)
            return reply
        raise AssertionError("not reached: the last step returns or raises")

    def _use(self, index: int, left: grpc.RpcError | None) -> None:
        """Make the registry at `index`, which just answered, the one in use."""
        if index == self._current or left is None:
            return
        log.warning(
            "registry at %s is unreachable (%s: %s); the registrar now uses the registry at %s",
            self._targets[self._current], left.code().name, left.details(),
            self._targets[index],
        )
        self._current = index

    def _failed(self, exc: Any) -> None:
        # Loud when failures start and once a minute while they go on; quiet in between.
        now = time.monotonic()
        with self._lock:
            loud = self._failing_since is None or now - self._warned_at >= _WARN_EVERY
            if self._failing_since is None:
                self._failing_since = now
            if loud:
                self._warned_at = now
        log.log(
            logging.WARNING if loud else logging.DEBUG,
            "%s at %s failed (%s: %s); retrying with backoff. Registered workloads stay "
            "in the mesh until their leases (%gs) lapse",
            "registry" if len(self._targets) == 1 else "every registry",
            ", ".join(self._targets), exc.code().name, exc.details(), self._ttl,
        )

    def _succeeded(self) -> None:
        with self._lock:
            since, self._failing_since = self._failing_since, None
        if since is not None:
            log.info(
                "registry at %s answers again (after %.1fs)", self._target,
                time.monotonic() - since,
            )


class AdminClient:
    """Admin calls for the `sail apply`, `sail delete` and `sail status` commands.

    **Parameters**

    * `target`, `token`, `credentials` - as for `RemoteRegistrar`: with several registry
      addresses (replicas sharing one store), a call that finds one unreachable is made at
      the next.
    * `timeout` - deadline of each call (default 10 s; Apply validates the whole config).

    Errors: a config the registry rejects is a `ConfigError` with the registry's message
    (which names the document and field); anything else, including an unreachable registry
    or a wrong token, is a `RegistryError` (an `XdsError`).
    """

    def __init__(
        self, target: str | Sequence[str], token: str | None, *, timeout: float = 10.0,
        credentials: Any = None,
    ) -> None:
        targets = (target,) if isinstance(target, str) else tuple(target)
        if not targets:
            raise ValueError("AdminClient needs a registry address")
        self._channels = [_Channel(t, token, credentials, timeout) for t in targets]

    def apply(self, source: str, yaml_text: str) -> None:
        """Store `yaml_text` (Istio-style YAML) under `source`, replacing what was there."""
        self._call("Apply", {"source": source, "yaml": yaml_text})

    def delete(self, source: str) -> None:
        """Remove the config stored under `source` (`RegistryError` NOT_FOUND if none)."""
        self._call("Delete", {"source": source})

    def status(self) -> dict[str, Any]:
        """The registry's status, as its server assembles it."""
        return self._call("Status", {})

    def create_join_token(
        self, namespace: str, service_account: str, ttl: float | None = None
    ) -> str:
        """A join token granting `spiffe://<trust-domain>/ns/<namespace>/sa/<account>` its
        first certificate, valid `ttl` seconds (the registry's default: 24 h)."""
        body: dict[str, Any] = {"namespace": namespace, "service_account": service_account}
        if ttl is not None:
            body["ttl"] = ttl
        return str(self._call("CreateJoinToken", body)["token"])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return _call_first(self._channels, method, body)


def _call_first(channels: Sequence[_Channel], method: str, body: Mapping[str, Any]
                ) -> dict[str, Any]:
    """`method` at the first registry that answers (a refusal is an answer); sail's error
    for the last failure when none does."""
    for i, channel in enumerate(channels):
        try:
            return channel.call(method, body)
        except grpc.RpcError as exc:
            if exc.code() in _UNREACHABLE and i + 1 < len(channels):
                log.warning("registry at %s is unreachable (%s); trying %s", channel.target,
                            exc.code().name, channels[i + 1].target)
                continue
            raise registry_error(channel.target, method, exc) from None
    raise AssertionError("no registry address")


def create_certificate(
    target: str | Sequence[str], join_token: str | None, csr_pem: str, lifetime: float = 0,
    *, current_chain: Sequence[str] | None = None, timeout: float = 10.0,
    credentials: Any = None,
) -> list[str]:
    """Ask the registry's CA to sign `csr_pem` (`CreateCertificate`): the chain, leaf first.
    The credential is `join_token` for a first certificate, or `current_chain` (the
    certificate to renew; the CSR for its key) for a renewal. `lifetime` 0 takes the CA's
    default (24 h). A refusal is a `RegistryError` whose message says why (a bad token is
    UNAUTHENTICATED, a CSR for another identity PERMISSION_DENIED)."""
    targets = (target,) if isinstance(target, str) else tuple(target)
    body: dict[str, Any] = {"csr": csr_pem, "validity_duration": lifetime}
    if current_chain is not None:
        body["current_chain"] = list(current_chain)
    channels = [_Channel(t, join_token, credentials, timeout) for t in targets]
    try:
        reply = _call_first(channels, "CreateCertificate", body)
    finally:
        for channel in channels:
            channel.close()
    chain = reply.get("cert_chain")
    if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
        raise RegistryError(f"the registry at {target} answered CreateCertificate without "
                            "a cert_chain", grpc.StatusCode.INTERNAL)
    return chain
