"""A State-of-the-World ADS server over grpc.aio, serving whatever resources it is given.

It is the wire half of `sail registry` and of `sail.testing.XdsServer`; it knows nothing of
how resources are made. What real peers need of it (see docs/architecture.md):

* version and nonce per type URL per stream; a request carrying a stale nonce is ignored
  (Envoy's `xds_protocol.rst`, "ACK and NACK semantics");
* a response is sent when the requested names change or when what the stream is subscribed
  to changes, and never just because an ACK arrived (gRPC clients widen their name lists
  step by step and would loop otherwise);
* an empty name list on the first LDS or CDS request means wildcard, and stays wildcard
  while the client keeps sending empty lists (Envoy);
* requests for names that do not exist yet are remembered, and answered when they appear;
* a NACK is recorded with the client's node id and reason, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import attrs
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from sail.xds.codec.extensions import type_url_of

__all__ = ["SERVER_OPTIONS", "AckRecord", "AdsServer", "ResourceStore", "StreamView"]

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # xDS clients keep their stream alive with pings (sail's every 30 s, Envoy's and
    # gRPC's as configured) while no data flows; grpc's default server policy takes a
    # ping more often than every 5 minutes as abuse and ends the stream (GOAWAY
    # too_many_pings). Accept one every 10 s, as istiod's keepalive policy does (15 s).
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
"""The options of a grpc server that serves ADS."""

log = logging.getLogger("sail.xds.server")

_WILDCARD_TYPES = frozenset(
    {
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    }
)


@attrs.frozen
class AckRecord:
    """The last thing one client said about one type: an ACK of `version`, or a NACK
    (`error` set, `version` is the version it still runs)."""

    node_id: str
    type_url: str
    version: str
    nonce: str
    error: str = ""

    @property
    def nacked(self) -> bool:
        return bool(self.error)


class ResourceStore:
    """Resources by type URL and name, with one store-wide increasing version.

    Every change bumps the version; streams subscribed to a changed type are told.
    Streams get no answer at all until the first `set_all`/`put` (`ready`).
    Not thread-safe: use it from the server's event loop.
    """

    def __init__(self) -> None:
        self._resources: dict[str, dict[str, any_pb2.Any]] = {}
        self._type_versions: dict[str, int] = {}
        self._named_only: dict[str, frozenset[str]] = {}
        self._version = 0
        self._streams: set[_Stream] = set()
        # Nothing is sent before the first resource set: an empty answer would tell
        # clients that every resource they ask for is gone (a registry just restarted).
        self.ready = False

    @property
    def version(self) -> int:
        return self._version

    def type_version(self, type_url: str) -> int:
        return self._type_versions.get(type_url, 0)

    def resources(self, type_url: str) -> Mapping[str, any_pb2.Any]:
        return self._resources.get(type_url, {})

    def set_all(self, messages: Iterable[Any], named_only: Iterable[Any] = ()) -> None:
        """Replace every resource: types not among `messages` become empty.

        `named_only` are resources too, but sent only to clients that ask for them by name,
        never in a wildcard answer (servers' listeners, which Envoy would try to bind)."""
        hidden = list(named_only)
        names: dict[str, set[str]] = {}
        for m in hidden:
            names.setdefault(type_url_of(m), set()).add(_name_of(m))
        self._named_only = {t: frozenset(n) for t, n in names.items()}
        self._set_packed({(type_url_of(m), _name_of(m)): _pack(m) for m in [*messages, *hidden]})

    def named_only(self, type_url: str) -> frozenset[str]:
        """The resources of `type_url` that wildcard subscriptions do not get."""
        return self._named_only.get(type_url, frozenset())

    def put(self, *messages: Any) -> None:
        """Add or replace some resources, keeping the others."""
        current = {
            (type_url, name): packed
            for type_url, res in self._resources.items()
            for name, packed in res.items()
        }
        current.update({(type_url_of(m), _name_of(m)): _pack(m) for m in messages})
        self._set_packed(current)

    def remove(self, type_url: str, *names: str) -> None:
        res = self._resources.get(type_url, {})
        if not any(n in res for n in names):
            return
        self._version += 1
        self._resources[type_url] = {n: p for n, p in res.items() if n not in names}
        self._type_versions[type_url] = self._version
        self._notify([type_url])

    def _set_packed(self, current: Mapping[tuple[str, str], any_pb2.Any]) -> None:
        by_type: dict[str, dict[str, any_pb2.Any]] = {t: {} for t in self._resources}
        for (type_url, name), packed in current.items():
            # Keep the very object of an unchanged resource: streams compare by identity
            # to tell whether what they subscribe to changed.
            previous = self._resources.get(type_url, {}).get(name)
            same = previous is not None and previous.value == packed.value
            by_type.setdefault(type_url, {})[name] = previous if same else packed
        changed = [t for t, res in by_type.items() if _differs(self._resources.get(t), res)]
        if not self.ready:
            self.ready = True
            # Answer every stream that has been waiting, whatever it asked for.
            changed = sorted({*changed, *(t for s in self._streams for t in s.subs)})
        if not changed:
            return
        self._version += 1
        for type_url in changed:
            self._resources[type_url] = by_type[type_url]
            self._type_versions[type_url] = self._version
        self._notify(changed)

    def _notify(self, type_urls: list[str]) -> None:
        # Clusters and endpoints before the listeners and routes that use them, so a
        # client never routes to a cluster it has not been sent (Envoy's xds_protocol.rst,
        # "eventual consistency considerations").
        ordered = sorted(type_urls, key=lambda t: _PUSH_ORDER.get(t, len(_PUSH_ORDER)))
        for stream in list(self._streams):
            for type_url in ordered:
                stream.maybe_send(type_url)


_PUSH_ORDER = {
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": 0,
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": 1,
    "type.googleapis.com/envoy.config.listener.v3.Listener": 2,
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": 3,
}


def _differs(old: Mapping[str, any_pb2.Any] | None, new: Mapping[str, any_pb2.Any]) -> bool:
    if old is None:
        return bool(new)
    if old.keys() != new.keys():
        return True
    return any(old[k].value != new[k].value for k in new)


def _name_of(message: Any) -> str:
    return str(getattr(message, "name", "") or getattr(message, "cluster_name", ""))


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class _TypeSub:
    __slots__ = ("names", "nonce", "sent", "sent_names", "sent_version", "wildcard")

    def __init__(self) -> None:
        self.names: frozenset[str] = frozenset()
        self.wildcard = False
        self.nonce = ""
        self.sent_version = -1
        self.sent_names: frozenset[str] | None = None
        self.sent: tuple[any_pb2.Any, ...] | None = None  # the resources last sent


class _Stream:
    def __init__(self, server: AdsServer, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.node_id = ""
        self.node: Any = None
        self.subs: dict[str, _TypeSub] = {}
        self.last: dict[str, AckRecord] = {}  # the client's last ACK or NACK, per type
        self.outbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = asyncio.Queue()

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        if request.HasField("node"):
            self.node = request.node
            self.node_id = request.node.id
        type_url = request.type_url
        sub = self.subs.get(type_url)
        first = sub is None
        if sub is None:
            sub = self.subs[type_url] = _TypeSub()
        if request.response_nonce and request.response_nonce != sub.nonce:
            return  # stale: answers a response that a newer one has replaced
        if request.response_nonce:
            record = AckRecord(
                node_id=self.node_id,
                type_url=type_url,
                version=request.version_info,
                nonce=request.response_nonce,
                error=request.error_detail.message if request.HasField("error_detail") else "",
            )
            self.last[type_url] = record
            self.server.record(record)
        names = frozenset(request.resource_names)
        if type_url in _WILDCARD_TYPES and (first or sub.wildcard) and not names:
            sub.wildcard = True
        elif names:
            sub.wildcard = "*" in names
        sub.names = names - {"*"}
        self.maybe_send(type_url)

    def maybe_send(self, type_url: str) -> None:
        sub = self.subs.get(type_url)
        if sub is None:
            return
        store = self.server.store
        if not store.ready:
            return
        version = store.type_version(type_url)
        names = None if sub.wildcard else sub.names
        if sub.sent_version == version and sub.sent_names == names:
            return
        if names is not None and not names and sub.sent_names is None:
            return  # nothing asked for yet, nothing sent yet
        resources = store.resources(type_url)
        if names is None:
            hidden = store.named_only(type_url)
            chosen = tuple(r for n, r in resources.items() if n not in hidden)
        else:
            chosen = tuple(resources[n] for n in sorted(names) if n in resources)
        if (
            sub.sent is not None
            and sub.sent_names == names
            and len(chosen) == len(sub.sent)
            and all(a is b for a, b in zip(chosen, sub.sent, strict=True))
        ):
            return  # the type changed, but not what this stream subscribes to
        sub.nonce = str(next(self.server._nonces))
        sub.sent_version = version
        sub.sent_names = names
        sub.sent = chosen
        shape = self.server.shape
        response = discovery_pb2.DiscoveryResponse(
            type_url=type_url,
            version_info=str(version),
            nonce=sub.nonce,
            resources=chosen if shape is None else [shape(self.node, type_url, r)
                                                     for r in chosen],
        )
        self.outbox.put_nowait(response)


@attrs.frozen
class StreamView:
    """What the server knows of one connected client, for sync status and CSDS.

    **Parameters**

    * `node` - the client's `Node` message (id, cluster, metadata...).
    * `sent` - per type URL, the version last sent on this stream.
    * `last` - per type URL, the client's last ACK or NACK.
    * `names` - per type URL, what the client subscribes to (`None`: wildcard).
    """

    peer: str
    node: Any
    sent: Mapping[str, str]
    last: Mapping[str, AckRecord]
    names: Mapping[str, frozenset[str] | None]


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The ADS servicer. Add it to a `grpc.aio.server` with `add_to(server)`.

    `shape(node, type_url, resource)`, when given, is what each node gets of a resource
    (`sail.xds.envoy_files.envoy_file_tls`: certificate files for Envoy nodes); it must
    return the same object for a resource it leaves alone."""

    def __init__(
        self, store: ResourceStore | None = None,
        shape: Callable[[Any, str, any_pb2.Any], any_pb2.Any] | None = None,
    ) -> None:
        self.store = store if store is not None else ResourceStore()
        self.shape = shape
        self.acks: dict[tuple[str, str], AckRecord] = {}
        self.nacks: list[AckRecord] = []
        self.requests = 0
        self._nonces = itertools.count(1)

    def add_to(self, server: Any) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    def streams(self) -> list[StreamView]:
        """The connected clients, as of now."""
        return [
            StreamView(
                peer=s.peer,
                node=s.node,
                sent={t: str(sub.sent_version) for t, sub in s.subs.items() if sub.nonce},
                last=dict(s.last),
                names={t: None if sub.wildcard else sub.names for t, sub in s.subs.items()},
            )
            for s in self.store._streams
        ]

    def record(self, record: AckRecord) -> None:
        self.acks[(record.node_id, record.type_url)] = record
        if record.nacked:
            self.nacks.append(record)
            log.warning(
                "NACK from %s for %s version %s: %s",
                record.node_id or "?",
                record.type_url.rsplit(".", 1)[-1],
                record.version,
                record.error,
            )

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream(self, context.peer())
        self.store._streams.add(stream)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    self.requests += 1
                    stream.on_request(request)
            except Exception as exc:  # a broken peer ends its own stream only
                log.info("ADS stream from %s ended: %r", stream.peer, exc)
            finally:
                stream.outbox.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                response = await stream.outbox.get()
                if response is None:
                    return
                yield response
        finally:
            reader.cancel()
            self.store._streams.discard(stream)

    async def DeltaAggregatedResources(
        self, request_iterator: Any, context: Any
    ) -> Any:
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "sail serves State-of-the-World ADS")
