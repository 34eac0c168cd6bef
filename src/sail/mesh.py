"""`Mesh`: the object a service holds. It owns the config source and the data plane
state, and makes clients, channels and servers, handing each a `sail.seam.MeshSeam` (which
hosts are the mesh's is that module's rule).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from sail.bootstrap import DEFAULT_SERVER_LISTENER_TEMPLATE, Bootstrap, load_bootstrap
from sail.dataplane import Dataplane
from sail.model import MeshSnapshot
from sail.registration import InProcessRegistrar, Registrar
from sail.resilience.events import AttemptObserver, Observers
from sail.seam import MeshSeam
from sail.status import Identity, MeshStatus, Nack
from sail.xds.resolver import LDS, ConfigResolver

if TYPE_CHECKING:
    import grpc

    from sail.grpc.aio import AioMeshChannel
    from sail.grpc.channel import MeshChannel
    from sail.grpc.server import AioMeshServer, MeshServer
    from sail.http.serve import MeshHttpServer
    from sail.security.tls import ServerTls
    from sail.security.workload import WorkloadIdentity

__all__ = ["Mesh"]

log = logging.getLogger("sail")

# What a config source is made with: where it publishes snapshots, and where it says
# which names it refuses (`MeshSeam.refuse`).
_Publish = Callable[[MeshSnapshot], None]
_Refuse = Callable[[Mapping[str, str]], None]

_POOL_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "trust_env")
T = TypeVar("T")


class _XdsSource:
    """Config from xDS, through the bootstrap's servers."""

    dynamic = True

    def __init__(
        self,
        bootstrap: Bootstrap,
        publish: _Publish,
        refuse: _Refuse,
        client_options: Mapping[str, Any],
    ) -> None:
        from sail.xds.client import AdsClient

        self.bootstrap = bootstrap
        self.resolver = ConfigResolver(publish, subscribe=self._subscribe, refused=refuse)
        # The stream starts on first use, not here: a pre-fork server (gunicorn --preload)
        # that builds its mesh at import then forks workers leaves gRPC untouched in the
        # parent, and each worker connects on its own.
        self.client = AdsClient(bootstrap, self.resolver, **client_options)
        self._started = False

    def _subscribe(self, type_url: str, names: frozenset[str]) -> None:
        self.client.set_names(type_url, names)

    def after_fork(self) -> None:
        if self._started:
            self.client.start()

    def request(self, name: str) -> threading.Event:
        if not self._started:
            self._started = True
            self.client.start()
        event = self.resolver.settled_event(name)
        if not event.is_set():
            self.client.call_soon(lambda: self.resolver.add_interest([name]))
        return event

    def forget(self, name: str) -> None:
        if self._started:
            self.client.call_soon(lambda: self.resolver.remove_interest([name]))

    def listener_error(self, name: str) -> str | None:
        return self.resolver.error(LDS, name)

    def server_listener_name(self, address: str) -> str:
        return self.bootstrap.server_listener_name(address)

    def status(self) -> MeshStatus:
        st = self.client.status()
        return MeshStatus(
            connected=st.connected,
            server=st.server,
            last_error=st.last_error,
            versions=st.versions,
            nacks=st.refused,
        )

    def close(self) -> None:
        self.client.close()


class _LocalSource:
    """Config from a local file, which holds every listener there is."""

    dynamic = False

    def __init__(
        self, path: str | os.PathLike[str], publish: _Publish, refuse: _Refuse,
        poll_interval: float,
    ) -> None:
        from sail.local import LocalConfig

        self.resolver = ConfigResolver(publish, refused=refuse)
        self._loads = 0
        self._resources: Mapping[str, Mapping[str, Any]] = {}
        self._nacks: tuple[Nack, ...] = ()
        self._made = False
        self.config = LocalConfig(path, self._apply, poll_interval=poll_interval)
        self._made = True
        if self._errors():
            self._feed()  # errors of the first load, which was applied before we knew them

    def _errors(self) -> dict[tuple[str, str], str]:
        """The file's per-resource errors (by type URL and name) at its last good load."""
        errors = self.config.errors if self._made else {}
        return {k: v for k, v in errors.items() if k != ("", "")}  # not the file's own

    def _apply(self, resources: Mapping[str, Mapping[str, Any]]) -> None:
        """A (re)load of the file (on `LocalConfig`'s thread, which set its errors first)."""
        self._loads += 1
        self._resources = resources
        self._feed()

    def _feed(self) -> None:
        errors: dict[str, dict[str, str]] = {}
        for (type_url, name), reason in sorted(self._errors().items()):
            errors.setdefault(type_url, {})[name] = reason
        self._nacks = tuple(
            Nack(type_url, name, reason)
            for type_url, by_name in sorted(errors.items())
            for name, reason in by_name.items()
        )
        self.resolver.replace_all(self._resources, errors)

    def status(self) -> MeshStatus:
        file_error = self.config.errors.get(("", ""), "") if self._made else ""
        version = str(self._loads)
        return MeshStatus(
            connected=True,
            server=None,
            last_error=file_error,
            versions={t: version for t, held in self._resources.items() if held},
            nacks=self._nacks,
        )

    def request(self, name: str) -> None:
        return None

    def forget(self, name: str) -> None:
        return None  # every listener of the file is watched

    def listener_error(self, name: str) -> str | None:
        return self.resolver.error(LDS, name)

    def server_listener_name(self, address: str) -> str:
        return DEFAULT_SERVER_LISTENER_TEMPLATE.replace("%s", address)

    def after_fork(self) -> None:
        self.config.start_watching()

    def close(self) -> None:
        self.config.close()


def _certificate_sources(
    boot: Bootstrap, join_token: str | None, lifetime: float = 0,
    ca_address: str | None = None,
) -> dict[str, WorkloadIdentity]:
    """The credentials source of each certificate provider instance a TLS context may name
    (`Mesh.from_bootstrap`): each `file_watcher` instance of the bootstrap, and with a join
    token, instance `default` from the mesh CA at `ca_address` (default: the bootstrap's
    xDS servers), in place of the bootstrap's."""
    from sail.security.workload import WorkloadIdentity

    sources: dict[str, WorkloadIdentity] = {}
    if join_token:
        from sail.registry.remote import create_certificate
        from sail.security.enroll import Enrollment

        targets = ([ca_address] if ca_address
                   else [server.server_uri for server in boot.xds_servers])
        held: list[WorkloadIdentity] = []

        def ask(csr: str, current: Sequence[str] | None) -> list[str]:
            own = _own_certificate(held[0]) if held else None
            return create_certificate(targets, None if current else join_token, csr,
                                      lifetime, current_chain=current,
                                      credentials=_control_plane_credentials(boot, own))

        held.append(WorkloadIdentity(Enrollment(ask)))
        sources["default"] = held[0]
    for name, provider in boot.certificate_providers.items():
        if provider.plugin_name == "file_watcher" and name not in sources:
            from sail.security.providers import file_watcher_from_config

            sources[name] = WorkloadIdentity(file_watcher_from_config(name, provider.config))
    return sources


def _control_plane_credentials(boot: Bootstrap, own: Any = None) -> Any:
    """The credentials of the registry's API calls: the first xDS server's `channel_creds`
    (gRFC A65 `tls` files read now; `own`, the workload's certificate, without them),
    `None` for plaintext."""
    from sail.xds.credentials import channel_credentials

    return channel_credentials(boot.xds_servers[0].creds, own) if boot.xds_servers else None


def _own_certificate(source: WorkloadIdentity) -> Callable[[], tuple[bytes, bytes] | None]:
    """The workload's current certificate chain and key from `source`, for the control
    plane's mTLS (`sail.xds.credentials`)."""

    def current() -> tuple[bytes, bytes] | None:
        creds = source.current
        return (creds.chain_pem, creds.key_pem) if creds is not None and creds.chain_pem \
            else None

    return current


class Mesh:
    """A service's view of the mesh. Make one per process with `Mesh.from_bootstrap()` or
    `Mesh.local(path)`, and close it (or use it as a context manager) at shutdown.

    **Parameters** (of both constructors)

    * `mesh_domains` - DNS suffixes whose names are asked of the control plane, e.g.
      `("svc.cluster.local",)`; single-label names always are.
    * `discovery_timeout` - the longest a first request to an unknown name waits for the
      control plane, in seconds (default 15, the does-not-exist timer).
    * `registrar` - where `@mesh.service` registers workloads (default: in-process).
    """

    def __init__(
        self,
        source: Callable[[_Publish, _Refuse], _XdsSource | _LocalSource],
        *,
        mesh_domains: Iterable[str] = (),
        discovery_timeout: float = 15.0,
        registrar: Registrar | None = None,
        certificates: Mapping[str, WorkloadIdentity] | None = None,
    ) -> None:
        self._certificates = dict(certificates or {})
        self._identity = self._certificates.get("default")
        self._server_tls: ServerTls | None = None
        tls_factory = None
        if self._certificates:
            from sail.security.tls import ClientTlsFactory

            tls_factory = ClientTlsFactory(self._certificates)
        self._dataplane = Dataplane(tls_factory)
        self._observers: tuple[AttemptObserver, ...] = ()
        self.registrar: Registrar = registrar or InProcessRegistrar()
        self._seam = MeshSeam(self._dataplane, tuple(mesh_domains), discovery_timeout)
        self._source = source(self._publish, self._seam.refuse)
        self._seam.attach(self._source)

    @classmethod
    def from_bootstrap(
        cls,
        bootstrap: Bootstrap | str | os.PathLike[str] | None = None,
        *,
        services: Iterable[str] = (),
        mesh_domains: Iterable[str] = (),
        discovery_timeout: float = 15.0,
        registrar: Registrar | None = None,
        register: bool = False,
        join_token: str | None = None,
        certificate_lifetime: float = 0,
        ca_address: str | None = None,
        **client_options: Any,
    ) -> Mesh:
        """A mesh fed by xDS from the bootstrap's servers.

        `bootstrap` is a parsed `Bootstrap`, a path, or `None` to find one through
        `SAIL_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP` or `GRPC_XDS_BOOTSTRAP_CONFIG`. `services`
        are subscribed at once, so their first requests do not wait. Extra keyword
        arguments go to `sail.xds.client.AdsClient` (e.g. `does_not_exist_timeout`).

        `register=True` registers `@mesh.service` workloads with the `sail registry` at the
        bootstrap's xDS servers (token from `$SAIL_REGISTRY_TOKEN`), through a
        `sail.registry.remote.RemoteRegistrar` given every `server_uri` in order: it uses
        the first and fails over to the next, as the xDS client does; pass `registrar` for
        anything else.

        The workload's identity (`mesh.identity`, docs/security.md): with a `join_token`
        (or `$SAIL_JOIN_TOKEN`), a certificate from the mesh CA of the registry at the
        bootstrap's xDS servers, valid `certificate_lifetime` seconds (0: the CA's default,
        Istio's 24 h) and renewed at half-life with jitter, asked of `ca_address` (or
        `$SAIL_CA_ADDRESS`: a registry's enrollment port) when given; the mesh then presents
        that certificate to an mTLS registry whose `tls` channel_creds name no certificate
        files (gRFC A65 otherwise). Else, when the bootstrap's
        `certificate_providers` has a `file_watcher` instance `default` (Istio's name),
        the certificate in its files; else none.
        """
        boot = bootstrap if isinstance(bootstrap, Bootstrap) else load_bootstrap(bootstrap)
        token = join_token or os.environ.get("SAIL_JOIN_TOKEN")
        certificates = _certificate_sources(
            boot, token, certificate_lifetime, ca_address or os.environ.get("SAIL_CA_ADDRESS")
        )
        if token and "own_certificate" not in client_options:
            client_options["own_certificate"] = _own_certificate(certificates["default"])
        if certificates and "resource_types" not in client_options:
            from sail.xds.codec.types import resource_types

            client_options["resource_types"] = resource_types(certificates)
        if register and registrar is None:
            from sail.registry.remote import RemoteRegistrar

            own = _own_certificate(certificates["default"]) if token else None
            registrar = RemoteRegistrar(
                [server.server_uri for server in boot.xds_servers],
                os.environ.get("SAIL_REGISTRY_TOKEN"),
                credentials=lambda: _control_plane_credentials(boot, own),
            )
        mesh = cls(
            lambda publish, refuse: _XdsSource(boot, publish, refuse, client_options),
            mesh_domains=mesh_domains,
            discovery_timeout=discovery_timeout,
            registrar=registrar,
            certificates=certificates,
        )
        for name in services:
            mesh._source.request(name)
        return mesh

    @classmethod
    def local(
        cls,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 1.0,
        registrar: Registrar | None = None,
    ) -> Mesh:
        """A mesh whose config is a local YAML/JSON file of Envoy resources (see
        `sail.local`), reloaded when the file changes. No control plane is needed."""
        return cls(
            lambda publish, refuse: _LocalSource(path, publish, refuse, poll_interval),
            registrar=registrar,
        )

    # -- config -----------------------------------------------------------------------------

    @property
    def snapshot(self) -> MeshSnapshot:
        """The config the data plane runs on now."""
        self.check_fork()
        return self._dataplane.state.snapshot

    def status(self) -> MeshStatus:
        """Where the mesh's config source stands now (`sail.MeshStatus`): over xDS, whether
        the ADS stream is up, its server and last error, the version accepted per resource
        type, and each resource NACKed (type, name, the version refused, the reason) until
        a good version of it arrives; in local mode, the file's resources that failed to
        decode. Cheap, and safe from any thread; it never starts the xDS stream.

        A mesh name whose Listener (or the RouteConfiguration it names) is refused with no
        earlier good version fails its requests with `sail.RejectedService` carrying that
        reason; it is never sent to DNS (see `sail.seam`)."""
        return self._source.status()

    @property
    def identity(self) -> Identity | None:
        """The workload's identity now (`sail.Identity`: SPIFFE ID, expiry, source), `None`
        without one or before the first certificate came (see `from_bootstrap`)."""
        return self._identity.identity if self._identity is not None else None

    def wait_identity(self, timeout: float | None = None) -> Identity | None:
        """Wait (at most `timeout` seconds) for the first certificate; `identity` then."""
        return self._identity.wait(timeout) if self._identity is not None else None

    def check_fork(self) -> None:
        """Restart the config source's thread in a forked child (cheap: no system call)."""
        self._seam.check_fork()

    def _publish(self, snapshot: MeshSnapshot) -> None:
        try:
            state = self._dataplane.update(snapshot)
        except Exception:
            log.exception("sail: could not build config version %d; keeping the last one",
                          snapshot.version)
            return
        for watcher in list(self._seam.watchers):
            try:
                watcher.retire(state.authorities)
            except Exception:
                log.exception("sail: closing connections to departed endpoints failed")

    def observe(self, observer: AttemptObserver) -> None:
        """Have `observer` hear of every attempt of every call made through this mesh's
        clients and channels, from now on (`sail.resilience.events`: where tracing and
        metrics plug in). Observers add up; with none, calls pay nothing for them."""
        self._observers = (*self._observers, observer)
        self._dataplane.observer = (
            observer if len(self._observers) == 1 else Observers(self._observers)
        )

    def server_listener_name(self, address: str) -> str:
        """The Listener an xDS-enabled server listening on `address` (`ip:port`) watches:
        the bootstrap's `server_listener_resource_name_template` (a `BootstrapError` when
        it has none), or in local mode gRPC's usual `grpc/server?...=%s`."""
        return self._seam.server_listener_name(address)

    def is_mesh_host(self, host: str, name: str) -> bool:
        """Whether requests to `name` (`host` or `host:port`) go through the mesh; may wait
        for the control plane the first time a candidate name is seen (the rule is in
        `sail.seam`). Raises `sail.RejectedService`, with the NACK's reason, for a mesh
        name whose Listener or routes the mesh refused: such a name is never an outside
        host."""
        return self._seam.is_mesh_host(host, name)

    async def ais_mesh_host(self, host: str, name: str) -> bool:
        """`is_mesh_host` for async code: waits without blocking the event loop."""
        return await self._seam.ais_mesh_host(host, name)

    # -- clients ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.Client:
        """An `httpx.Client` whose requests to mesh hosts go through sail.

        Every `httpx.Client` argument is accepted; `verify`, `cert`, `http1`, `http2`,
        `limits` and `trust_env` configure both the mesh's per-endpoint pools and the
        transport for other hosts (or pass your own `transport` for those)."""
        from sail.http.transport import MeshTransport

        pool_options = {k: kwargs.pop(k) for k in _POOL_OPTIONS if k in kwargs}
        passthrough = kwargs.pop("transport", None) or httpx.HTTPTransport(**pool_options)
        transport = MeshTransport(self._seam, passthrough, pool_options)
        return httpx.Client(transport=transport, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """The `httpx.AsyncClient` twin of `client()`."""
        from sail.http.transport import AsyncMeshTransport

        pool_options = {k: kwargs.pop(k) for k in _POOL_OPTIONS if k in kwargs}
        passthrough = kwargs.pop("transport", None) or httpx.AsyncHTTPTransport(**pool_options)
        return httpx.AsyncClient(
            transport=AsyncMeshTransport(self._seam, passthrough, pool_options), **kwargs
        )

    def grpc_channel(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
    ) -> MeshChannel:
        """A `grpc.Channel` whose calls to service `target` (`ratings`, `ratings:9090`,
        or either after `xds:///`) are routed, balanced per call and retried by the mesh
        (see `sail.grpc.channel`). Generated stubs take it unchanged. `credentials`,
        `options` and `compression` apply to each endpoint's connection, as to
        `grpc.secure_channel` (insecure without `credentials`). A target outside the mesh
        gets a plain grpcio channel."""
        from sail.grpc.channel import MeshChannel

        return MeshChannel(
            self._seam, target, credentials=credentials, options=options, compression=compression
        )

    def aio_grpc_channel(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
    ) -> AioMeshChannel:
        """The `grpc.aio.Channel` twin of `grpc_channel()`, for asyncio code."""
        from sail.grpc.aio import AioMeshChannel

        return AioMeshChannel(
            self._seam, target, credentials=credentials, options=options, compression=compression
        )

    # -- servers ----------------------------------------------------------------------------

    def service(
        self,
        name: str,
        *,
        port: int,
        labels: Mapping[str, str] | None = None,
        address: str = "127.0.0.1",
        weight: int = 1,
        service_port: int | None = None,
        drain: float = 5.0,
    ) -> Callable[[T], T]:
        """Make an ASGI or WSGI app a mesh workload of service `name`.

        The workload is registered when the app starts (ASGI lifespan startup, or at once
        for WSGI) and deregistered when it stops; each request carries a
        `sail.RequestContext` (see `sail.current_request()`). `service_port` is the port
        clients call the service on, when it differs from `port` (see `Workload`). On
        SIGTERM an ASGI workload drains for up to `drain` seconds before the server stops
        (see `sail.http.server.AsgiService`)."""
        from sail.http.server import wrap_app
        from sail.registration import Workload

        workload = Workload(
            service=name,
            address=address,
            port=port,
            labels=dict(labels or {}),
            weight=weight,
            service_port=service_port,
        )

        def decorate(app: T) -> T:
            return wrap_app(app, workload, self.registrar, drain)  # type: ignore[no-any-return]

        return decorate

    def http_server(
        self,
        app: Any,
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        mode: str | None = None,
        xds: bool = False,
        **uvicorn_options: Any,
    ) -> MeshHttpServer:
        """An ASGI app on uvicorn with this mesh's mTLS (`sail.http.serve`); `start()` it,
        or `run()` it in the foreground (`serve()` does).

        `mode` is Istio's PeerAuthentication mode for the port: `STRICT` (mTLS only: a
        plaintext connection is refused), `PERMISSIVE` (mTLS and plaintext on the same
        port, told apart by the first byte) or `DISABLE` (plaintext). Unset, it is
        Istio's default, PERMISSIVE, when the mesh has a workload identity
        (`mesh.identity`), else DISABLE; STRICT or PERMISSIVE without an identity is an
        error. `xds=True` takes the mode from the control plane instead: the server Listener
        of `address:port` (gRFC A36's name, as `grpc_server(xds=True)` asks for it), which
        the registry makes from PeerAuthentication; until it arrives every connection is
        refused. The caller's identity is `sail.current_request().peer` (wrap the app with
        `@mesh.service(...)`) and `scope["extensions"]["tls"]`. Other keywords go to
        `uvicorn.Config`."""
        from sail.http.serve import MeshHttpServer
        from sail.http.server import AsgiService

        tls = self._serving_tls()
        if xds and mode is not None:
            raise ValueError("give a mode or xds=True, not both")
        if isinstance(app, AsgiService) and self._identity is not None:
            app.identity = self._spiffe_id
        if mode is None:
            mode = "PERMISSIVE" if tls is not None else "DISABLE"
        return MeshHttpServer(app, tls, mode=mode, port=port, address=address,
                              options=uvicorn_options, xds=self._seam if xds else None)

    def _serving_tls(self) -> ServerTls | None:
        """The servers' TLS from the workload identity (one for all the mesh's servers),
        `None` without an identity."""
        if self._identity is None:
            return None
        if self._server_tls is None:
            from sail.security.tls import ServerTls

            self._server_tls = ServerTls(self._identity)
        return self._server_tls

    def _spiffe_id(self) -> str | None:
        """The workload's SPIFFE ID, waiting (up to 10 s) for its first certificate."""
        known = self._identity.wait(10.0) if self._identity is not None else None
        return known.spiffe_id if known is not None else None

    def _grpc_tls(self, mode: str | None, xds: bool) -> dict[str, Any]:
        """The `tls`/`identity` arguments of a gRPC server serving `mode`."""
        if xds:  # the Listener decides; the mesh's identity is what mTLS chains serve
            if mode is not None:
                raise ValueError("give a mode or xds=True, not both")
            tls = self._serving_tls()
            return {} if tls is None else {"tls": tls, "identity": self._spiffe_id}
        if mode is None or mode == "DISABLE":
            return {}
        if mode == "PERMISSIVE":
            raise ValueError(
                "mode='PERMISSIVE': grpcio serves one of TLS or plaintext on a port, not "
                "both; choose STRICT (mTLS) or DISABLE (plaintext), as Istio does for "
                "proxyless gRPC"
            )
        if mode != "STRICT":
            raise ValueError(f"mode={mode!r}: not STRICT, PERMISSIVE or DISABLE")
        tls = self._serving_tls()
        if tls is None:
            raise ValueError("mode='STRICT' needs a workload identity (mesh.identity)")
        return {"tls": tls, "identity": self._spiffe_id}

    def serve(
        self,
        app: Any,
        *,
        port: int,
        address: str = "127.0.0.1",
        mode: str | None = None,
        xds: bool = False,
        **uvicorn_options: Any,
    ) -> None:
        """Serve an ASGI app with this mesh's mTLS until the process is told to stop
        (SIGINT, SIGTERM); see `http_server()` for `mode`:

        ```python
        mesh.serve(mesh.service("reviews", port=9080)(app), port=9080, mode="STRICT")
        ```
        """
        self.http_server(
            app, port=port, address=address, mode=mode, xds=xds, **uvicorn_options
        ).run()

    def grpc_server(
        self,
        name: str,
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        labels: Mapping[str, str] | None = None,
        weight: int = 1,
        service_port: int | None = None,
        drain: float = 5.0,
        xds: bool = False,
        mode: str | None = None,
        **server_options: Any,
    ) -> MeshServer:
        """A `grpc.server(...)` that serves as a mesh workload of service `name`.

        Use it where you would use grpc's server (`add_XServicer_to_server(servicer,
        server)` works unchanged). It listens on `address:port` at once (`port=0`: a free
        port, `server.port`); `start()` starts it, registers the workload with this mesh's
        registrar and sets the standard health service (`grpc.health.v1.Health`) to
        SERVING; `stop(grace)` turns health NOT_SERVING and the workload DRAINING, serves
        the calls still coming for up to `drain` seconds, then deregisters and stops.
        Handlers see a `sail.RequestContext` (`sail.current_request()`) and their caller's
        deadline, which the calls they make through the mesh inherit.

        `xds=True` makes it an xDS-enabled server (gRFC A36, as grpcio's `xds=True`): it
        watches the Listener for its `address:port` on this mesh, listens only once that
        arrives, and serves calls as its routes say (`sail.grpc.xds_server`).

        `mode="STRICT"` serves the mesh's mTLS (a caller must present a certificate of the
        mesh; `sail.current_request().peer` is who it is) and registers the workload's
        SPIFFE ID, so mesh clients call it over mTLS. Unset or `DISABLE`, it serves
        plaintext. `PERMISSIVE` is refused: grpcio cannot tell TLS from plaintext on one
        port (sail's HTTP servers can). With `xds=True` the Listener decides instead: mTLS
        chains (PeerAuthentication STRICT) or plaintext ones (PERMISSIVE, DISABLE), fixed
        once the port is open. Other keyword
        arguments (`max_workers`, `thread_pool`, `interceptors`, `options`, `credentials`,
        `quiet`, `on_serving`...) go to `sail.grpc.server.MeshServer`."""
        from sail.grpc.server import MeshServer

        return MeshServer(
            name,
            self.registrar,
            port=port,
            address=address,
            labels=labels,
            weight=weight,
            service_port=service_port,
            drain=drain,
            xds=self._seam if xds else None,
            **self._grpc_tls(mode, xds),
            **server_options,
        )

    def aio_grpc_server(
        self,
        name: str,
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        labels: Mapping[str, str] | None = None,
        weight: int = 1,
        service_port: int | None = None,
        drain: float = 5.0,
        xds: bool = False,
        mode: str | None = None,
        **server_options: Any,
    ) -> AioMeshServer:
        """The `grpc.aio` twin of `grpc_server()`: a `grpc.aio.server(...)` as a mesh
        workload (`await server.start()`, `await server.stop(grace)`, or `async with`).
        Make it inside the running event loop, as grpc.aio wants. Other keyword arguments
        go to `sail.grpc.server.AioMeshServer`."""
        from sail.grpc.server import AioMeshServer

        return AioMeshServer(
            name,
            self.registrar,
            port=port,
            address=address,
            labels=labels,
            weight=weight,
            service_port=service_port,
            drain=drain,
            xds=self._seam if xds else None,
            **self._grpc_tls(mode, xds),
            **server_options,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the config source. Clients made by this mesh should be closed first."""
        self._source.close()
        for source in self._certificates.values():
            source.close()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
