"""httpx transports that send mesh requests through sail and leave the rest alone.

A transport sends exactly one request (httpx's contract): it resolves the request's
authority to a mesh service, and drives that request's exchange (`sail.http.exchange`:
route, faults, header changes and mirrors, attempts with retries, hedging, the deadline,
circuit breakers, outlier reports), written once for both transports. The transports only
do the I/O the exchange asks for: send on the pooled `httpx.HTTPTransport` of the chosen
endpoint (one pool per endpoint), sleep, close, send a shadow copy, run hedged attempts
in threads (sync) or tasks (async). Requests to hosts that are not in the mesh go to the
ordinary transport untouched.

sail's errors become httpx's at one boundary per transport (`sail.http.errors.to_httpx`),
so `except httpx.HTTPError` keeps working. The caller keeps seeing its own URL: the
endpoint address is swapped into `request.url` only while the inner transport sends, and
the Host header stays the service's name (as Envoy preserves it), unless the route
rewrites it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import httpx

from sail.errors import RequestError
from sail.http.errors import to_httpx
from sail.http.exchange import (
    RETRY_BODY_LIMIT,
    Close,
    Flow,
    Launch,
    Launched,
    Mirror,
    Read,
    Send,
    Sleep,
    Wait,
    exchange,
)

if TYPE_CHECKING:
    from sail.dataplane import UpstreamTlsRuntime
    from sail.seam import MeshSeam

__all__ = ["RETRY_BODY_LIMIT", "AsyncMeshTransport", "MeshTransport"]

#: How long closing a transport waits for the shadow copies still being sent (mirrors are
#: fire and forget, but a client closed right after a request must not drop its copies).
MIRROR_DRAIN = 2.0


def service_name(url: httpx.URL) -> str:
    """The listener a URL asks for: `host`, or `host:port` when a non-default port is given
    (as gRPC names its listener after the `xds:///` target)."""
    port = url.port
    return url.host if port is None else f"{url.host}:{port}"


P = TypeVar("P", httpx.HTTPTransport, httpx.AsyncHTTPTransport)

#: How long a departed endpoint's connections may finish their requests before they are
#: closed anyway. Like Envoy, sail never cuts a request short when a host leaves EDS: idle
#: connections close at once, busy ones when they finish, and only this cap overrides that.
DRAIN_GRACE = 60.0
REAP_INTERVAL = 1.0


def _idle(pool: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> bool:
    connections = getattr(getattr(pool, "_pool", None), "connections", None)
    if connections is None:
        return True
    return all(c.is_idle() or c.is_closed() for c in connections)


def _authority(key: object) -> object:
    return key[0] if isinstance(key, tuple) else key


def _tls_options(options: dict[str, object], context: ssl.SSLContext | None) -> dict[str, object]:
    """An endpoint pool's options: the client's, with a TLS cluster's context in place of
    the client's own `verify` and `cert` (which are for hosts outside the mesh)."""
    if context is None:
        return options
    return {k: v for k, v in options.items() if k not in ("verify", "cert")} | {
        "verify": context
    }


class _Draining(Generic[P]):
    __slots__ = ("checked", "deadline", "pool", "was_idle")

    def __init__(self, pool: P, deadline: float) -> None:
        self.pool: P = pool
        self.deadline = deadline
        self.was_idle = False
        self.checked = float("-inf")


class _PoolSet(Generic[P]):
    """One inner transport per endpoint authority (and, for a TLS cluster, per TLS
    context: a rotated certificate makes a new context, whose connections go in a pool of
    their own while the old context's pool drains), created on first use; pools of
    departed endpoints drain before they close."""

    def __init__(self, factory: Callable[[ssl.SSLContext | None], P]) -> None:
        self._factory: Callable[[ssl.SSLContext | None], P] = factory
        self._pools: dict[object, P] = {}
        # Pools of departed endpoints, until they close (an attribute, not a property: the
        # async transport tests it on every request).
        self.draining: list[_Draining[P]] = []
        self._lock = threading.Lock()  # taken only when a pool is created or retired

    def get(self, authority: str, tls: UpstreamTlsRuntime | None = None) -> P:
        key: object = authority if tls is None else (authority, tls.context)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    context = tls.context if tls is not None else None
                    if context is not None:
                        self._retire_rotated(authority)
                    pool = self._pools[key] = self._factory(context)
        return pool

    def _retire_rotated(self, authority: str) -> None:
        """A new TLS context for `authority`: the pools of its older contexts drain."""
        deadline = time.monotonic() + DRAIN_GRACE
        for key in [k for k in self._pools if isinstance(k, tuple) and k[0] == authority]:
            self.draining.append(_Draining(self._pools.pop(key), deadline))

    def retire(self, live: frozenset[str]) -> bool:
        """Move the pools of endpoints no longer in any cluster to draining; True if any
        is draining."""
        with self._lock:
            deadline = time.monotonic() + DRAIN_GRACE
            for key in [k for k in self._pools if _authority(k) not in live]:
                self.draining.append(_Draining(self._pools.pop(key), deadline))
            return bool(self.draining)

    def reapable(self) -> list[P]:
        """Draining pools that may be closed now: idle at this check and the one before
        (a request that took the pool just before it was retired has had a whole reap
        interval to claim a connection), or past their deadline."""
        now = time.monotonic()
        done: list[P] = []
        with self._lock:
            keep: list[_Draining[P]] = []
            for item in self.draining:
                if item.deadline <= now:
                    done.append(item.pool)
                    continue
                if now - item.checked < REAP_INTERVAL:
                    keep.append(item)
                    continue
                idle = _idle(item.pool)
                if idle and item.was_idle:
                    done.append(item.pool)
                else:
                    item.was_idle = idle
                    item.checked = now
                    keep.append(item)
            self.draining = keep
        return done

    def drain(self) -> list[P]:
        with self._lock:
            pools = list(self._pools.values()) + [d.pool for d in self.draining]
            self._pools.clear()
            self.draining.clear()
            return pools


class MeshTransport(httpx.BaseTransport):
    """The sync transport behind `Mesh.client()`.

    **Parameters**

    * `seam` - what the transport sees of its mesh.
    * `passthrough` - the transport for hosts outside the mesh.
    * `pool_options` - keyword arguments for each endpoint's `httpx.HTTPTransport`.
    """

    def __init__(
        self,
        seam: MeshSeam,
        passthrough: httpx.BaseTransport,
        pool_options: dict[str, object] | None = None,
    ) -> None:
        self._mesh = seam
        self._dataplane = seam.dataplane
        self._passthrough = passthrough
        options = dict(pool_options or {})
        self._pools: _PoolSet[httpx.HTTPTransport] = _PoolSet(
            lambda tls: httpx.HTTPTransport(**_tls_options(options, tls))  # type: ignore[arg-type]
        )
        self._reaper: threading.Timer | None = None
        self._shadows: concurrent.futures.ThreadPoolExecutor | None = None
        self._shadows_out: set[concurrent.futures.Future[None]] = set()
        seam.track(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._mesh.check_fork()
        url = request.url
        name = service_name(url)
        state = self._dataplane.state
        if name not in state.services:
            try:
                inside = self._mesh.is_mesh_host(url.host, name)
            except RequestError as exc:  # a mesh name the mesh refused (RejectedService)
                raise to_httpx(exc, request) from exc
            if not inside:
                return self._passthrough.handle_request(request)
            state = self._dataplane.state
        flow = exchange(self._dataplane, state, request, name)
        result: object = None
        try:
            while True:  # perform the exchange's actions until it returns a response
                try:
                    action = flow.send(result)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                result = None
                try:
                    if isinstance(action, Send):
                        try:
                            pool = self._pools.get(action.authority, action.tls)
                            result = pool.handle_request(action.request)
                        except httpx.TransportError as exc:
                            result = exc
                    elif isinstance(action, Read):
                        try:
                            action.response.read()
                        except httpx.TransportError as exc:
                            action.response.close()
                            result = exc
                    elif isinstance(action, Sleep):
                        time.sleep(action.seconds)
                    elif isinstance(action, Close):
                        action.response.close()
                    elif isinstance(action, Mirror):
                        self._mirror(action.authority, action.request, action.tls)
                    elif isinstance(action, Launch):
                        return self._drive_hedged(flow, action.attempt)
                    else:
                        raise AssertionError(f"unexpected {action!r}")
                except BaseException as exc:  # interrupted: the exchange gives back what it holds
                    flow.throw(exc)
                    raise
        except RequestError as exc:  # the one boundary: sail's errors leave as httpx's
            raise to_httpx(exc, request) from exc.__cause__

    def _drive_hedged(self, flow: Flow, first: Launched) -> httpx.Response:
        """`handle_request`'s loop for a hedged exchange: attempts in threads, so that one
        whose per-try timeout fired goes on while the next starts."""
        done: queue.SimpleQueue[Launched] = queue.SimpleQueue()
        lock = threading.Lock()  # a late attempt's thread vs. the exchange's end
        out: set[Launched] = set()  # launched, not yet handed to the exchange
        over = [False]

        def attempt(item: Launched) -> None:
            try:
                pool = self._pools.get(item.endpoint.authority, item.tls)
                item.response = pool.handle_request(item.request)
            except BaseException as exc:
                item.error = exc
            with lock:
                if not over[0]:
                    done.put(item)
                    return
                out.discard(item)
            _close(item)  # the exchange is over: a late loser

        def launch(item: Launched) -> None:
            with lock:
                out.add(item)
            threading.Thread(target=attempt, args=(item,), daemon=True).start()

        result: object = None
        try:
            launch(first)
            while True:
                try:
                    action = flow.send(result)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                result = None
                try:
                    if isinstance(action, Wait):
                        try:
                            result = done.get(timeout=action.timeout)
                        except queue.Empty:
                            continue
                        with lock:
                            out.discard(result)
                    elif isinstance(action, Launch):
                        launch(action.attempt)
                    elif isinstance(action, Close):
                        action.response.close()
                    elif isinstance(action, Sleep):
                        time.sleep(action.seconds)
                    else:
                        raise AssertionError(f"unexpected {action!r}")
                except BaseException as exc:
                    flow.throw(exc)
                    raise
        finally:
            with lock:
                over[0] = True
            leftovers = first.hedge.leftovers()
            while not done.empty():
                item = done.get_nowait()
                out.discard(item)
                leftovers.append(item)
            for item in leftovers:
                _close(item)

    def _mirror(
        self, authority: str, request: httpx.Request, tls: UpstreamTlsRuntime | None
    ) -> None:
        """Send a shadow copy and forget it (its answer and errors are dropped)."""
        pool = self._pools.get(authority, tls)

        def send() -> None:
            with contextlib.suppress(Exception):
                pool.handle_request(request).close()

        if self._shadows is None:
            self._shadows = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="sail-mirror"
            )
        future = self._shadows.submit(send)
        self._shadows_out.add(future)
        future.add_done_callback(self._shadows_out.discard)

    def retire(self, live: frozenset[str]) -> None:
        if self._pools.retire(live) and self._reaper is None:
            self._reap()

    def _reap(self) -> None:
        for pool in self._pools.reapable():
            pool.close()
        self._reaper = None
        if self._pools.draining:
            self._reaper = threading.Timer(REAP_INTERVAL, self._reap)
            self._reaper.daemon = True
            self._reaper.start()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._shadows is not None:
            # The shadow copies still queued or in flight get MIRROR_DRAIN seconds in all.
            concurrent.futures.wait(list(self._shadows_out), timeout=MIRROR_DRAIN)
            self._shadows.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.drain():
            pool.close()
        self._passthrough.close()


def _close(item: Launched) -> None:
    """Close a hedged attempt's response (if any) and release what it held."""
    try:
        if item.response is not None:
            item.response.close()
    finally:
        item.release()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of `MeshTransport`, behind `Mesh.async_client()`.

    Pools of departed endpoints are closed on this transport's own event loop, at a later
    request once they are idle, since another thread cannot await them.
    """

    def __init__(
        self,
        seam: MeshSeam,
        passthrough: httpx.AsyncBaseTransport,
        pool_options: dict[str, object] | None = None,
    ) -> None:
        self._mesh = seam
        self._dataplane = seam.dataplane
        self._passthrough = passthrough
        options = dict(pool_options or {})
        self._pools: _PoolSet[httpx.AsyncHTTPTransport] = _PoolSet(
            lambda tls: httpx.AsyncHTTPTransport(
                **_tls_options(options, tls)  # type: ignore[arg-type]
            )
        )
        self._shadows: set[asyncio.Task[None]] = set()
        seam.track(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._pools.draining:
            await self._reap()
        self._mesh.check_fork()
        url = request.url
        name = service_name(url)
        state = self._dataplane.state
        if name not in state.services:
            try:
                inside = await self._mesh.ais_mesh_host(url.host, name)
            except RequestError as exc:  # a mesh name the mesh refused (RejectedService)
                raise to_httpx(exc, request) from exc
            if not inside:
                return await self._passthrough.handle_async_request(request)
            state = self._dataplane.state
        flow = exchange(self._dataplane, state, request, name)
        result: object = None
        try:
            while True:  # `MeshTransport.handle_request`'s loop, with `await`
                try:
                    action = flow.send(result)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                result = None
                try:
                    if isinstance(action, Send):
                        try:
                            result = await self._pools.get(
                                action.authority, action.tls
                            ).handle_async_request(action.request)
                        except httpx.TransportError as exc:
                            result = exc
                    elif isinstance(action, Read):
                        try:
                            await action.response.aread()
                        except httpx.TransportError as exc:
                            await action.response.aclose()
                            result = exc
                    elif isinstance(action, Sleep):
                        await anyio.sleep(action.seconds)
                    elif isinstance(action, Close):
                        await action.response.aclose()
                    elif isinstance(action, Mirror):
                        self._mirror(action.authority, action.request, action.tls)
                    elif isinstance(action, Launch):
                        return await self._drive_hedged(flow, action.attempt)
                    else:
                        raise AssertionError(f"unexpected {action!r}")
                except BaseException as exc:  # cancelled: the exchange gives back what it holds
                    flow.throw(exc)
                    raise
        except RequestError as exc:  # the one boundary: sail's errors leave as httpx's
            raise to_httpx(exc, request) from exc.__cause__

    async def _drive_hedged(self, flow: Flow, first: Launched) -> httpx.Response:
        """`handle_async_request`'s loop for a hedged exchange: attempts as tasks, so that
        one whose per-try timeout fired goes on while the next starts."""
        send, receive = anyio.create_memory_object_stream[Launched](max_buffer_size=64)
        out: set[Launched] = set()  # launched, not yet handed to the exchange

        async def attempt(item: Launched) -> None:
            try:
                item.response = await self._pools.get(
                    item.endpoint.authority, item.tls
                ).handle_async_request(item.request)
            except anyio.get_cancelled_exc_class():
                raise  # a losing attempt, released below
            except BaseException as exc:
                item.error = exc
            send.send_nowait(item)

        result: object = None
        try:
            async with anyio.create_task_group() as tasks:

                def launch(item: Launched) -> None:
                    out.add(item)
                    tasks.start_soon(attempt, item)

                launch(first)
                while True:
                    try:
                        action = flow.send(result)
                    except StopIteration as stop:
                        tasks.cancel_scope.cancel()
                        return stop.value  # type: ignore[no-any-return]
                    result = None
                    try:
                        if isinstance(action, Wait):
                            with anyio.move_on_after(action.timeout):
                                result = await receive.receive()
                                out.discard(result)
                        elif isinstance(action, Launch):
                            launch(action.attempt)
                        elif isinstance(action, Close):
                            await action.response.aclose()
                        elif isinstance(action, Sleep):
                            await anyio.sleep(action.seconds)
                        else:
                            raise AssertionError(f"unexpected {action!r}")
                    except BaseException as exc:
                        tasks.cancel_scope.cancel()
                        flow.throw(exc)
                        raise
            raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
        finally:
            leftovers = first.hedge.leftovers()
            while True:
                try:
                    leftovers.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            for item in out:  # cancelled before they ended
                if item not in leftovers:
                    leftovers.append(item)
            for item in leftovers:
                try:
                    if item.response is not None:
                        await item.response.aclose()
                finally:
                    item.release()
            send.close()
            receive.close()

    def _mirror(
        self, authority: str, request: httpx.Request, tls: UpstreamTlsRuntime | None
    ) -> None:
        """Send a shadow copy as a task of its own and forget it (its answer and errors
        are dropped)."""
        pool = self._pools.get(authority, tls)

        async def send() -> None:
            with contextlib.suppress(Exception):
                await (await pool.handle_async_request(request)).aclose()

        task = asyncio.get_running_loop().create_task(send())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    def retire(self, live: frozenset[str]) -> None:
        self._pools.retire(live)

    async def _reap(self) -> None:
        for pool in self._pools.reapable():
            await pool.aclose()

    async def aclose(self) -> None:
        if self._shadows:
            # The shadow copies still in flight get MIRROR_DRAIN seconds in all.
            _, late = await asyncio.wait(set(self._shadows), timeout=MIRROR_DRAIN)
            for task in late:
                task.cancel()
        for pool in self._pools.drain():
            await pool.aclose()
        await self._passthrough.aclose()
