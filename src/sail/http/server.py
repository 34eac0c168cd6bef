"""Server side for HTTP: ASGI and WSGI apps as mesh workloads.

`Mesh.service(...)` wraps the app. Each request then runs with a `RequestContext` in a
context variable (`sail.current_request()`), and ASGI apps also find it in
`scope["extensions"]["sail"]`. `@sail.operation("GetReview")` on a handler names the
operation in that context (metrics and policies will key on it). Those three live in
`sail.context`, shared with the gRPC server side; they are re-exported here.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from sail.context import RequestContext, _current, _deadline, current_request, operation
from sail.model import HealthStatus
from sail.registration import Registrar, Workload
from sail.resilience.deadline import inherited_deadline

__all__ = ["RequestContext", "current_request", "operation", "wrap_app"]

log = logging.getLogger("sail")


def _is_asgi(app: Any) -> bool:
    if inspect.isfunction(app) or inspect.ismethod(app):
        return inspect.iscoroutinefunction(app)
    return inspect.iscoroutinefunction(getattr(app, "__call__", None))  # noqa: B004


def wrap_app(app: Any, workload: Workload, registrar: Registrar, drain: float = 5.0) -> Any:
    """Wrap an ASGI or WSGI app (told apart by whether it is a coroutine function)."""
    if _is_asgi(app):
        return AsgiService(app, workload, registrar, drain=drain)
    registrar.register(workload)
    return WsgiService(app, workload, registrar)


class AsgiService:
    """An ASGI app as a mesh workload: registers on lifespan startup, sets the request
    context on each request, and leaves the mesh gracefully.

    **Graceful drain.** On SIGTERM the workload is first marked DRAINING in the registry
    (clients stop picking it as soon as EDS tells them), keeps serving until no request has
    arrived for `quiet` seconds and none is in flight (at most `drain` seconds), and only
    then hands SIGTERM to the server (uvicorn, hypercorn...), whose shutdown deregisters
    it. A second SIGTERM stops at once. Envoy's drain and Istio's
    `terminationDrainDuration` work the same way. `drain=0` turns it off.
    """

    def __init__(
        self,
        app: Any,
        workload: Workload,
        registrar: Registrar,
        *,
        drain: float = 5.0,
        quiet: float = 0.5,
    ) -> None:
        self.app = app
        self.workload = workload
        self._registrar = registrar
        self._registered = False
        self._drain = drain
        self._quiet = quiet
        self._draining = False
        self._inflight = 0
        self._last_request = 0.0
        #: Set by `mesh.http_server`, which serves the mesh's mTLS: the workload's SPIFFE ID
        #: when it registers (so clients expect it, and choose mTLS: auto-mTLS).
        self.identity: Callable[[], str | None] | None = None
        functools.update_wrapper(self, app, updated=())

    def _register(self) -> None:
        if not self._registered:
            if self.identity is not None and self.workload.identity is None:
                self.workload = attrs.evolve(self.workload, identity=self.identity())
            self._registrar.register(self.workload)
            self._registered = True
            self._install_drain()

    def _install_drain(self) -> None:
        if self._drain <= 0 or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            if self._draining:
                _forward(previous, signum, frame)
                return
            self._draining = True
            threading.Thread(
                target=self._drain_then_stop,
                args=(previous, signum, frame),
                name="sail-drain",
                daemon=True,
            ).start()

        signal.signal(signal.SIGTERM, on_term)

    def _drain_then_stop(self, previous: Any, signum: int, frame: Any) -> None:
        start = time.monotonic()
        try:
            self._registrar.set_health(self.workload, HealthStatus.DRAINING)
            log.info("sail: %s draining (up to %.1fs)", self.workload.key, self._drain)
            time.sleep(min(self._quiet, self._drain))
            while time.monotonic() - start < self._drain:
                idle_for = time.monotonic() - self._last_request
                if self._inflight == 0 and idle_for >= self._quiet:
                    break
                time.sleep(0.05)
        except Exception:  # draining is best effort; stopping must still happen
            log.exception("sail: drain of %s failed; stopping now", self.workload.key)
        _forward(previous, signum, frame)

    def _deregister(self) -> None:
        if self._registered:
            self._registrar.set_health(self.workload, HealthStatus.DRAINING)
            self._registrar.deregister(self.workload)
            self._registered = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self._register()  # servers that skip lifespan register on the first request
        headers = _asgi_headers(scope.get("headers", ()))
        ctx = RequestContext(
            service=self.workload.service,
            workload=self.workload,
            method=scope.get("method", "GET"),
            path=scope.get("path", "/"),
            headers=headers,
            deadline=_deadline(headers),
        )
        extensions = scope.get("extensions") or {}
        ctx.peer = extensions.get("sail.peer")  # set by `mesh.serve` (sail.http.serve)
        scope["extensions"] = {**extensions, "sail": ctx}
        token = _current.set(ctx)
        deadline_token = inherited_deadline.set(ctx.deadline)
        self._inflight += 1
        self._last_request = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self._inflight -= 1
            self._last_request = time.monotonic()
            inherited_deadline.reset(deadline_token)
            _current.reset(token)

    async def _lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = False

        async def wrapped_receive() -> Any:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._register()
            elif message["type"] == "lifespan.shutdown":
                self._deregister()
            return message

        try:
            await self.app(scope, wrapped_receive, send)
            supported = received
        except Exception:
            supported = False
        if not supported:
            # An app without lifespan support (it raised, or returned without reading a
            # message): answer the protocol ourselves, so the workload registers at startup.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._register()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self._deregister()
                    await send({"type": "lifespan.shutdown.complete"})
                    return


def _forward(previous: Any, signum: int, frame: Any) -> None:
    """Hand a signal on to the handler that was there before sail's."""
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


class WsgiService:
    """A WSGI app as a mesh workload (registered when wrapped; `close()` deregisters)."""

    def __init__(self, app: Any, workload: Workload, registrar: Registrar) -> None:
        self.app = app
        self.workload = workload
        self._registrar = registrar
        functools.update_wrapper(self, app, updated=())

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        ctx = RequestContext(
            service=self.workload.service,
            workload=self.workload,
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("PATH_INFO", "/"),
            headers=headers,
            deadline=_deadline(headers),
        )
        environ["sail.request"] = ctx
        token = _current.set(ctx)
        deadline_token = inherited_deadline.set(ctx.deadline)
        try:
            return self.app(environ, start_response)
        finally:
            inherited_deadline.reset(deadline_token)
            _current.reset(token)

    def close(self) -> None:
        self._registrar.set_health(self.workload, HealthStatus.DRAINING)
        self._registrar.deregister(self.workload)
