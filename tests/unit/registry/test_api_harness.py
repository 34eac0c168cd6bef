"""A real registry API server on 127.0.0.1 for the registry tests (it holds no tests).

The grpc.aio server runs on sail's background event loop (`sail._loop`), the one loop every
grpc.aio user in the process shares: a loop per test, closed afterwards, would break gRPC's
poller for later tests. Store calls go through `call()`, onto that loop, as the store asks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
import grpc.aio

from sail._loop import background_loop
from sail.registry.api import RegistryApi
from sail.registry.store import MemoryStore
from sail.registry.wire import decode, encode, method_path

T = TypeVar("T")
TOKEN = "s3cret-token"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def accept_all(configs: dict[str, str]) -> None:
    pass


class RegistryServer:
    """`RegistryApi` over a `MemoryStore` with a fake clock, on a free loopback port."""

    def __init__(
        self,
        *,
        token: str | None = TOKEN,
        validate: Callable[[dict[str, str]], None] = accept_all,
        status: Callable[[], Mapping[str, Any]] = lambda: {"ok": True},
        port: int = 0,
    ) -> None:
        self.token = token
        self.validate = validate
        self.status = status
        self.port = port
        self.clock = FakeClock()
        self.store = MemoryStore(clock=self.clock)
        self._server: Any = None
        self._channel: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryServer:
        self._run(self._start())
        return self

    async def _start(self) -> None:
        server = grpc.aio.server()
        RegistryApi(self.store, self.token, self.validate, self.status).add_to(server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            self._run(server.stop(None))

    def restart_empty(self) -> None:
        """Stop, forget everything (as a memory-store registry does), start on the same port."""
        self.stop()
        self.store = MemoryStore(clock=self.clock)
        self.start()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self.stop()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop (the store's thread) and return its result,
        awaited if it is awaitable."""

        async def run() -> T:
            result = fn()
            if inspect.isawaitable(result):  # the store's writes are coroutines
                return await result  # type: ignore[no-any-return]
            return result

        result: T = self._run(run())
        return result

    def rpc(
        self,
        method: str,
        body: Any,
        *,
        token: str | None = TOKEN,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> Any:
        """A raw call; raises `grpc.RpcError`. `body` bytes are sent as they are."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        stub = self._channel.unary_unary(
            method_path(method),
            request_serializer=(lambda b: b) if isinstance(body, bytes) else encode,
            response_deserializer=decode,
        )
        if metadata is None:
            metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        return stub(body, timeout=5, metadata=metadata)

    def _run(self, coro: Any) -> Any:
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            coro, background_loop()
        )
        return future.result(timeout=10)
