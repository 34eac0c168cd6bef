"""A generic xDS v3 ADS client (State of the World), on one background thread.

The client knows nothing of listeners or clusters: a resource type is a type URL and a
decoder (`sail.xds.codec.types.ResourceType`). Its owner says which names it wants per type
(`set_names`); the client keeps one ADS stream, sends a request whenever a name set changes,
decodes every response, ACKs or NACKs it, and hands the owner what changed. All of that runs
on the client's own asyncio loop, so the owner's handler is called serially and never
concurrently with itself.

Protocol rules followed (gRFC A27, A46, A57, A71 and Envoy's `xds_protocol.rst`):

* version_info and nonce are kept per type URL. An ACK repeats the response's version and
  nonce; a NACK repeats the *last accepted* version, the new nonce, and an `error_detail`
  naming each bad resource and why.
* A response with some bad resources still delivers the good ones; the bad ones keep their
  last good value (A46).
* LDS and CDS are full-state: a subscribed resource missing from a response is deleted,
  unless the server has `ignore_resource_deletion` in its `server_features` (A53). For RDS
  and EDS absence means nothing.
* A resource never received gets a does-not-exist timer (15 s) started when its request is
  written on a live stream; it is cancelled by the resource, and paused while disconnected.
* sail also treats a full-state (LDS/CDS) name that is absent from the first response after
  its request as not existing. Servers answer a change of requested names (Envoy's docs
  require it), so this settles unknown names in one round trip instead of 15 s. A server
  push racing the request can make that call early; the name stays subscribed and turns
  up as soon as the server sends it.
* Reconnects back off 1 s, ×1.6, capped at 120 s, ±20 % jitter; a stream that delivered a
  response is retried at once. Servers are tried in bootstrap order and the client falls
  back to the next one when a server cannot be reached (A71); each reconnect starts again
  from the first, so the client returns to the primary as soon as it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
import grpc
import grpc.aio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from sail._loop import background_loop, in_background_thread
from sail.bootstrap import Bootstrap, XdsServer
from sail.xds.codec.types import RESOURCE_TYPES, ResourceType, resource_name

__all__ = ["AdsClient", "Backoff", "ClientStatus", "XdsHandler"]

log = logging.getLogger("sail.xds")

_FULL_STATE_TYPES = frozenset(
    {
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    }
)
# Requests go out in dependency order so a fresh stream resolves top-down.
_TYPE_ORDER = (
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
)
_INVALID_ARGUMENT = 3


class XdsHandler(Protocol):
    """What the client tells its owner; called on the client's thread, one call at a time."""

    def on_resources(
        self,
        type_url: str,
        changed: Mapping[str, Any],
        removed: frozenset[str],
        errors: Mapping[str, str],
        absent: frozenset[str],
    ) -> None:
        """`changed`: new or updated values; `removed`: deleted by the server; `errors`:
        names whose new value was rejected (the last good value, if any, stays);
        `absent`: names the server says do not exist."""

    def on_connection(self, connected: bool, detail: str) -> None:
        """The stream went up (`connected`) or down, with a reason. Cached config stays."""


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter: `initial × multiplier**attempt`, capped at `maximum`,
    then spread uniformly by ±`jitter` (gRPC's connection backoff)."""

    initial: float = 1.0
    multiplier: float = 1.6
    maximum: float = 120.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * self.multiplier**attempt)
        return base * (1 + self.jitter * (2 * rand() - 1))


@attrs.frozen
class ClientStatus:
    """A point-in-time view of the client, for `config-dump` and tests."""

    server: str | None
    connected: bool
    last_error: str
    versions: Mapping[str, str]
    nacks: int
    names: Mapping[str, frozenset[str]]


class _TypeState:
    __slots__ = ("absent", "cache", "names", "nonce", "pending_first", "timers", "version")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.version = ""
        self.nonce = ""
        self.cache: dict[str, Any] = {}
        self.absent: set[str] = set()
        self.timers: dict[str, asyncio.TimerHandle] = {}
        # Names written in a request and not yet answered by a response of this type.
        self.pending_first: set[str] = set()


_clients: weakref.WeakSet[AdsClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child inherits no threads: every open client restarts on a fresh loop.
    for client in list(_clients):
        client._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class AdsClient:
    """One ADS stream to the bootstrap's xDS servers, run on a daemon thread.

    **Parameters**

    * `bootstrap` - servers and node identity.
    * `handler` - receives decoded resources (see `XdsHandler`).
    * `resource_types` - decoders by type URL (default: the four core types).
    * `does_not_exist_timeout` - seconds (gRFC A27: 15).
    * `connect_timeout` - seconds to wait for a server before trying the next one.
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        handler: XdsHandler,
        *,
        resource_types: Mapping[str, ResourceType] = RESOURCE_TYPES,
        does_not_exist_timeout: float = 15.0,
        connect_timeout: float = 5.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._bootstrap = bootstrap
        self._handler = handler
        self._types = resource_types
        self._dne_timeout = does_not_exist_timeout
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._state: dict[str, _TypeState] = {t: _TypeState() for t in resource_types}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[None] | None = None
        self._closed = False
        self._outbox: asyncio.Queue[str | discovery_pb2.DiscoveryRequest] | None = None
        self._ignore_deletion = False
        self._live = False
        self._server: str | None = None
        self._last_error = ""
        self._nacks = 0
        _clients.add(self)

    # -- owner API (any thread) -------------------------------------------------------------

    def start(self) -> None:
        """Start the stream on sail's background loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._loop = background_loop()
        self._closed = False
        started = threading.Event()

        def begin() -> None:
            self._outbox = asyncio.Queue()
            self._task = asyncio.ensure_future(self._run_logged())
            started.set()

        self._loop.call_soon_threadsafe(begin)
        started.wait(5.0)

    def set_names(self, type_url: str, names: Iterable[str]) -> None:
        """Subscribe `type_url` to exactly `names`. Thread-safe; sends only on change."""
        wanted = frozenset(names)
        self.call_soon(lambda: self._set_names(type_url, wanted))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the client's thread (serialized with the handler)."""
        loop = self._loop
        if loop is None or self._closed:
            return
        if in_background_thread():
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def status(self) -> ClientStatus:
        return ClientStatus(
            server=self._server,
            connected=self._live,
            last_error=self._last_error,
            versions={t: s.version for t, s in self._state.items() if s.version},
            nacks=self._nacks,
            names={t: frozenset(s.names) for t, s in self._state.items() if s.names},
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the stream; returns once its channel is closed (or after `timeout`)."""
        self._closed = True
        loop, task = self._loop, self._task
        if loop is None or task is None or loop.is_closed():
            return

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

        if in_background_thread():
            task.cancel()
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout)

    def _forked(self) -> None:
        self._task = None
        self._loop = None
        self._live = False
        if not self._closed:
            for st in self._state.values():
                st.timers.clear()
                st.pending_first.clear()
            self.start()

    async def _run_logged(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except BaseException:  # the control path must never die silently
            log.exception("sail xDS client stopped unexpectedly")
            raise

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            delivered = False
            for server in self._bootstrap.xds_servers:
                outcome = await self._serve(server)
                if outcome is not None:  # reached this server
                    delivered = outcome
                    break
            if self._closed:
                return
            if delivered:
                attempt = 0
                continue
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.info("sail xDS: reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)

    def _channel(self, server: XdsServer) -> grpc.aio.Channel:
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", -1)]
        if server.insecure:
            return grpc.aio.insecure_channel(server.server_uri, options=options)
        return grpc.aio.secure_channel(
            server.server_uri, grpc.ssl_channel_credentials(), options=options
        )

    async def _serve(self, server: XdsServer) -> bool | None:
        """One stream to `server`. `None`: unreachable; else whether a response arrived."""
        channel = self._channel(server)
        try:
            try:
                await asyncio.wait_for(channel.channel_ready(), self._connect_timeout)
            except TimeoutError:
                self._last_error = f"{server.server_uri}: unreachable"
                log.warning("sail xDS: %s", self._last_error)
                return None
            return await self._stream(server, channel)
        finally:
            await channel.close(None)

    async def _stream(self, server: XdsServer, channel: grpc.aio.Channel) -> bool:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources()
        assert self._outbox is not None
        self._outbox = asyncio.Queue()
        self._server = server.server_uri
        self._ignore_deletion = server.ignore_resource_deletion
        first = True
        delivered = False
        for st in self._state.values():
            st.nonce = ""  # nonces belong to a stream; versions carry over (A27)
        for type_url in self._ordered_types():
            if self._state[type_url].names:
                self._outbox.put_nowait(type_url)
        self._live = True
        self._notify_connection(True, server.server_uri)

        async def writer() -> None:
            nonlocal first
            assert self._outbox is not None
            while True:
                item = await self._outbox.get()
                if isinstance(item, str):
                    request = self._request(item, node=first)
                else:
                    request = item
                    if first:
                        request.node.CopyFrom(self._node())
                first = False
                await call.write(request)
                self._requested(request.type_url)

        writer_task = asyncio.ensure_future(writer())
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    self._last_error = f"{server.server_uri}: stream closed by server"
                    break
                delivered = True
                self._on_response(response)
        except grpc.aio.AioRpcError as exc:
            self._last_error = f"{server.server_uri}: {exc.code().name}: {exc.details()}"
        finally:
            writer_task.cancel()
            self._live = False
            for st in self._state.values():
                for timer in st.timers.values():
                    timer.cancel()
                st.timers.clear()
                st.pending_first.clear()
            call.cancel()
            if not self._closed:
                log.warning("sail xDS: stream ended: %s", self._last_error)
                self._notify_connection(False, self._last_error)
        return delivered

    def _ordered_types(self) -> list[str]:
        known = [t for t in _TYPE_ORDER if t in self._state]
        return known + [t for t in self._state if t not in known]

    def _node(self) -> base_pb2.Node:
        node = self._bootstrap.node
        metadata = struct_pb2.Struct()
        metadata.update(dict(node.metadata))
        return base_pb2.Node(
            id=node.id,
            cluster=node.cluster,
            metadata=metadata,
            locality=base_pb2.Locality(
                region=node.locality.region,
                zone=node.locality.zone,
                sub_zone=node.locality.sub_zone,
            ),
            user_agent_name="sail",
            user_agent_version=_version(),
            client_features=["xds.config.resource-in-sotw"],
        )

    def _request(
        self, type_url: str, *, node: bool, error: str | None = None
    ) -> discovery_pb2.DiscoveryRequest:
        st = self._state[type_url]
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=st.version,
            response_nonce=st.nonce,
            resource_names=sorted(st.names),
        )
        if node:
            request.node.CopyFrom(self._node())
        if error is not None:
            request.error_detail.CopyFrom(
                status_pb2.Status(code=_INVALID_ARGUMENT, message=error)
            )
        return request

    def _requested(self, type_url: str) -> None:
        """A request for `type_url` is on the wire: arm timers for names never received."""
        st = self._state[type_url]
        loop = asyncio.get_running_loop()
        for name in st.names:
            if name in st.cache or name in st.absent or name in st.timers:
                continue
            st.pending_first.add(name)
            st.timers[name] = loop.call_later(
                self._dne_timeout, self._does_not_exist, type_url, name
            )

    def _does_not_exist(self, type_url: str, name: str) -> None:
        st = self._state[type_url]
        st.timers.pop(name, None)
        st.pending_first.discard(name)
        if name in st.names and name not in st.cache:
            log.info("sail xDS: %s %r does not exist (timer)", _short(type_url), name)
            st.absent.add(name)
            self._deliver(type_url, {}, frozenset(), {}, frozenset({name}))

    def _set_names(self, type_url: str, names: frozenset[str]) -> None:
        st = self._state.get(type_url)
        if st is None:
            raise ValueError(f"unknown xDS resource type {type_url}")
        if names == st.names:
            return
        for name in st.names - names:
            timer = st.timers.pop(name, None)
            if timer is not None:
                timer.cancel()
            st.cache.pop(name, None)
            st.absent.discard(name)
            st.pending_first.discard(name)
        st.names = set(names)
        if self._live and self._outbox is not None:
            self._outbox.put_nowait(type_url)

    def _on_response(self, response: discovery_pb2.DiscoveryResponse) -> None:
        type_url = response.type_url
        st = self._state.get(type_url)
        rtype = self._types.get(type_url)
        if st is None or rtype is None:
            self._nack_unknown(response)
            return
        decoded: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for index, packed in enumerate(response.resources):
            name, value, error = _decode_one(rtype, packed, index)
            if error is not None:
                errors[name] = error
            elif name in decoded:
                errors[name] = f"{rtype.short_name} {name!r}: sent twice in one response"
            else:
                decoded[name] = value
        changed: dict[str, Any] = {}
        for name, value in decoded.items():
            if name not in st.names:
                continue  # a wildcard-style server may send more than we asked for
            self._settle(st, name)
            st.absent.discard(name)
            if st.cache.get(name) != value:
                st.cache[name] = value
                changed[name] = value
        for name in errors:
            self._settle(st, name)
        removed: set[str] = set()
        absent: set[str] = set()
        if type_url in _FULL_STATE_TYPES:
            seen = decoded.keys() | errors.keys()
            for name in st.names - seen:
                if name in st.cache:
                    if self._ignore_deletion:
                        log.warning(
                            "sail xDS: server dropped %s %r; kept (ignore_resource_deletion)",
                            rtype.short_name,
                            name,
                        )
                        continue
                    del st.cache[name]
                    removed.add(name)
                elif name in st.pending_first and name not in st.absent:
                    absent.add(name)
                    st.absent.add(name)
                    self._settle(st, name)
        st.pending_first.clear()
        st.nonce = response.nonce
        if errors:
            self._nacks += 1
            detail = "; ".join(errors[n] for n in sorted(errors))
            log.warning("sail xDS: NACK %s version %s: %s", rtype.short_name,
                        response.version_info, detail)
            self._send_now(self._request(type_url, node=False, error=detail))
        else:
            st.version = response.version_info
            self._send_now(self._request(type_url, node=False))
        if changed or removed or errors or absent:
            self._deliver(type_url, changed, frozenset(removed), errors, frozenset(absent))

    def _settle(self, st: _TypeState, name: str) -> None:
        timer = st.timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _nack_unknown(self, response: discovery_pb2.DiscoveryResponse) -> None:
        message = f"sail does not subscribe to type {response.type_url!r}"
        log.warning("sail xDS: NACK: %s", message)
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=message))
        self._send_now(request)

    def _send_now(self, request: discovery_pb2.DiscoveryRequest) -> None:
        # ACKs and NACKs share the ordered outbox with subscription changes.
        assert self._outbox is not None
        self._outbox.put_nowait(request)

    def _deliver(
        self,
        type_url: str,
        changed: Mapping[str, Any],
        removed: frozenset[str],
        errors: Mapping[str, str],
        absent: frozenset[str],
    ) -> None:
        try:
            self._handler.on_resources(type_url, changed, removed, errors, absent)
        except Exception:
            log.exception("sail xDS: handler failed on %s update; continuing", _short(type_url))

    def _notify_connection(self, connected: bool, detail: str) -> None:
        try:
            self._handler.on_connection(connected, detail)
        except Exception:
            log.exception("sail xDS: handler failed on connection change")


def _decode_one(rtype: ResourceType, packed: Any, index: int) -> tuple[str, Any, str | None]:
    """Unpack and decode one resource; never raises."""
    from sail.errors import ResourceError

    if packed.type_url != rtype.type_url:
        return (
            f"resources[{index}]",
            None,
            f"resources[{index}]: type {packed.type_url!r} in a {rtype.short_name} response",
        )
    message = rtype.message_class()
    if not packed.Unpack(message):
        return f"resources[{index}]", None, f"resources[{index}]: cannot unpack"
    name = resource_name(message)
    try:
        return name, rtype.decode(message), None
    except ResourceError as exc:
        return name, None, str(exc)
    except Exception as exc:  # a decoder bug must not kill the stream
        log.exception("sail xDS: decoder failed on %s %r", rtype.short_name, name)
        return name, None, f"{rtype.short_name} {name!r}: internal decoder error: {exc!r}"


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def _version() -> str:
    from sail import __version__

    return __version__

