"""httpx transports that send mesh requests through sail and leave the rest alone.

A transport sends exactly one request (httpx's contract): it resolves the request's
authority to a mesh service, routes and balances it, and hands it to a pooled
`httpx.HTTPTransport` of the chosen endpoint, one pool per endpoint. Requests to hosts that
are not in the mesh go to the ordinary transport untouched.

The caller keeps seeing its own URL: the endpoint address is swapped into `request.url`
only while the inner transport sends, and the Host header stays the service's name (as
Envoy preserves it), unless the route rewrites it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import httpx

from sail.errors import RequestError
from sail.http.errors import to_httpx

if TYPE_CHECKING:
    from sail.dataplane import Target
    from sail.mesh import Mesh

__all__ = ["AsyncMeshTransport", "MeshTransport"]


def service_name(url: httpx.URL) -> str:
    """The listener a URL asks for: `host`, or `host:port` when a non-default port is given
    (as gRPC names its listener after the `xds:///` target)."""
    port = url.port
    return url.host if port is None else f"{url.host}:{port}"


def _direct_response(target: Target, request: httpx.Request) -> httpx.Response:
    action = target.route.route.action
    status, body = (action.status, action.body) if action is not None else (404, b"")  # type: ignore[union-attr]
    return httpx.Response(status, content=body, request=request)


def _endpoint_url(url: httpx.URL, target: Target) -> httpx.URL:
    endpoint = target.endpoint
    assert endpoint is not None
    return url.copy_with(
        scheme="http",
        host=endpoint.address,
        port=endpoint.port,
        raw_path=target.route.path.encode("ascii"),
    )


class _PoolSet:
    """One inner transport per endpoint authority, created on first use."""

    def __init__(self, factory: object) -> None:
        self._factory = factory
        self._pools: dict[str, object] = {}
        self._lock = threading.Lock()  # taken only when a pool is created or retired
        self.retired: list[object] = []

    def get(self, authority: str) -> object:
        pool = self._pools.get(authority)
        if pool is None:
            with self._lock:
                pool = self._pools.get(authority)
                if pool is None:
                    pool = self._pools[authority] = self._factory()  # type: ignore[operator]
        return pool

    def retire(self, live: frozenset[str]) -> list[object]:
        """Remove the pools of endpoints no longer in any cluster; return them to close."""
        with self._lock:
            gone = [a for a in self._pools if a not in live]
            return [self._pools.pop(a) for a in gone]

    def drain(self) -> list[object]:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            return pools


class MeshTransport(httpx.BaseTransport):
    """The sync transport behind `Mesh.client()`.

    **Parameters**

    * `mesh` - where config comes from.
    * `passthrough` - the transport for hosts outside the mesh.
    * `pool_options` - keyword arguments for each endpoint's `httpx.HTTPTransport`.
    """

    def __init__(
        self,
        mesh: Mesh,
        passthrough: httpx.BaseTransport,
        pool_options: dict[str, object] | None = None,
    ) -> None:
        self._mesh = mesh
        self._dataplane = mesh._dataplane
        self._passthrough = passthrough
        options = dict(pool_options or {})
        self._pools = _PoolSet(lambda: httpx.HTTPTransport(**options))  # type: ignore[arg-type]
        mesh._track(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        name = service_name(url)
        state = self._dataplane.state
        if name not in state.services and not self._mesh.is_mesh_host(url.host, name):
            return self._passthrough.handle_request(request)
        try:
            target = self._dataplane.resolve(
                name,
                request.headers.get("host", name),
                url.raw_path.decode("ascii"),
                request.headers,
                request.method,
            )
        except RequestError as exc:
            raise to_httpx(exc, request) from None
        if target.endpoint is None:
            return _direct_response(target, request)
        if target.route.host is not None:
            request.headers["host"] = target.route.host
        pool: httpx.HTTPTransport = self._pools.get(target.endpoint.authority)  # type: ignore[assignment]
        request.url = _endpoint_url(url, target)
        try:
            return pool.handle_request(request)
        finally:
            request.url = url

    def retire(self, live: frozenset[str]) -> None:
        for pool in self._pools.retire(live):
            pool.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        for pool in self._pools.drain():
            pool.close()  # type: ignore[attr-defined]
        self._passthrough.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of `MeshTransport`, behind `Mesh.async_client()`.

    Pools of departed endpoints are closed on this transport's own event loop, at its next
    request, since another thread cannot await them.
    """

    def __init__(
        self,
        mesh: Mesh,
        passthrough: httpx.AsyncBaseTransport,
        pool_options: dict[str, object] | None = None,
    ) -> None:
        self._mesh = mesh
        self._dataplane = mesh._dataplane
        self._passthrough = passthrough
        options = dict(pool_options or {})
        self._pools = _PoolSet(lambda: httpx.AsyncHTTPTransport(**options))  # type: ignore[arg-type]
        self._retired: list[object] = []
        mesh._track(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._retired:
            await self._close_retired()
        url = request.url
        name = service_name(url)
        state = self._dataplane.state
        if name not in state.services and not await self._mesh.ais_mesh_host(url.host, name):
            return await self._passthrough.handle_async_request(request)
        try:
            target = self._dataplane.resolve(
                name,
                request.headers.get("host", name),
                url.raw_path.decode("ascii"),
                request.headers,
                request.method,
            )
        except RequestError as exc:
            raise to_httpx(exc, request) from None
        if target.endpoint is None:
            return _direct_response(target, request)
        if target.route.host is not None:
            request.headers["host"] = target.route.host
        pool: httpx.AsyncHTTPTransport = self._pools.get(target.endpoint.authority)  # type: ignore[assignment]
        request.url = _endpoint_url(url, target)
        try:
            return await pool.handle_async_request(request)
        finally:
            request.url = url

    def retire(self, live: frozenset[str]) -> None:
        self._retired.extend(self._pools.retire(live))

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for pool in retired:
            await pool.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self._retired.extend(self._pools.drain())
        await self._close_retired()
        await self._passthrough.aclose()
