"""What the sync and asyncio gRPC channels share: the channel's target and subchannels, the
routing prelude's two questions about the target (`locate`, `settled`), and the one shape
of their multicallables (`MultiCallable`, parametrised by the `Kind` of call).

The request path of a call is `sail.grpc._flow` (one unary flow, one streaming flow, no
I/O); each channel module is a shell that drives it: `sail.grpc.channel` with threads and
blocking waits, `sail.grpc.aio` with the event loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from sail.dataplane import pick
from sail.errors import (
    NoCredentials,
    NoHealthyUpstream,
    RequestError,
    UnknownService,
    UnsupportedRequest,
)
from sail.grpc._errors import MeshRpcError  # re-exported: sail.grpc's public name
from sail.grpc._route import check_method, target_name
from sail.grpc._tls import attempt_identity, subchannel_args
from sail.model import RouteAction

if TYPE_CHECKING:
    from sail.dataplane import DataplaneState, UpstreamTlsRuntime
    from sail.grpc._errors import StatusError
    from sail.grpc._flow import Send
    from sail.seam import MeshSeam
    from sail.security.spiffe import SpiffeId
    from sail.security.tls import TlsMaterial

__all__ = [
    "STREAM_STREAM",
    "STREAM_UNARY",
    "SUBCHANNEL_GRACE",
    "UNARY_STREAM",
    "UNARY_UNARY",
    "ChannelCore",
    "Kind",
    "MeshRpcError",
    "MultiCallable",
    "Subchannel",
]


#: How long a subchannel of an endpoint that left the mesh stays open for the calls still
#: on it (closing a grpcio channel cancels its calls).
SUBCHANNEL_GRACE = 30.0


class Subchannel:
    """One endpoint's grpcio channel and the inner multicallables made on it (keyed by the
    mesh channel's multicallable). `tls` is the cluster TLS it was opened for (`None`:
    plaintext)."""

    __slots__ = ("channel", "methods", "tls")

    def __init__(self, channel: Any, tls: UpstreamTlsRuntime | None = None) -> None:
        self.channel = channel
        self.methods: dict[object, Any] = {}
        self.tls = tls


SubchannelKey = tuple[str, "TlsMaterial | None", "SpiffeId | None"]
"""A subchannel's key: its endpoint's `host:port`, the TLS material it was opened with
and the identity its handshakes check (`None`, `None`: plaintext). A rotation makes new
material, so new calls open a new subchannel."""


class ChannelCore:
    """What the sync and asyncio mesh channels share: the target, its subchannels, and
    whether the target is the mesh's. Subclasses say how a grpcio channel is opened
    (`_open`) and closed once its endpoint is gone (`_close_later`)."""

    def __init__(
        self,
        mesh: MeshSeam,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
    ) -> None:
        self._mesh = mesh
        self.dataplane = mesh.dataplane
        self._host, self.service = target_name(target)
        self._credentials = credentials
        self._options = tuple(options)
        self._compression = compression
        self._subchannels: dict[SubchannelKey, Subchannel] = {}
        self._outside: Any = None
        self._closed = False
        with contextlib.suppress(RequestError):  # a refused name fails its calls, not this
            mesh.classify(self._host, self.service)  # asks the control plane, without waiting
        mesh.track(self)

    def _open(
        self, target: str, tls: tuple[grpc.ChannelCredentials, tuple[tuple[str, Any], ...]]
        | None = None,
    ) -> Any:
        """A grpcio channel to `target`: with `tls`'s credentials and options when given,
        else as the mesh channel was made (`credentials`, `options`)."""
        raise NotImplementedError

    def _close_later(self, channel: Any) -> None:
        raise NotImplementedError

    def retire(self, live: frozenset[str]) -> None:
        """Close (after `SUBCHANNEL_GRACE`) the subchannels of endpoints no longer in the
        mesh. Called by the mesh after every config update."""
        for key in [k for k in self._subchannels if k[0] not in live]:
            sub = self._subchannels.pop(key, None)
            if sub is not None:
                self._close_later(sub.channel)

    # -- the routing prelude: where the target stands --------------------------------------

    def locate(self) -> DataplaneState | threading.Event | None:
        """Where a call to the target stands, without waiting (the prelude of every call of
        both channels, after the fork check): the state to route it on when the target is
        the mesh's, `None` when it is outside the mesh, or an event to wait on for the
        control plane's first answer about it (then `settled()`). Raises `UnknownService`
        for a mesh name the mesh does not have."""
        mesh = self._mesh
        mesh.check_fork()
        state = self.dataplane.state
        if self.service in state.services:
            return state
        verdict = mesh.classify(self._host, self.service)
        if verdict is True:
            return self.dataplane.state
        if verdict is False:
            return self.settled()
        return verdict

    def settled(self) -> DataplaneState | None:
        """After waiting on `locate()`'s event: the state to route on, or `None` for a
        target outside the mesh. Raises `UnknownService` for a mesh name the mesh does not
        have."""
        state = self.dataplane.state
        if self._mesh.settled(self.service):  # raises RejectedService for a refused name
            return state
        if self._mesh.is_candidate(self._host):
            raise UnknownService(f"service {self.service!r}: the mesh has no listener for it")
        return None

    def discovery_limit(self, timeout: float | None) -> float:
        """How long a call with `timeout` waits for the control plane's first answer."""
        limit = self._mesh.discovery_timeout
        return limit if timeout is None else min(timeout, limit)

    def _method(
        self, where: SubchannelKey, tls: UpstreamTlsRuntime | None, key: object,
        make: Callable[[Any], Any],
    ) -> Any:
        """The multicallable `key` on subchannel `where`, made by `make(channel)` the first
        time."""
        sub = self._subchannel(where, tls)
        fn = sub.methods.get(key)
        if fn is None:
            fn = sub.methods[key] = make(sub.channel)
        return fn

    def _subchannel(
        self, where: SubchannelKey, tls: UpstreamTlsRuntime | None = None
    ) -> Subchannel:
        """The subchannel `where` (endpoint, TLS material), opened on first use. Opening
        one for new material of a cluster's TLS (a rotation) closes, after the grace, the
        endpoint's subchannels on that TLS's older material: their calls finish, new
        calls present the new certificate."""
        sub = self._subchannels.get(where)
        if sub is None:
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")
            authority, material, peer = where
            args = None
            if tls is not None:  # fail closed: a TLS cluster's subchannel is never plaintext
                if material is None or peer is None:
                    raise NoCredentials(f"service {self.service!r}: no credentials for "
                                        f"{authority}'s TLS yet: {tls.why}")
                args = subchannel_args(material, peer, self._options)
            channel = self._open(authority, args)
            sub = self._subchannels.setdefault(where, Subchannel(channel, tls))
            if sub.channel is not channel:  # another thread opened it first
                self._close_later(channel)
            elif tls is not None:
                for key, old in list(self._subchannels.items()):
                    if key[0] == authority and old.tls is tls and key != where:
                        self._subchannels.pop(key, None)
                        self._close_later(old.channel)
        return sub

    def _plain(self) -> Any:
        """The grpcio channel of a target outside the mesh."""
        if self._outside is None:
            self._outside = self._open(self.service)
        return self._outside

    def _some_endpoint(self) -> tuple[SubchannelKey, UpstreamTlsRuntime | None] | None:
        """The subchannel key (and cluster TLS) of an endpoint of one of the service's
        clusters (for connectivity), if any."""
        state = self.dataplane.state
        runtime = state.services.get(self.service)
        if runtime is None:
            return None
        for vhost in runtime.config.virtual_hosts:
            for route in vhost.routes:
                action = route.action
                names = action.cluster_names() if isinstance(action, RouteAction) else ()
                for name in names:
                    cluster = state.clusters.get(name)
                    if cluster is not None and cluster.assignment is not None:
                        tls = cluster.tls
                        try:
                            endpoint = pick(cluster)
                            peer = None if tls is None else attempt_identity(
                                self.service, name, tls, endpoint)
                        except (NoHealthyUpstream, UnsupportedRequest):
                            continue
                        material = tls.material if tls is not None else None
                        return (endpoint.authority, material, peer), tls
        return None


class Kind(NamedTuple):
    """What a multicallable's calls are: grpcio's name for the kind (the channel method that
    makes it), and whether its requests and its responses stream."""

    name: str
    streams_requests: bool
    streams_responses: bool


UNARY_UNARY = Kind("unary_unary", False, False)
UNARY_STREAM = Kind("unary_stream", False, True)
STREAM_UNARY = Kind("stream_unary", True, False)
STREAM_STREAM = Kind("stream_stream", True, True)


class MultiCallable:
    """The one shape of every multicallable of both channels: a method of the channel's
    target, the `Kind` of its calls, and its inner multicallables (grpcio's, of the same
    kind) on each subchannel and on the plain channel of a target outside the mesh. A
    shell's multicallable adds the grpc signatures and drives a `UnaryFlow` (one response)
    or a `StreamFlow` (streamed responses) per call."""

    __slots__ = (
        "__weakref__",
        "_channel",
        "_deserializer",
        "_error",
        "_kind",
        "_method",
        "_registered",
        "_serializer",
    )

    def __init__(
        self, channel: ChannelCore, kind: Kind, method: str, serializer: Any,
        deserializer: Any, registered: bool,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._error: StatusError | None = check_method(channel.service, method)

    def _on(self, channel: Any) -> Any:
        """grpcio's multicallable of this kind for the method, on `channel`."""
        return getattr(channel, self._kind.name)(
            self._method, self._serializer, self._deserializer,
            _registered_method=self._registered,
        )

    def _inner(self, sent: Send) -> Any:
        """The inner multicallable for attempt `sent`, on the subchannel of its endpoint and
        its cluster's current TLS material (two dict probes once both exist)."""
        tls = sent.tls
        where = (sent.endpoint.authority, tls.material if tls is not None else None, sent.peer)
        sub = self._channel._subchannels.get(where)
        if sub is not None:
            fn = sub.methods.get(self)
            if fn is not None:
                return fn
        return self._channel._method(where, tls, self, self._on)

    def _outside(self) -> Any:
        """The inner multicallable on the plain channel of a target outside the mesh."""
        return self._on(self._channel._plain())
