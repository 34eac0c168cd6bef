"""A generic xDS v3 ADS client (State of the World), driven by one background thread.

The client knows nothing of listeners or clusters: a resource type is a type URL and a
decoder (`sail.xds.codec.types.ResourceType`). Its owner says which names it wants per type
(`set_names`); the client keeps one ADS stream, sends a request whenever a name set changes,
decodes every response, ACKs or NACKs it, and hands the owner what changed. All of that runs
on the client's own thread, so the owner's handler is called serially and never
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
  require it), so this settles unknown names in one round trip instead of 15 s. To keep
  that sound, only one request that changes a type's names is in flight at a time; later
  changes ride on the ACK of its answer (or go out after 1 s if a server does not answer).
  A server push racing the request can still make that call early; the name stays
  subscribed and turns up as soon as the server sends it.
* Reconnects back off 1 s, ×1.6, capped at 120 s, ±20 % jitter; a stream that delivered a
  response is retried at once. Servers are tried in bootstrap order and the client falls
  back to the next one when a server cannot be reached (A71); each reconnect starts again
  from the first, so the client returns to the primary as soon as it is back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import attrs
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from sail._version import __version__
from sail.bootstrap import Bootstrap, XdsServer
from sail.errors import ResourceError, SecurityError
from sail.status import Nack
from sail.xds.codec.types import RESOURCE_TYPES, ResourceType, resource_name, unpack
from sail.xds.credentials import OwnCertificate, channel_credentials

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
# How long a name change waits behind an unanswered one before it is sent anyway (for
# servers that do not answer requests for names they do not have).
_ANSWER_WAIT = 1.0


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
    """A point-in-time view of the client, for `config-dump`, `Mesh.status()` and tests.

    `nacks` counts the responses NACKed since the client was made; `refused` is each
    resource refused and not since replaced by a good version, deleted by the server or
    unsubscribed (by type URL, then name)."""

    server: str | None
    connected: bool
    last_error: str
    versions: Mapping[str, str]
    nacks: int
    names: Mapping[str, frozenset[str]]
    refused: tuple[Nack, ...] = ()


class _TypeState:
    __slots__ = (
        "absent",
        "asked_at",
        "cache",
        "nacked",
        "names",
        "nonce",
        "pending_first",
        "sent_names",
        "timers",
        "version",
    )

    timers: dict[str, float]  # name -> deadline of its does-not-exist timer

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.version = ""
        self.nonce = ""
        self.cache: dict[str, Any] = {}
        self.absent: set[str] = set()
        self.timers = {}
        # name -> (version refused, reason): resources whose last version was NACKed. A
        # new dict on every change, never changed in place: `status()` reads it from
        # other threads.
        self.nacked: dict[str, tuple[str, str]] = {}
        # Names written in a request and not yet answered by a response of this type.
        self.pending_first: set[str] = set()
        # The names of the last request written, and when a request that changed them
        # went out unanswered (None: answered). One such request at a time is in flight.
        self.sent_names: frozenset[str] = frozenset()
        self.asked_at: float | None = None


_clients: weakref.WeakSet[AdsClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child inherits no threads. Reset every client's stream state here, but start
    # nothing: a thread started inside an at-fork hook can crash the child, and gRPC
    # must not be touched before the child runs its own code. The owner restarts the
    # client on first use in the child (`Mesh.check_fork`); the parent's
    # channels are never touched, and until then the child serves from the snapshot it
    # inherited.
    for client in list(_clients):
        client._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

_CLOSE = object()


_SETTLED = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)


class _Stream:
    """One connection attempt and its stream, run on a thread of its own.

    It reports to the client's event queue: ("up"|"unreachable"|"down"|"response", self,
    detail). The client writes requests with `send`; gRPC's own thread consumes them.
    """

    def __init__(self, server: XdsServer, events: queue.Queue[Any], connect_timeout: float,
                 own_certificate: OwnCertificate | None = None):
        self.server = server
        self._own = own_certificate
        self.delivered = False
        self._events = events
        self._timeout = connect_timeout
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._channel: grpc.Channel | None = None
        self._call: Any = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="sail-xds-stream", daemon=True)
        self._thread.start()

    def send(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._outbox.put(request)

    def cancel(self) -> None:
        self._cancelled = True
        self._outbox.put(_CLOSE)
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            self._channel.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _connected(self, channel: grpc.Channel) -> bool:
        """Whether `channel` connects within the connect timeout. A connection that fails
        (refused, reset, a failed handshake: TRANSIENT_FAILURE) is an answer at once, so
        that the client falls back to the next server without waiting out the timeout,
        as gRFC A71 falls back when the primary's channel fails."""
        seen: list[grpc.ChannelConnectivity] = []
        settled = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state in _SETTLED and not seen:
                seen.append(state)
                settled.set()

        channel.subscribe(watch, try_to_connect=True)
        try:
            settled.wait(self._timeout)
        finally:
            channel.unsubscribe(watch)
        return bool(seen) and seen[0] is grpc.ChannelConnectivity.READY

    def _requests(self) -> Iterator[discovery_pb2.DiscoveryRequest]:
        while True:
            item = self._outbox.get()
            if item is _CLOSE:
                return
            yield item

    def _run(self) -> None:
        uri = self.server.server_uri
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", -1)]
        try:
            credentials = channel_credentials(self.server.creds, self._own)
        except SecurityError as exc:
            self._events.put(("unreachable", self, f"{uri}: {exc}"))
            return
        if credentials is None:
            channel = grpc.insecure_channel(uri, options=options)
        else:
            channel = grpc.secure_channel(uri, credentials, options=options)
        self._channel = channel
        if not self._connected(channel):
            channel.close()
            self._events.put(("unreachable", self, f"{uri}: unreachable"))
            return
        if self._cancelled:
            channel.close()
            return
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        detail = f"{uri}: stream closed by server"
        try:
            self._call = stub.StreamAggregatedResources(self._requests())
            self._events.put(("up", self, uri))
            for response in self._call:
                self.delivered = True
                self._events.put(("response", self, response))
        except grpc.RpcError as exc:
            detail = f"{uri}: {exc.code().name}: {exc.details()}"
        except Exception as exc:  # never let the stream thread die unreported
            log.exception("sail xDS: stream to %s failed", uri)
            detail = f"{uri}: {exc!r}"
        finally:
            self._outbox.put(_CLOSE)
            channel.close()
            self._events.put(("down", self, detail))


class AdsClient:
    """One ADS stream to the bootstrap's xDS servers, driven by one daemon thread.

    All protocol state lives on that thread, which takes events (responses, stream up and
    down, calls from the owner) from one queue and runs the timers between them; the
    stream itself reads on a thread of its own. Plain threads and sync gRPC, not asyncio:
    a forked child can start a fresh client this way, where grpc.aio state inherited
    from the parent crashes it.

    **Parameters**

    * `bootstrap` - servers and node identity.
    * `handler` - receives decoded resources (see `XdsHandler`).
    * `resource_types` - decoders by type URL (default: the four core types).
    * `does_not_exist_timeout` - seconds (gRFC A27: 15).
    * `connect_timeout` - seconds to wait for a server before trying the next one.
    * `own_certificate` - the workload's certificate, presented to a `tls` server that asks
      for one when the bootstrap names no certificate files (`sail.xds.credentials`).
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
        own_certificate: OwnCertificate | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._own_certificate = own_certificate
        self._handler = handler
        self._types = resource_types
        self._dne_timeout = does_not_exist_timeout
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._state: dict[str, _TypeState] = {t: _TypeState() for t in resource_types}
        self._events: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stream: _Stream | None = None
        self._first_request = True
        self._server_index = 0
        self._attempt = 0
        self._next_attempt = 0.0
        self._timers: list[tuple[float, int, str, str]] = []
        self._timer_seq = itertools.count()
        self._ignore_deletion = False
        self._live = False
        self._server: str | None = None
        self._last_error = ""
        self._nacks = 0
        _clients.add(self)

    # -- owner API (any thread) -------------------------------------------------------------

    def start(self) -> None:
        """Start the client thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="sail-xds", daemon=True)
        self._thread.start()

    def set_names(self, type_url: str, names: Iterable[str]) -> None:
        """Subscribe `type_url` to exactly `names`. Thread-safe; sends only on change."""
        wanted = frozenset(names)
        self.call_soon(lambda: self._set_names(type_url, wanted))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the client's thread (serialized with the handler)."""
        if threading.current_thread() is self._thread:
            fn()
        else:
            self._events.put(("call", None, fn))

    def status(self) -> ClientStatus:
        """A snapshot of the client's state (any thread; it reads values the client's
        thread replaces whole, never one it changes in place)."""
        states = list(self._state.items())
        return ClientStatus(
            server=self._server,
            connected=self._live,
            last_error=self._last_error,
            versions={t: s.version for t, s in states if s.version},
            nacks=self._nacks,
            names={t: frozenset(s.names) for t, s in states if s.names},
            refused=tuple(
                Nack(t, name, reason, version)
                for t, s in sorted(states)
                for name, (version, reason) in sorted(s.nacked.items())
            ),
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the stream and the thread."""
        self._closed = True
        self._events.put(("close", None, None))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _reset_after_fork(self) -> None:
        self._thread = None
        self._stream = None
        self._live = False
        self._next_attempt = 0.0
        self._events = queue.Queue()
        self._timers = []
        for st in self._state.values():
            st.timers.clear()
            st.pending_first.clear()

    # -- the client thread ------------------------------------------------------------------

    def _main(self) -> None:
        while not self._closed:
            try:
                self._step()
            except Exception:  # the control path must never die silently
                log.exception("sail xDS: unexpected error; the client carries on")
                time.sleep(0.1)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
            stream.join(1.0)

    def _step(self) -> None:
        now = time.monotonic()
        if self._stream is None and now >= self._next_attempt:
            server = self._bootstrap.xds_servers[self._server_index]
            self._stream = _Stream(server, self._events, self._connect_timeout,
                                   self._own_certificate)
        wake = self._timers[0][0] if self._timers else now + 3600
        if self._stream is None:
            wake = min(wake, self._next_attempt)
        for st in self._state.values():
            if st.asked_at is not None and st.names != st.sent_names:
                wake = min(wake, st.asked_at + _ANSWER_WAIT)
        try:
            kind, stream, payload = self._events.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            kind, stream, payload = "tick", None, None
        self._fire_timers()
        self._flush_names()
        if kind == "call":
            payload()
        elif kind == "close":
            self._closed = True
        elif stream is not self._stream or stream is None:
            return  # from a stream we already gave up on
        elif kind == "response":
            self._on_response(payload)
        elif kind == "up":
            self._on_up(stream)
        elif kind == "unreachable":
            self._last_error = payload
            log.warning("sail xDS: %s", payload)
            self._stream = None
            self._next_server(reached=False)
        elif kind == "down":
            self._on_down(stream, payload)

    def _next_server(self, *, reached: bool) -> None:
        """Choose what to try next: after a stream that delivered, the primary again at
        once; after an unreachable server, the next one; after a full round (or a stream
        that ended before any response), the primary after a backoff."""
        if reached:
            self._server_index = 0
            self._attempt = 0
            self._next_attempt = 0.0
            return
        self._server_index += 1
        if self._server_index < len(self._bootstrap.xds_servers):
            self._next_attempt = 0.0
            return
        self._server_index = 0
        delay = self._backoff.delay(self._attempt)
        self._attempt += 1
        self._next_attempt = time.monotonic() + delay
        log.info("sail xDS: reconnecting in %.1fs", delay)

    def _on_up(self, stream: _Stream) -> None:
        self._server = stream.server.server_uri
        self._ignore_deletion = stream.server.ignore_resource_deletion
        self._live = True
        self._first_request = True
        for st in self._state.values():
            st.nonce = ""  # nonces belong to a stream; versions carry over (A27)
            st.sent_names = frozenset()
            st.asked_at = None
        for type_url in self._ordered_types():
            if self._state[type_url].names:
                self._send(self._request(type_url))
        self._notify_connection(True, stream.server.server_uri)

    def _on_down(self, stream: _Stream, detail: str) -> None:
        self._stream = None
        self._live = False
        self._last_error = detail
        self._timers.clear()
        for st in self._state.values():
            st.timers.clear()
            st.pending_first.clear()
        if not self._closed:
            log.warning("sail xDS: stream ended: %s", detail)
            self._notify_connection(False, detail)
        if not stream.delivered:
            # Reached, then closed before any response: back off rather than spin.
            self._server_index = len(self._bootstrap.xds_servers) - 1
        self._next_server(reached=stream.delivered)

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

    def _request(self, type_url: str, error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        st = self._state[type_url]
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=st.version,
            response_nonce=st.nonce,
            resource_names=sorted(st.names),
        )
        if error is not None:
            request.error_detail.CopyFrom(
                status_pb2.Status(code=_INVALID_ARGUMENT, message=error)
            )
        return request

    def _send(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Write a request on the live stream and arm timers for names never received."""
        if self._stream is None or not self._live:
            return
        if self._first_request:
            request.node.CopyFrom(self._node())
            self._first_request = False
        self._stream.send(request)
        st = self._state.get(request.type_url)
        if st is None:
            return
        names = frozenset(request.resource_names)
        if names != st.sent_names:
            st.sent_names = names
            st.asked_at = time.monotonic()
        deadline = time.monotonic() + self._dne_timeout
        for name in names:
            if name in st.cache or name in st.absent or name in st.timers:
                continue
            st.pending_first.add(name)
            st.timers[name] = deadline
            heapq.heappush(self._timers, (deadline, next(self._timer_seq), request.type_url, name))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            deadline, _, type_url, name = heapq.heappop(self._timers)
            st = self._state[type_url]
            if st.timers.get(name) != deadline:
                continue  # cancelled or re-armed
            del st.timers[name]
            st.pending_first.discard(name)
            if name in st.names and name not in st.cache:
                log.info("sail xDS: %s %r does not exist (timer)", _short(type_url), name)
                st.absent.add(name)
                self._deliver(type_url, {}, frozenset(), {}, frozenset({name}))

    def _flush_names(self) -> None:
        """Send name changes held back behind an unanswered request, once a server has
        taken `_ANSWER_WAIT` seconds without answering it."""
        now = time.monotonic()
        for type_url, st in self._state.items():
            if (
                st.asked_at is not None
                and now - st.asked_at >= _ANSWER_WAIT
                and st.names != st.sent_names
            ):
                self._send(self._request(type_url))

    def _set_names(self, type_url: str, names: frozenset[str]) -> None:
        st = self._state.get(type_url)
        if st is None:
            raise ValueError(f"unknown xDS resource type {type_url}")
        if names == st.names:
            return
        for name in st.names - names:
            st.timers.pop(name, None)
            st.cache.pop(name, None)
            st.absent.discard(name)
            st.pending_first.discard(name)
        if any(name not in names for name in st.nacked):
            st.nacked = {n: v for n, v in st.nacked.items() if n in names}
        st.names = set(names)
        if st.asked_at is None:
            self._send(self._request(type_url))
        # else: the change rides on the ACK of the answer we are waiting for. One name
        # change in flight at a time is what lets "absent from the next response" mean
        # "does not exist": a second request sent before the first is answered would
        # make the first answer look like a verdict on names it never covered.

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
            st.timers.pop(name, None)
            st.absent.discard(name)
            if st.cache.get(name) != value:
                st.cache[name] = value
                changed[name] = value
        for name in errors:
            st.timers.pop(name, None)
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
                elif (
                    name in st.pending_first or name in st.nacked
                ) and name not in st.absent:
                    # A name refused and never good that the server stops sending is
                    # deleted too: it is no longer a broken resource but a missing one.
                    absent.add(name)
                    st.absent.add(name)
                    st.timers.pop(name, None)
        st.pending_first.clear()
        self._note_refused(st, response.version_info, decoded, errors, removed | absent)
        st.nonce = response.nonce
        st.asked_at = None
        if errors:
            self._nacks += 1
            detail = "; ".join(errors[n] for n in sorted(errors))
            log.warning("sail xDS: NACK %s version %s: %s", rtype.short_name,
                        response.version_info, detail)
            self._send(self._request(type_url, error=detail))
        else:
            st.version = response.version_info
            self._send(self._request(type_url))
        if changed or removed or errors or absent:
            self._deliver(type_url, changed, frozenset(removed), errors, frozenset(absent))

    @staticmethod
    def _note_refused(
        st: _TypeState,
        version: str,
        decoded: Mapping[str, Any],
        errors: Mapping[str, str],
        gone: set[str],
    ) -> None:
        """Keep `st.nacked` true after a response: a good version or a deletion clears a
        name's entry, a refused one sets it. Entries for names not subscribed (a resource
        whose name could not be read, a server sending more than was asked) last until the
        next response of the type."""
        if not st.nacked and not errors:
            return
        kept = {
            n: v for n, v in st.nacked.items()
            if n in st.names and n not in decoded and n not in gone
        }
        kept.update((n, (version, reason)) for n, reason in errors.items())
        if kept != st.nacked:
            st.nacked = kept

    def _nack_unknown(self, response: discovery_pb2.DiscoveryResponse) -> None:
        message = f"sail does not subscribe to type {response.type_url!r}"
        log.warning("sail xDS: NACK: %s", message)
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=message))
        self._send(request)

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
    """Unpack (through a `Resource` wrapper if any) and decode one resource; never raises."""
    where = f"resources[{index}]"
    try:
        type_url, message = unpack(packed)
    except ResourceError as exc:
        return where, None, f"{where}: {exc.reason}"
    if type_url != rtype.type_url:
        return where, None, f"{where}: type {type_url!r} in a {rtype.short_name} response"
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
    return __version__

