"""Server side for gRPC: grpcio servers, sync and `grpc.aio`, as mesh workloads.

`MeshServer` wraps `grpc.server(...)` and `AioMeshServer` wraps `grpc.aio.server(...)`. They
are drop-in: generated `add_XServicer_to_server(servicer, server)` and the usual
`add_generic_rpc_handlers`, `add_insecure_port`, `start`, `stop`, `wait_for_termination`
work unchanged. On top of grpc they

* bind `address:port` themselves (port 0 picks a free one) and register that workload;
* serve the standard health service (`grpc.health.v1.Health`, grpcio-health-checking), wired
  to readiness: SERVING for `""` and each service added once started *and* registered,
  NOT_SERVING from the moment a drain begins;
* drain on `stop()`: health NOT_SERVING, the workload DRAINING in the registry (clients stop
  picking it when EDS tells them), calls keep being served until none is in flight and none
  arrived for `quiet` seconds (at most `drain` seconds), then the workload is deregistered
  and the grpc server stopped with `grace`. Envoy's drain and Istio's
  `terminationDrainDuration` work the same way;
* run every call (but health checks) with a `sail.RequestContext` (`sail.current_request()`:
  method `POST`, path `/pkg.Service/Method`, headers = the invocation metadata without
  `-bin` keys) and with the caller's deadline (`grpc-timeout`) as the inherited deadline, so
  calls the handler makes through the mesh get only the time its caller has left.

That last part is a server interceptor installed before the user's own (`sail.grpc._calls`).
With `xds=` a server is xDS-enabled (gRFC A36, `sail.grpc.xds_server`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import attrs
import grpc
import grpc.aio
from grpc_health.v1 import health as health_checking
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sail.grpc._calls import POLL, AioInterceptor, Interceptor, Scope, drain_wait
from sail.grpc._tls import server_credentials
from sail.grpc.xds_server import ServingState, ServingWatch
from sail.model import HealthStatus, host_port
from sail.registration import Registrar, Workload

if TYPE_CHECKING:
    from sail.seam import MeshSeam
    from sail.security.tls import ServerTls

__all__ = ["AioMeshServer", "MeshServer"]

log = logging.getLogger("sail")

# An xDS-enabled server that may serve but cannot open its port tries again this often
# (gRFC A36: "opening the port must be retried automatically").
_LISTEN_RETRY = 5.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- the servers ------------------------------------------------------------------------------


def _service_name(handler: Any) -> str | None:
    """The service a generic handler serves, when it says (`method_handlers_generic_handler`
    and generated code's handlers do); `None` for a catch-all."""
    name = getattr(handler, "service_name", None)
    if not callable(name):
        return None
    try:
        value = name()
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


class _MeshServerBase:
    """What both servers share: the workload, binding, handler bookkeeping."""

    def __init__(
        self,
        service: str,
        registrar: Registrar,
        *,
        address: str,
        labels: Mapping[str, str] | None,
        weight: int,
        service_port: int | None,
        drain: float,
        quiet: float,
        xds: MeshSeam | None,
        on_serving: Callable[[ServingState], None] | None,
        tls: ServerTls | None = None,
        identity: Callable[[], str | None] | None = None,
    ) -> None:
        self._registrar = registrar
        self._tls = tls
        self._identity_of = identity
        self._xds = xds
        self._on_serving = on_serving
        self._listening = xds is None  # an xDS-enabled server listens once it may serve
        self._credentials: Any = None
        self._drain = drain
        self._quiet = quiet
        self._scope = Scope()
        self._service = service
        self._address = address
        self._labels = dict(labels or {})
        self._weight = weight
        self._service_port = service_port
        self._services: list[str] = []
        self._registered = False
        self._server: Any = None
        self.health: Any = None
        self.workload: Workload
        self.port: int

    def _bind(self, port: int, credentials: Any) -> None:
        if self._tls is not None:
            if credentials is not None:
                raise ValueError("give credentials or the mesh's mTLS (tls=), not both")
            if self._xds is None:
                credentials = server_credentials(self._tls)
                self._scope.tls = self._tls
        self._credentials = credentials
        if self._xds is not None:
            # Not listening before the Listener says so: keep the port, open it later,
            # with the transport the Listener asks for then (`_listen`).
            self._set_port(port or _free_port(self._address))
            self._scope.watch = ServingWatch(
                self._xds, self._address, self.port, self._serving_changed,
                providers=("default",) if self._tls is not None else (),
            )
            return
        self._set_port(self._listen(port))

    def _listen(self, port: int) -> int:
        target = host_port(self._address, port)
        credentials = self._credentials
        watch = self._scope.watch
        tls = watch is not None and watch.state.tls  # xDS: the transport the Listener asks
        if tls:
            assert self._tls is not None  # else the watch says not serving
            credentials = server_credentials(self._tls)
        try:
            if credentials is None:
                bound = self._server.add_insecure_port(target)
            else:
                bound = self._server.add_secure_port(target, credentials)
        except RuntimeError as exc:  # grpcio raises when it cannot bind
            raise OSError(f"sail: cannot listen on {target}: {exc}") from exc
        if not bound:  # older grpcio returns 0 instead
            raise OSError(f"sail: cannot listen on {target}")
        if watch is not None:
            watch.listening_tls = tls
            if tls:
                self._scope.tls = self._tls
        return int(bound)

    def _set_port(self, port: int) -> None:
        self.port = port
        self.workload = Workload(
            service=self._service,
            address=self._address,
            port=self.port,
            labels=self._labels,
            weight=self._weight,
            service_port=self._service_port,
            permissive=False,  # grpcio serves one transport per port
        )
        self._scope.workload = self.workload

    def _claim_identity(self) -> None:
        """Put the workload's SPIFFE ID on its registration (blocks until the mesh knows
        it, at most as long as `identity` waits)."""
        if self._identity_of is not None and self.workload.identity is None:
            self.workload = attrs.evolve(self.workload, identity=self._identity_of())
            self._scope.workload = self.workload

    @property
    def serving(self) -> bool:
        """Whether calls are served: always once started, for an xDS-enabled server only
        while its Listener says so (see `sail.grpc.xds_server`)."""
        watch = self._scope.watch
        if watch is None:
            return self._registered
        return self._listening and watch.state.serving

    @property
    def serving_state(self) -> ServingState | None:
        """An xDS-enabled server's verdict and why; `None` for other servers."""
        watch = self._scope.watch
        return watch.state if watch is not None else None

    def _serving_changed(self, state: ServingState) -> None:
        watch = self._scope.watch
        name = watch.name if watch is not None else "?"
        if state.serving:
            log.info("sail: gRPC workload %s serving (Listener %r)", self.workload.key, name)
        else:
            log.warning("sail: gRPC workload %s not serving: %s", self.workload.key, state.reason)
        if self._on_serving is not None:
            try:
                self._on_serving(state)
            except Exception:
                log.exception("sail: the on_serving callback of %s failed", self.workload.key)
        self._apply_serving()

    def _apply_serving(self) -> None:
        raise NotImplementedError

    @property
    def grpc_server(self) -> Any:
        """The wrapped `grpc.Server` / `grpc.aio.Server`."""
        return self._server

    @property
    def inflight(self) -> int:
        """Calls being served now (health checks aside)."""
        return self._scope.traffic.inflight

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        """As grpc's; the services the handlers name get a health status."""
        handlers = tuple(generic_rpc_handlers)
        for handler in handlers:
            name = _service_name(handler)
            if name is not None and name not in self._services:
                self._services.append(name)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Any]
    ) -> None:
        """As grpc's (grpcio ≥ 1.63); `service_name` gets a health status."""
        if service_name not in self._services:
            self._services.append(service_name)
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        """Listen on another address too (not registered: the workload is `address:port`)."""
        return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        """Listen on another address with TLS too (not registered either)."""
        return int(self._server.add_secure_port(address, server_credentials))

    @property
    def services(self) -> Sequence[str]:
        """The service names added so far: each gets a health status on `start()`."""
        return tuple(self._services)


class MeshServer(_MeshServerBase):
    """A `grpc.server(...)` as a mesh workload of service `service`: register on `start()`,
    drain on `stop()`, a request context and inherited deadline in every handler.

    ```python
    server = MeshServer("ratings", mesh.registrar, labels={"version": "v1"})
    ratings_pb2_grpc.add_RatingsServicer_to_server(Ratings(), server)
    server.start()                 # serving, registered at 127.0.0.1:<server.port>, SERVING
    server.wait_for_termination()  # stop() from a SIGTERM handler drains, then stops
    ```

    **Parameters**

    * `service` - the service name the workload is registered under.
    * `registrar` - where it is registered (`Mesh.registrar`).
    * `port`, `address` - where to listen (`port=0`: a free port, the one registered; see
      `.port`). The workload is registered at this address, so make it one clients can
      reach (not `0.0.0.0`).
    * `labels`, `weight`, `service_port` - of the `Workload`.
    * `drain` - the longest `stop()` keeps serving after the workload turned DRAINING
      (default 5 s; `0`: no drain). `quiet` - the drain ends earlier once no call is in
      flight and none arrived for this long (default 0.5 s).
    * `thread_pool` / `max_workers` - the pool handlers run on (default: a
      `ThreadPoolExecutor(max_workers)` the server owns and shuts down).
    * `interceptors` - the user's own; they run after sail's (sail's sees the call first,
      so the request context is set when they run their handlers).
    * `handlers`, `options`, `maximum_concurrent_rpcs`, `compression` - as `grpc.server`.
    * `credentials` - `grpc.ServerCredentials` to listen with TLS; `None` for plaintext.
    * `tls` - serve the mesh's mTLS instead (`sail.security.tls.ServerTls`, what
      `mesh.grpc_server(mode="STRICT")` gives): a client must present a certificate the
      mesh's roots verify; each new connection gets the current certificate; the caller
      is `sail.current_request().peer`. `identity` returns the workload's SPIFFE ID, put
      on its registration at `start()` (so clients expect it).
    * `health` - serve `grpc.health.v1.Health` (default). `.health` is the servicer.
    * `xds` - the seam of a `Mesh` whose control plane gives this server its Listener (gRFC A36; see
      `sail.grpc.xds_server`): the port opens once the Listener arrives, and calls are
      served as its routes say. `on_serving(state)` is called (on the mesh's config thread)
      each time the `ServingState` changes; changes are logged either way.
    """

    def __init__(
        self,
        service: str,
        registrar: Registrar,
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        labels: Mapping[str, str] | None = None,
        weight: int = 1,
        service_port: int | None = None,
        drain: float = 5.0,
        quiet: float = 0.5,
        thread_pool: Executor | None = None,
        max_workers: int | None = None,
        interceptors: Iterable[Any] = (),
        handlers: Iterable[Any] = (),
        options: Sequence[tuple[str, Any]] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
        credentials: Any = None,
        health: bool = True,
        xds: MeshSeam | None = None,
        on_serving: Callable[[ServingState], None] | None = None,
        tls: ServerTls | None = None,
        identity: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(
            service, registrar, address=address, labels=labels, weight=weight,
            service_port=service_port, drain=drain, quiet=quiet, xds=xds,
            on_serving=on_serving, tls=tls, identity=identity,
        )
        self._own_pool: ThreadPoolExecutor | None = None
        if thread_pool is None:
            thread_pool = self._own_pool = ThreadPoolExecutor(
                max_workers=max_workers, thread_name_prefix=f"sail-grpc-{service}"
            )
        self._server = grpc.server(
            thread_pool,
            interceptors=[Interceptor(self._scope), *interceptors],
            options=options,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            compression=compression,
        )
        if health:
            self.health = _sync_health()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.add_generic_rpc_handlers(handlers)
        self._lock = threading.Lock()  # start/stop only, never per call
        self._stopped: threading.Event | None = None
        self._hurry = threading.Event()
        try:
            self._bind(port, credentials)
        except BaseException:
            self._shutdown_pool()
            raise

    def start(self) -> None:
        """Start serving, register the workload, then report SERVING.

        An xDS-enabled server registers and returns at once; it opens its port and reports
        SERVING when its Listener arrives (see `sail.grpc.xds_server`)."""
        watch = self._scope.watch
        if watch is None:
            self._server.start()
        try:
            self._claim_identity()
            self._registrar.register(self.workload)
        except BaseException:
            self._server.stop(None)
            self._shutdown_pool()
            raise
        self._registered = True
        if watch is not None:
            watch.start()  # may open the port at once, when the config is at hand
            return
        self._set_health(_SERVING)
        log.info("sail: gRPC workload %s serving", self.workload.key)

    def _set_health(self, status: Any) -> None:
        if self.health is not None:
            for name in ("", *self._services):
                self.health.set(name, status)

    def _apply_serving(self) -> None:
        watch = self._scope.watch
        assert watch is not None
        with self._lock:  # the config thread and start() may both get here
            if not self._registered or self._stopped is not None:
                return
            serving = watch.state.serving
            if serving and not self._listening:
                try:
                    self._listen(self.port)
                except OSError:
                    log.exception("sail: %s may serve but cannot listen; trying again in "
                                  "%.0fs", self.workload.key, _LISTEN_RETRY)
                    retry = threading.Timer(_LISTEN_RETRY, self._apply_serving)
                    retry.daemon = True
                    retry.start()
                    return
                self._server.start()
                self._listening = True
            self._set_health(_SERVING if serving else _NOT_SERVING)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Drain, deregister and stop; returns at once, with an event set once stopped.

        Health NOT_SERVING and the workload DRAINING first; calls keep being served until
        none is in flight and none arrived for `quiet` seconds (at most `drain`); then the
        workload is deregistered and the grpc server stopped with `grace` (calls still
        running after it are cancelled; `None`: at once). A second call cuts the drain
        short and returns the same event."""
        with self._lock:
            if self._stopped is not None:
                self._hurry.set()
                return self._stopped
            self._stopped = threading.Event()
        # Not a daemon: returning from main right after stop() still drains and deregisters.
        threading.Thread(
            target=self._drain_then_stop, args=(grace,), name="sail-grpc-drain"
        ).start()
        return self._stopped

    def _drain_then_stop(self, grace: float | None) -> None:
        assert self._stopped is not None
        if self._scope.watch is not None:
            self._scope.watch.stop()
        try:
            if self._registered:
                self._begin_drain()
                start = time.monotonic()
                traffic = self._scope.traffic
                while (wait := drain_wait(
                    traffic, start, time.monotonic(), self._drain, self._quiet
                )) > 0:
                    if self._hurry.wait(wait):
                        break
        except Exception:  # draining is best effort; stopping must still happen
            log.exception("sail: drain of %s failed; stopping now", self.workload.key)
        try:
            if self._registered:
                self._registered = False
                self._registrar.deregister(self.workload)
        except Exception:
            log.exception("sail: deregistering %s failed", self.workload.key)
        try:
            self._server.stop(grace).wait()
        except Exception:
            log.exception("sail: stopping the gRPC server of %s failed", self.workload.key)
        finally:
            self._shutdown_pool()
            self._stopped.set()
            log.info("sail: gRPC workload %s stopped", self.workload.key)

    def _begin_drain(self) -> None:
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        self._registrar.set_health(self.workload, HealthStatus.DRAINING)
        log.info("sail: %s draining (up to %.1fs)", self.workload.key, self._drain)

    def _shutdown_pool(self) -> None:
        if self._own_pool is not None:
            self._own_pool.shutdown(wait=False)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stopped (`True` if `timeout` passed first), as grpc's."""
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> MeshServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop().wait()


class AioMeshServer(_MeshServerBase):
    """The `grpc.aio.server(...)` twin of `MeshServer`; make it inside the event loop.

    ```python
    server = AioMeshServer("ratings", mesh.registrar)
    ratings_pb2_grpc.add_RatingsServicer_to_server(Ratings(), server)
    async with server:             # start(); ...; stop()
        await server.wait_for_termination()
    ```

    **Parameters** are `MeshServer`'s; `thread_pool` is grpc.aio's `migration_thread_pool`
    (where sync handlers run) and there is no `max_workers`. Registrar calls run in a
    thread, so a remote registrar never blocks the event loop.
    """

    def __init__(
        self,
        service: str,
        registrar: Registrar,
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        labels: Mapping[str, str] | None = None,
        weight: int = 1,
        service_port: int | None = None,
        drain: float = 5.0,
        quiet: float = 0.5,
        thread_pool: Executor | None = None,
        interceptors: Iterable[Any] = (),
        handlers: Iterable[Any] = (),
        options: Sequence[tuple[str, Any]] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
        credentials: Any = None,
        health: bool = True,
        xds: MeshSeam | None = None,
        on_serving: Callable[[ServingState], None] | None = None,
        tls: ServerTls | None = None,
        identity: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(
            service, registrar, address=address, labels=labels, weight=weight,
            service_port=service_port, drain=drain, quiet=quiet, xds=xds,
            on_serving=on_serving, tls=tls, identity=identity,
        )
        self._server = grpc.aio.server(
            migration_thread_pool=thread_pool,
            interceptors=[AioInterceptor(self._scope), *interceptors],
            options=options,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            compression=compression,
        )
        if health:
            self.health = health_checking.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.add_generic_rpc_handlers(handlers)
        self._stopping: asyncio.Future[None] | None = None
        self._hurried = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._applier: asyncio.Future[None] | None = None
        self._bind(port, credentials)

    async def start(self) -> None:
        """Start serving, register the workload, then report SERVING.

        An xDS-enabled server registers and returns at once; it opens its port and reports
        SERVING when its Listener arrives (see `sail.grpc.xds_server`)."""
        if self.health is not None:
            await self.health.set("", _NOT_SERVING)  # its default is SERVING
        watch = self._scope.watch
        if watch is None:
            await self._server.start()
        try:
            await asyncio.to_thread(self._claim_identity)
            await asyncio.to_thread(self._registrar.register, self.workload)
        except BaseException:
            await self._server.stop(None)
            raise
        self._registered = True
        if watch is not None:
            self._loop = asyncio.get_running_loop()
            watch.start()
            return
        await self._set_health(_SERVING)
        log.info("sail: gRPC workload %s serving", self.workload.key)

    async def _set_health(self, status: Any) -> None:
        if self.health is not None:
            for name in ("", *self._services):
                await self.health.set(name, status)

    def _apply_serving(self) -> None:
        # From the mesh's config thread (or start()): the change is applied on the loop, by
        # one task at a time that follows the latest verdict.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        if self._applier is None or self._applier.done():
            self._applier = asyncio.ensure_future(self._follow_serving())

    async def _follow_serving(self) -> None:
        watch = self._scope.watch
        assert watch is not None
        while self._registered and self._stopping is None:
            state = watch.state
            if state.serving and not self._listening:
                try:
                    self._listen(self.port)
                except OSError:
                    log.exception("sail: %s may serve but cannot listen; trying again in "
                                  "%.0fs", self.workload.key, _LISTEN_RETRY)
                    asyncio.get_running_loop().call_later(_LISTEN_RETRY, self._kick)
                    return
                await self._server.start()
                self._listening = True
            await self._set_health(_SERVING if state.serving else _NOT_SERVING)
            if watch.state is state:
                return

    async def stop(self, grace: float | None = None) -> None:
        """Drain, deregister and stop, as `MeshServer.stop`; returns once stopped. A second
        call cuts the drain short and waits for the same stop. Cancelling the caller does
        not cancel the stop."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain_then_stop(grace))
        else:
            self._hurried = True
        await asyncio.shield(self._stopping)

    async def _drain_then_stop(self, grace: float | None) -> None:
        if self._scope.watch is not None:
            self._scope.watch.stop()
        try:
            if self._registered:
                if self.health is not None:
                    await self.health.enter_graceful_shutdown()
                await asyncio.to_thread(
                    self._registrar.set_health, self.workload, HealthStatus.DRAINING
                )
                log.info("sail: %s draining (up to %.1fs)", self.workload.key, self._drain)
                start = time.monotonic()
                traffic = self._scope.traffic
                while not self._hurried and (wait := drain_wait(
                    traffic, start, time.monotonic(), self._drain, self._quiet
                )) > 0:
                    await asyncio.sleep(min(wait, POLL))
        except Exception:  # draining is best effort; stopping must still happen
            log.exception("sail: drain of %s failed; stopping now", self.workload.key)
        try:
            if self._registered:
                self._registered = False
                await asyncio.to_thread(self._registrar.deregister, self.workload)
        except Exception:
            log.exception("sail: deregistering %s failed", self.workload.key)
        try:
            await self._server.stop(grace)
        finally:
            log.info("sail: gRPC workload %s stopped", self.workload.key)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Wait until the server stopped (`True` if `timeout` passed first), as grpc.aio's."""
        return bool(await self._server.wait_for_termination(timeout))

    async def __aenter__(self) -> AioMeshServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _free_port(address: str) -> int:
    """A port free on `address` now (an xDS-enabled server opens it only later)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _sync_health() -> Any:
    servicer = health_checking.HealthServicer()
    servicer.set("", _NOT_SERVING)  # its default is SERVING; not until registered
    return servicer
