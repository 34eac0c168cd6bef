"""`Registry`: the control plane assembled. One grpc.aio server, one port:

* ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService`, State of the World) for
  sail, Envoy and grpcio's `xds:///` clients (Envoy, which subscribes to every listener,
  also gets a loopback port listener per service port);
* CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`) with each client's sync state;
* the registration and admin API (`sail.registry.v1.Registry`, see `sail.registry.api`).

Every change to the store (a config applied or deleted, a workload registered, drained,
expired) schedules one rebuild on the event loop: the Istio config is parsed, validated and
translated with the live workloads into Listener, RouteConfiguration, Cluster and
ClusterLoadAssignment resources, which replace the served set at once under a new
registry-wide version. A rebuild that fails keeps the last good resources serving and
records the error (`sail status` shows it). Config given at start (`--config`) must be
valid, or the registry does not start.

The store (`sail.registry.store`) is in memory unless one is given, such as
`sail.registry.etcd.EtcdStore` (`sail registry --store etcd://HOST:PORT`), which several
registries can share: a change made at any of them reaches every one's watchers, so each
rebuilds and serves it. The registry starts its store before serving (a store that cannot
reach its backend stops the start) and closes it when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc.aio

from sail.errors import ConfigError, InvalidSpiffeId
from sail.registry.api import RegistryApi
from sail.registry.envoy_listener import outbound_listener, outbound_routes
from sail.registry.identity import MeshIdentity
from sail.registry.istio.model import IstioObject, WorkloadGroup
from sail.registry.istio.parse import load_documents, load_paths
from sail.registry.istio.peer_authentication import PeerPolicies
from sail.registry.istio.validate import validate
from sail.registry.leases import run_expiry
from sail.registry.server_listener import DEFAULT_TEMPLATE, server_listeners
from sail.registry.status import sync_status
from sail.registry.store import MemoryStore, Store
from sail.registry.translate import Resources, port_listeners, translate
from sail.security.spiffe import SpiffeId
from sail.xds.codec.encode import (
    encode_cluster,
    encode_cluster_load_assignment,
    encode_listener,
    encode_route_configuration,
)
from sail.xds.csds import CsdsServer
from sail.xds.envoy_files import envoy_file_tls
from sail.xds.server import SERVER_OPTIONS, AdsServer, ResourceStore

__all__ = ["Registry"]

log = logging.getLogger("sail.registry")


def _server_credentials(tls: tuple[Path, Path, Path | None]) -> grpc.ServerCredentials:
    chain, key, client_ca = tls
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), chain.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )


class Registry:
    """The control plane. Run it with `await registry.start()` on an asyncio loop, or from
    the command line as `sail registry`.

    **Parameters**

    * `config_paths` - files or folders of Istio-style YAML loaded at start (they are not
      changed by `sail apply`, which adds config of its own in the store).
    * `store` - where workloads and applied config live (default: in memory). The registry
      starts it and closes it.
    * `token` - the bearer token the registration/admin API requires (`None`: no auth,
      for local development only).
    * `envoy_listeners` - serve Envoy clients Istio-shaped outbound port listeners, one
      per service port on loopback (`127.0.0.1_9080` with routes `9080`, see
      `sail.registry.translate.port_listeners`). Default True; they go only to clients
      subscribing to every listener (Envoy), never to gRPC or sail clients, which ask for
      listeners by name. An Envoy that cannot bind one (the port is in use) NACKs it and
      keeps the others; the registry goes on.
    * `envoy_listener` - `(address, port)`: instead of those, one port listener there
      whose routes (`sail_outbound`) hold a virtual host per service, chosen by Host
      (`sail.registry.envoy_listener`). `None` (the default): the per-port ones, if
      `envoy_listeners`.
    * `expiry_interval` - how often expired workload leases are swept, in seconds.
    * `registration_grace` - seconds after start before the first config is served, so
      that after a restart the workloads' next heartbeats (answered NOT_FOUND) have
      re-registered them. Until then clients get no answer and keep their last config;
      serving at once would hand them clusters with no endpoints. Default 3 s, the
      registrar's heartbeat interval.
    * `server_listener_template` - how xDS-enabled gRPC servers name their Listener (the
      `server_listener_resource_name_template` of their bootstrap): each registered
      workload gets one (see `sail.registry.server_listener`), sent only when asked for.
    * `trust_domain` - run the mesh CA for this trust domain (`sail.registry.identity`):
      workloads get SPIFFE certificates for join tokens. `None`: no CA.
    * `ca_cert`, `ca_key` - the CA's certificate (then the chain above it) and key, for an
      intermediate under a company root; without them the CA is the store's (generated
      there at first start).
    * `tls` - `(certificate chain, key, client CA)` files: serve ADS and the API over TLS
      with that certificate (its SANs must name the address clients dial, as gRFC A65
      clients check it), and with a client CA require a client certificate it verifies
      (mTLS); `None`: plaintext. Read at start.
    * `enroll_address` - with `tls` and a client CA: also serve `CreateCertificate`, and
      nothing else, on this `host:port` over TLS without a client certificate, so that a
      workload without one yet gets its first certificate with a join token (and renews
      it, by proof of possession). `enroll_port` is the port.
    """

    def __init__(
        self,
        *,
        config_paths: Iterable[str | os.PathLike[str]] = (),
        store: Store | None = None,
        token: str | None = None,
        envoy_listener: tuple[str, int] | None = None,
        envoy_listeners: bool = True,
        expiry_interval: float = 1.0,
        registration_grace: float = 3.0,
        server_listener_template: str = DEFAULT_TEMPLATE,
        trust_domain: str | None = None,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
        tls: tuple[Path, Path, Path | None] | None = None,
        enroll_address: str | None = None,
    ) -> None:
        if enroll_address is not None and (tls is None or tls[2] is None):
            raise ValueError("an enrollment address is for a registry that requires client "
                             "certificates (tls with a client CA)")
        self.store: Store = store if store is not None else MemoryStore()
        self.resources = ResourceStore()
        self.ads = AdsServer(self.resources, shape=envoy_file_tls)
        self.csds = CsdsServer(self.ads)
        self.api = RegistryApi(self.store, token, self.check_configs, self.status)
        self.api.admits = self.registration_refusal
        self._groups: dict[tuple[str, str], str] = {}  # (namespace, name) -> service account
        self._static: list[IstioObject] = load_paths(config_paths)
        validate(self._static, None)
        self._envoy_listener = envoy_listener
        self._port_listeners = envoy_listeners
        self._server_template = server_listener_template
        self._expiry_interval = expiry_interval
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rebuild_scheduled = False
        self._grace = registration_grace
        self._serving = False
        self.last_error = ""
        self.port = 0
        self._trust_domain = trust_domain
        self._ca_files = (ca_cert, ca_key)
        self._tls = tls
        self._enroll_address = enroll_address
        self._enroll_server: grpc.aio.Server | None = None
        self.enroll_port = 0
        self.identity: MeshIdentity | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Serve on `address` (`host:port`, port 0 picks one); returns the port.
        `StoreUnavailable` if the store cannot reach its backend."""
        await self.store.start()
        if self._trust_domain is not None:
            try:
                self.identity = await MeshIdentity.open(
                    self.store, self._trust_domain, ca_cert=self._ca_files[0],
                    ca_key=self._ca_files[1])
            except BaseException:
                await self.store.close()
                raise
            self.api.identity = self.identity
        # The registration rule (WorkloadGroups) holds from the first registration on,
        # before the first config is served.
        with contextlib.suppress(ConfigError):
            self._note_groups(self._objects(self.store.configs()))
        # grpc.aio accepts one new call at a time and refuses calls past
        # `max_pending_requests` (1,000 by default): after a registry restart thousands of
        # clients reconnect at once, and the defaults turned some of them away.
        server = grpc.aio.server(
            options=[
                *SERVER_OPTIONS,
                ("grpc.server.max_pending_requests", 20_000),
                ("grpc.server.max_pending_requests_hard_limit", 100_000),
            ]
        )
        self.ads.add_to(server)
        self.csds.add_to(server)
        self.api.add_to(server)
        try:
            credentials = _server_credentials(self._tls) if self._tls is not None else None
        except OSError as exc:
            await self.store.close()
            raise OSError(f"cannot read the TLS files: {exc}") from exc
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            await self.store.close()
            raise OSError(f"cannot listen on {address} (in use?)")
        await server.start()
        self._server = server
        if self._enroll_address is not None and self._tls is not None:
            await self._start_enrollment(self._enroll_address, self._tls)
        self.store.watch(self._schedule_rebuild)
        if self._grace > 0:
            asyncio.get_running_loop().call_later(self._grace, self._start_serving)
        else:
            self._start_serving()
        self._tasks.append(
            asyncio.ensure_future(run_expiry(self.store, self._expiry_interval))
        )
        log.info("sail registry serving ADS, CSDS and the registry API on %s", address)
        return self.port

    async def _start_enrollment(
        self, address: str, tls: tuple[Path, Path, Path | None]
    ) -> None:
        enroll = grpc.aio.server(options=list(SERVER_OPTIONS))
        self.api.add_certificates_to(enroll)
        chain, key, _ = tls
        self.enroll_port = enroll.add_secure_port(
            address, _server_credentials((chain, key, None)))
        if self.enroll_port == 0:
            await self.stop(0)
            raise OSError(f"cannot listen on {address} (in use?)")
        await enroll.start()
        self._enroll_server = enroll

    async def stop(self, grace: float | None = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._enroll_server is not None:
            enroll, self._enroll_server = self._enroll_server, None
            await enroll.stop(grace)
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
        await self.store.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # -- config -----------------------------------------------------------------------------

    def _start_serving(self) -> None:
        self._serving = True
        self.rebuild()

    def _schedule_rebuild(self) -> None:
        # Coalesce a burst of store changes (a registration storm after a restart) into one
        # rebuild on the next turn of the loop.
        if not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            asyncio.get_running_loop().call_soon(self.rebuild)

    def _objects(self, configs: Mapping[str, str]) -> list[IstioObject]:
        objects = list(self._static)
        for source in sorted(configs):
            objects.extend(load_documents(configs[source], source))
        return objects

    def registration_refusal(self, service: str, identity: str) -> str | None:
        """Why a workload proving `identity` (over mTLS) may not register for `service`, or
        `None`: the WorkloadGroup named `service` in the identity's namespace names the
        service account it must have (Istio's auto-registration rule); without one, the
        service account must be the service's name (`kubectl create serviceaccount
        reviews` for service `reviews`)."""
        try:
            spiffe = SpiffeId.parse(identity)
        except InvalidSpiffeId as exc:
            return f"{identity!r}: {exc}"
        namespace, account = spiffe.namespace, spiffe.service_account
        if namespace is None or account is None:
            return f"{identity} is not a workload identity (/ns/<ns>/sa/<sa>)"
        wanted = self._groups.get((namespace, service))
        if wanted is None:
            if account == service:
                return None
            return (f"{identity} may not register service {service!r}: no WorkloadGroup "
                    f"{namespace}/{service} names its service account, and it is not "
                    f"{service!r}")
        if account == wanted:
            return None
        return (f"{identity} may not register service {service!r}: WorkloadGroup "
                f"{namespace}/{service} takes service account {wanted!r}")

    def _note_groups(self, objects: list[IstioObject]) -> None:
        self._groups = {(o.meta.namespace, o.meta.name): o.spec.template.service_account
                        for o in objects if isinstance(o, WorkloadGroup)}

    def check_configs(self, configs: dict[str, str]) -> None:
        """Validate the config set `sail apply`/`delete` would leave; raises `ConfigError`
        naming the file, object and field. Routes must name known hosts here."""
        objects = self._objects(configs)
        known = {w.service for w, _ in self.store.workloads()}
        validate(objects, known)
        self._translate(objects)

    def _translate(self, objects: Sequence[IstioObject]) -> list[Any]:
        resources = translate(objects, self.store.workloads())
        return self._encode(resources)

    def _server_listeners(self, objects: Sequence[IstioObject]) -> list[Any]:
        """The A36 listeners of the registered workloads (served by name only), with the
        transport their PeerAuthentication gives each."""
        workloads = [w for w, _ in self.store.workloads()]
        policies = PeerPolicies(objects)
        return [encode_listener(x)
                for x in server_listeners(workloads, self._server_template, policies)]

    def _encode(self, resources: Resources) -> list[Any]:
        listeners = list(resources.listeners)
        routes = list(resources.route_configs)
        if self._envoy_listener is not None:
            listeners.append(outbound_listener(*self._envoy_listener))
            routes.append(outbound_routes(routes))
        elif self._port_listeners:
            port_lds, port_rds = port_listeners(routes)
            listeners.extend(port_lds)
            routes.extend(port_rds)
        return [
            *(encode_listener(x) for x in listeners),
            *(encode_route_configuration(x) for x in routes),
            *(encode_cluster(x) for x in resources.clusters),
            *(encode_cluster_load_assignment(x) for x in resources.load_assignments),
        ]

    def rebuild(self) -> None:
        """Translate the current config and workloads and serve the result; on error keep
        serving the last good resources."""
        self._rebuild_scheduled = False
        try:
            objects = self._objects(self.store.configs())
            # Hosts are not checked here: a workload leaving must not freeze the config.
            validate(objects, None)
            self._note_groups(objects)  # registrations follow it, serving or not
            if not self._serving:
                return
            messages = self._translate(objects)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("sail registry: config rejected, serving the last good one: %s", exc)
            return
        except Exception as exc:  # never let a rebuild bug take the registry down
            self.last_error = f"internal error: {exc!r}"
            log.exception("sail registry: rebuild failed, serving the last good config")
            return
        self.last_error = ""
        self.resources.set_all(messages, named_only=self._server_listeners(objects))

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "version": self.resources.version,
            "config_error": self.last_error,
            "store": self.store.status(),
            "workloads": [
                {
                    "service": w.service,
                    "address": f"{w.address}:{w.port}",
                    "labels": dict(w.labels),
                    "health": health.name,
                }
                for w, health in sorted(self.store.workloads(), key=lambda x: x[0].key)
            ],
            "clients": [row.as_dict() for row in sync_status(self.ads)],
        }
