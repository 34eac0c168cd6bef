"""xDS-enabled gRPC servers (gRFC A36): the server's Listener decides whether it serves.

A server made with `xds=True` (`mesh.grpc_server(..., xds=True)`) watches, on its mesh, the
Listener named by the bootstrap's `server_listener_resource_name_template` with its
`address:port` in place of `%s` (local mode uses gRPC's usual template,
`grpc/server?xds.resource.listening_address=%s`). It is *serving* while that Listener
exists, is a port listener whose address is the server's own, and has only HTTP filters sail
applies on a server (the router; an unknown filter marked `is_optional` is skipped):

* Before it first serves, the server does not listen at all (A36's preferred "not serving":
  clients see a refused connection and try another endpoint); `start()` registers the
  workload and returns at once, and the port opens when the Listener arrives.
* Once it has served, grpcio cannot stop listening and listen again on the same server, so a
  later "not serving" (the Listener deleted, its address changed) answers new calls with
  UNAVAILABLE naming the reason and reports NOT_SERVING on the health service, until the
  Listener is good again (A36 lets the strategy after start-up differ).
* Every call is routed through the Listener's routes (inline or from RDS, by the call's
  path and metadata; the authority is unknown to a grpcio server, so only virtual hosts
  whose domains match any host, `*`, can match): a call that matches no route, or a route
  whose action is not `non_forwarding_action`, fails with UNAVAILABLE, as in gRPC.

A Listener the mesh rejected keeps the last good one serving (the mesh's usual rule); a
first Listener that is rejected leaves the server not serving, with the error as reason.
Filter-chain matching is sail's usual: one filter chain (no `filter_chain_match`); a
Listener with several is rejected with an error naming it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from sail.errors import NoRoute
from sail.model import Listener
from sail.routing.router import Router
from sail.xds.codec.extensions import ROUTER

if TYPE_CHECKING:
    from sail.mesh import Mesh

__all__ = ["ServingState", "ServingWatch"]

log = logging.getLogger("sail")


@attrs.frozen
class ServingState:
    """Whether an xDS-enabled server serves, why not, and the routes its calls take.

    `router` is `None` while the Listener's routes (RDS) have not arrived: calls then fail
    with UNAVAILABLE although the server serves, as in gRPC."""

    serving: bool
    reason: str = ""
    router: Router | None = None


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def _unsupported_filter(listener: Listener) -> str | None:
    """The first HTTP filter a server cannot apply (not skippable), or None."""
    for f in listener.hcm.http_filters:
        if f.type_url != ROUTER and not f.is_optional:
            return f"{f.name} ({f.type_url})"
    return None


class ServingWatch:
    """Watches the A36 Listener of one server address on `mesh`.

    `on_change(state)` runs (on the mesh's config thread, or in `start()`) whenever the
    serving verdict or its reason changes; `check(method, metadata)` is the per-call verdict,
    a lock-free read of the state built at the last config update.
    """

    def __init__(
        self,
        mesh: Mesh,
        address: str,
        port: int,
        on_change: Callable[[ServingState], None],
    ) -> None:
        hostport = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.name = mesh.server_listener_name(hostport)
        self._mesh = mesh
        self._address = address
        self._port = port
        self._on_change = on_change
        self.state = ServingState(False, f"waiting for Listener {self.name!r}")

    def start(self) -> None:
        """Subscribe to the Listener and take the verdict of the config at hand."""
        self._mesh._watch(self, self.name)
        self.retire(frozenset())

    def retire(self, live: frozenset[str]) -> None:
        """Called by the mesh after every config update: re-judge."""
        state = self._judge()
        previous, self.state = self.state, state
        if (previous.serving, previous.reason) != (state.serving, state.reason):
            self._on_change(state)

    def _judge(self) -> ServingState:
        mesh_state = self._mesh._dataplane.state
        listener = mesh_state.snapshot.listeners.get(self.name)
        if listener is None:
            error = self._mesh._listener_error(self.name)
            if error:
                return ServingState(False, f"Listener {self.name!r} was rejected: {error}")
            if self.name in mesh_state.snapshot.absent:
                return ServingState(False, f"Listener {self.name!r} does not exist")
            return ServingState(False, f"waiting for Listener {self.name!r}")
        if listener.address is None:
            return ServingState(False, f"Listener {self.name!r} is not a port listener")
        host, port = listener.address
        if port != self._port or not _same_address(host, self._address):
            return ServingState(
                False,
                f"Listener {self.name!r} is for {host}:{port}, not this server's "
                f"{self._address}:{self._port}",
            )
        bad = _unsupported_filter(listener)
        if bad is not None:
            return ServingState(
                False, f"Listener {self.name!r}: HTTP filter {bad} is not supported on servers"
            )
        runtime = mesh_state.services.get(self.name)
        return ServingState(True, "", runtime.router if runtime is not None else None)

    def check(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
        """Why the call to `method` must fail with UNAVAILABLE, or None to serve it."""
        state = self.state
        if not state.serving:
            return f"not serving: {state.reason}"
        router = state.router
        if router is None:
            return f"Listener {self.name!r}: its routes have not arrived"
        headers = {k: v for k, v in metadata if isinstance(v, str)}
        try:
            result = router.route("", method, headers, method="POST")
        except NoRoute as exc:
            return f"Listener {self.name!r}: {exc}"
        if result.route.action is not None:
            return (
                f"Listener {self.name!r}: route {result.route.name or '(unnamed)'!r} is not "
                "a non-forwarding route"
            )
        return None
