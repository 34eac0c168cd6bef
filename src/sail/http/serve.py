"""`mesh.serve(app, port=...)`: an ASGI app on uvicorn, with the mesh's mTLS.

Each connection is classified on its first byte before uvicorn's HTTP protocol sees it: a
TLS handshake record (`0x16`) is a TLS connection, anything else plaintext. The byte is
peeked (`MSG_PEEK`), not read, so the TLS handshake (asyncio's `loop.start_tls`) or the
HTTP parser then reads the connection from its start. What each mode accepts (Istio's
PeerAuthentication modes):

| mode | TLS (mTLS) | plaintext |
|---|---|---|
| `STRICT` | served; a client certificate the roots verify is required | refused (closed) |
| `PERMISSIVE` | served, as STRICT | served |
| `DISABLE` | not served as TLS (the bytes go to the HTTP parser, which refuses them) | served |

Istio turns PERMISSIVE into STRICT or DISABLE for proxyless gRPC, since gRPC servers
cannot serve both on one port; sail serves both on one port, as Envoy's sidecar does.
The mode is read per new connection, so `server.mode = "STRICT"` takes effect on the next
connection; connections already open keep theirs.

The TLS context is the workload's current one (`sail.security.tls.ServerTls`), made
again when the certificate rotates: each new connection presents the current
certificate. The caller's verified identity reaches the app as the ASGI TLS extension
(`scope["extensions"]["tls"]`, which uvicorn does not fill) and as
`sail.current_request().peer` (a `sail.Peer`). uvicorn is used through its public `http=`
protocol-class hook only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from sail.context import Peer
from sail.model import host_port
from sail.security.tls import peer_sans, refused_server_tls

if TYPE_CHECKING:
    from sail.model import Listener
    from sail.seam import MeshSeam
    from sail.security.tls import ServerTls

__all__ = ["MODES", "MeshHttpServer", "mode_of", "peer_of"]

log = logging.getLogger("sail.server")

MODES = ("STRICT", "PERMISSIVE", "DISABLE")
NOT_SERVING = "NOT_SERVING"  # an xDS-enabled server without a usable Listener: refuse all
_TLS_HANDSHAKE = 0x16
#: How long a new connection may take to send its first byte, and a TLS handshake to end.
FIRST_BYTE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def mode_of(listener: Listener | None, providers: Collection[str]) -> tuple[str, str]:
    """The mode a server Listener asks of an HTTP server, `(mode, "")`, or
    `(NOT_SERVING, why)` when sail cannot serve exactly what it says.

    Only the transport decides: chains with a `DownstreamTlsContext` are TLS, the rest
    plaintext, and a chain for TLS connections is told from the rest by
    `transport_protocol: tls` (as Istio's PERMISSIVE inbound listener does). TLS chains
    only: STRICT; both: PERMISSIVE; plaintext only: DISABLE. What the server cannot
    apply per connection is refused, not ignored: other `filter_chain_match` criteria,
    a TLS chain that does not require a client certificate, a certificate provider
    instance other than the workload's."""
    if listener is None:
        return NOT_SERVING, "no Listener for this address yet"
    tls_chains, plain = [], []
    for chain in listener.chains():
        match = chain.match
        others = (match.prefix_ranges or match.source_prefix_ranges or match.source_ports
                  or match.source_type.value or (match.never and not match.tls))
        if others:
            return NOT_SERVING, (f"filter chain {chain.name or '(unnamed)'!r} matches on more "
                                 "than the transport, which sail's HTTP servers do not apply")
        if chain.tls is None:
            if match.tls:
                return NOT_SERVING, f"filter chain {chain.name!r} is for TLS and has no TLS"
            plain.append(chain)
            continue
        refused = refused_server_tls(chain.tls, providers)
        if refused is not None:
            return NOT_SERVING, f"filter chain {chain.name!r}: {refused}"
        tls_chains.append(chain)
    if tls_chains and plain:
        return "PERMISSIVE", ""
    return ("STRICT", "") if tls_chains else ("DISABLE", "")


class _ListenerMode:
    """Follows the server Listener of `address:port` (gRFC A36's name) on the mesh and sets
    the server's mode from it (`mode_of`) after each config update."""

    def __init__(self, seam: MeshSeam, server: MeshHttpServer, address: str, port: int,
                 providers: Collection[str]) -> None:
        self.name = seam.server_listener_name(host_port(address, port))
        self._seam = seam
        self._server = server
        self._providers = providers

    def start(self) -> None:
        self._seam.watch(self, self.name)
        self.retire(frozenset())

    def stop(self) -> None:
        self._seam.unwatch(self, self.name)

    def retire(self, live: frozenset[str]) -> None:
        state = self._seam.dataplane.state
        listener = state.snapshot.listeners.get(self.name)
        mode, why = mode_of(listener, self._providers)
        if listener is None:
            error = self._seam.listener_error(self.name)
            if error:
                why = f"Listener {self.name!r} was rejected: {error}"
        if (mode, why) != (self._server._mode, self._server.why):
            log.info("sail server %s: %s%s", self.name, mode, f" ({why})" if why else "")
        self._server._mode, self._server.why = mode, why


def peer_of(address: tuple[str, int] | None, ssl_object: ssl.SSLObject | None) -> Peer:
    """The `Peer` of a connection from `address`, TLS when `ssl_object` is given."""
    if ssl_object is None:
        return Peer(address)
    cert = ssl_object.getpeercert() or {}
    sans = peer_sans(cert)
    uris = [v for k, v in sans if k == "URI"]
    dns = [v for k, v in sans if k == "DNS"]
    spiffe = uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None
    if uris:
        principal = uris[0]
    elif dns:
        principal = dns[0]
    else:
        principal = ",".join(
            f"{k}={v}" for rdn in reversed(cert.get("subject", ())) for k, v in rdn
        )
    return Peer(address, mtls=bool(cert), spiffe_id=spiffe, principal=principal)


def _tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension's fields (asgiref `specs/tls.rst`) for one connection."""
    der = ssl_object.getpeercert(binary_form=True)
    cert = ssl_object.getpeercert() or {}
    name = ",".join(f"{k}={v}" for rdn in reversed(cert.get("subject", ())) for k, v in rdn)
    cipher = ssl_object.cipher()
    suite = None
    if cipher is not None:
        for known in ssl_object.context.get_ciphers():
            if known["name"] == cipher[0]:
                suite = known["id"] & 0xFFFF
                break
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": name or None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": suite,
    }


class _Connections:
    """What is known of each open connection, by the caller's `(host, port)`, for the app
    wrapper to look up per request (one dict read)."""

    def __init__(self) -> None:
        self.by_address: dict[tuple[str, int], tuple[Peer, dict[str, Any] | None]] = {}
        self.refused_plaintext = 0
        self.refused_handshakes = 0


class _PeerApp:
    """The ASGI wrapper that puts the connection's peer into the scope."""

    def __init__(self, app: Any, connections: _Connections) -> None:
        self.app = app
        self._connections = connections

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            known = self._connections.by_address.get(tuple(client)) if client else None
            if known is not None:
                peer, tls = known
                extensions = dict(scope.get("extensions") or {})
                extensions["sail.peer"] = peer
                if tls is not None:
                    extensions["tls"] = tls
                scope["extensions"] = extensions
        await self.app(scope, receive, send)


def _protocol_class(server: MeshHttpServer, inner_class: type[Any]) -> type[asyncio.Protocol]:
    """The protocol class uvicorn is given: it classifies each connection, then hands it
    (plain, or wrapped in TLS) to uvicorn's own protocol, `inner_class`."""
    connections = server.connections

    class Tracked(inner_class):  # type: ignore[misc]
        sail_address: tuple[str, int] | None = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self.sail_address is not None:
                connections.by_address.pop(self.sail_address, None)
            super().connection_lost(exc)

    class Classify(asyncio.Protocol):
        def __init__(self, **kwargs: Any) -> None:
            self._kwargs = kwargs
            self._task: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            self._task = asyncio.get_running_loop().create_task(self._classify(transport))

        def connection_lost(self, exc: Exception | None) -> None:
            if self._task is not None:
                self._task.cancel()

        async def _classify(self, transport: asyncio.Transport) -> None:
            peername = transport.get_extra_info("peername")
            address = (str(peername[0]), int(peername[1])) if peername else None
            try:
                first = await _peek(transport)
            except (OSError, TimeoutError):
                transport.close()
                return
            if first is None:  # closed before a byte
                transport.close()
                return
            mode = server.mode
            if mode == NOT_SERVING:
                log.info("sail server: refused a connection from %s: not serving (%s)",
                         address, server.why)
                transport.close()
                return
            loop = asyncio.get_running_loop()
            inner = Tracked(**self._kwargs)
            inner.sail_address = address
            if first == _TLS_HANDSHAKE and mode != "DISABLE":
                context = server.tls.context if server.tls is not None else None
                if context is None:
                    log.warning("sail server: refused a TLS connection from %s: %s", address,
                                server.tls.why if server.tls is not None else "no identity")
                    connections.refused_handshakes += 1
                    transport.close()
                    return
                gate = _Gate()
                try:
                    secure = await loop.start_tls(transport, gate, context, server_side=True,
                                                  ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    connections.refused_handshakes += 1
                    log.info("sail server: refused the TLS handshake of %s: %s", address, exc)
                    transport.close()
                    return
                if secure is None:
                    transport.close()
                    return
                ssl_object = secure.get_extra_info("ssl_object")
                if address is not None:
                    connections.by_address[address] = (
                        peer_of(address, ssl_object), _tls_extension(ssl_object)
                    )
                gate.open(inner, _Coalesced(secure, loop))
                return
            if mode == "STRICT":
                connections.refused_plaintext += 1
                log.info("sail server: refused a plaintext connection from %s (STRICT)",
                         address)
                transport.close()
                return
            if address is not None:
                connections.by_address[address] = (Peer(address), None)
            transport.set_protocol(inner)
            inner.connection_made(_Coalesced(transport, loop))
            transport.resume_reading()

    return Classify


_COALESCE_LIMIT = 64 * 1024  # bytes held for the end of the loop turn, at most


class _Coalesced(asyncio.Transport):
    """A connection's transport as uvicorn's protocol sees it: what it writes in one turn
    of the event loop (h11 writes a response's head, then its body) goes out in one write
    at the end of the turn, so one TLS record and one segment carry a small response, not
    two (the peer then reads it at once, rather than waiting for the second half).
    Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= _COALESCE_LIMIT:  # a large body: no point holding it
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending, self._size = self._pending, [], 0
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class _Gate(asyncio.Protocol):
    """The protocol a TLS connection has while `start_tls` returns: what arrives right
    after the handshake (before uvicorn's protocol has been given the connection) waits
    here, and `open` hands the connection and that data to uvicorn's protocol."""

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self._data.append(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def open(self, inner: asyncio.Protocol, transport: asyncio.Transport) -> None:
        transport.set_protocol(inner)
        inner.connection_made(transport)
        for data in self._data:
            inner.data_received(data)
        if self._eof:
            inner.eof_received()
        if self._lost is not None:
            inner.connection_lost(self._lost[0])


async def _peek(transport: asyncio.Transport) -> int | None:
    """The first byte the peer sent, left unread; `None` if it closed first."""
    raw = transport.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    dup = socket.fromfd(raw.fileno(), raw.family, raw.type)
    try:
        dup.setblocking(False)
        ready = loop.create_future()
        fd = dup.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            async with asyncio.timeout(FIRST_BYTE_TIMEOUT):
                await ready
        finally:
            loop.remove_reader(fd)
        data = dup.recv(1, socket.MSG_PEEK)
        return data[0] if data else None
    finally:
        dup.close()


class MeshHttpServer:
    """An ASGI app served by uvicorn on `address:port` with the mesh's mTLS (see the
    module docstring).

    **Parameters**

    * `app` - the ASGI app (wrap it with `@mesh.service(...)` to make it a workload).
    * `tls` - the workload's server TLS (`None`: no identity, so only DISABLE serves).
    * `mode` - `STRICT`, `PERMISSIVE` or `DISABLE`; settable while serving.
    * `xds` - with a mesh `MeshSeam`: the mode follows the server Listener of
      `address:port` from the control plane instead (`mode_of`); until one arrives, and
      while it asks for what the server cannot do, every connection is refused.
    * `port`, `address` - where to listen (`port=0`: a free port, see `port` once
      started).
    * `options` - more `uvicorn.Config` keywords (`log_level`, `workers` is not
      supported).
    """

    def __init__(
        self,
        app: Any,
        tls: ServerTls | None,
        *,
        mode: str = "STRICT",
        port: int = 0,
        address: str = "127.0.0.1",
        options: Mapping[str, Any] | None = None,
        xds: MeshSeam | None = None,
    ) -> None:
        import uvicorn
        from uvicorn.config import HTTP_PROTOCOLS
        from uvicorn.importer import import_from_string

        self.tls = tls
        self.why = ""
        self.mode = mode
        self.connections = _Connections()
        config_options = dict(options or {})
        http = config_options.pop("http", "auto")
        inner = import_from_string(HTTP_PROTOCOLS[http]) if isinstance(http, str) else http
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
        # protocol says TCP, and without it a response written in two parts (h11 writes
        # the head, then the body) waits for the client's delayed ACK, ~40 ms.
        self._socket = socket.socket(
            socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((address, port))
        self.port: int = self._socket.getsockname()[1]
        config_options.setdefault("log_level", "warning")
        config = uvicorn.Config(
            _PeerApp(app, self.connections), http=_protocol_class(self, inner),
            **config_options,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._watch: _ListenerMode | None = None
        if xds is not None:
            self._mode = NOT_SERVING
            self.why = "waiting for the server Listener"
            self._watch = _ListenerMode(xds, self, address, self.port,
                                        ("default",) if tls is not None else ())
            self._watch.start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        if mode != "DISABLE" and self.tls is None:
            raise ValueError(f"mode {mode}: the mesh has no workload identity to serve TLS with")
        self._mode = mode

    def run(self) -> None:
        """Serve until stopped (SIGINT/SIGTERM in the main thread, or `stop()`)."""
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 10.0) -> MeshHttpServer:
        """Serve on a background thread; return once listening."""
        self._thread = threading.Thread(target=self.run, name="sail-http-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> MeshHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

