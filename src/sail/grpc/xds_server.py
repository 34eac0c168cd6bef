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
A Listener with several filter chains has each call take the chain its connection would
(`ChainSelector`, Envoy's order of criteria): the source is the call's peer; the destination
is the address the server is bound to, unknown for a wildcard bind (`0.0.0.0`, `::`), where
only chains without `prefix_ranges` can match. A call whose connection matches no chain, and
there is no default chain, fails with UNAVAILABLE.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, cast

import attrs

from sail.errors import NoRoute
from sail.model import CidrRange, FilterChainMatch, Listener, SourceType, host_port
from sail.routing.request import Headers
from sail.routing.router import Router
from sail.security.tls import refused_server_tls

if TYPE_CHECKING:
    from sail.seam import MeshSeam

__all__ = ["ChainSelector", "ServingState", "ServingWatch"]

@attrs.frozen
class ServingState:
    """Whether an xDS-enabled server serves, why not, and the routes its calls take.

    `router` is `None` while the Listener's routes (RDS) have not arrived: calls then fail
    with UNAVAILABLE although the server serves, as in gRPC. `chains` picks the filter chain
    of a Listener that has several (and their routers); `None` when it has one."""

    serving: bool
    reason: str = ""
    router: Router | None = None
    chains: ChainSelector | None = attrs.field(default=None, repr=False)
    tls: bool = False  # the chains that can match ask for the mesh's mTLS


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def _unsupported_filter(listener: Listener) -> str | None:
    """The first HTTP filter a server cannot apply (not skippable), or None."""
    for chain in listener.chains():
        for f in chain.hcm.http_filters:
            if not f.is_router and not f.is_optional:
                return f"{f.name} ({f.type_url})"
    return None


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(ranges: Iterable[CidrRange]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(f"{r.address}/{r.prefix_len}", strict=False) for r in ranges)


def _longest(networks: tuple[_Network, ...], ip: _Address | None) -> int | None:
    """Specificity of a prefix-range criterion: -1 when it has none (the fallback), the
    longest prefix holding `ip`, or None when none does."""
    if not networks:
        return -1
    best = None
    if ip is not None:
        for net in networks:
            if ip.version == net.version and ip in net and (best is None or net.prefixlen > best):
                best = net.prefixlen
    return best


@attrs.frozen
class _Chain:
    key: str
    match: FilterChainMatch
    destinations: tuple[_Network, ...]
    sources: tuple[_Network, ...]


class ChainSelector:
    """Picks the filter chain of a connection as Envoy does (gRFC A36): at each criterion in
    turn - destination prefix, transport protocol, source type, source prefix, source port -
    keep the chains that match it most specifically (a chain without the criterion is the
    fallback), then take the first left; else the default chain; else none."""

    def __init__(
        self, listener: Listener, local: _Address | None, routers: Mapping[str, Router]
    ) -> None:
        self.routers = routers  # by route key; a chain whose routes are missing has none
        keys = listener.route_keys()
        chains = listener.filter_chains
        self._chains = tuple(
            _Chain(key, c.match, _networks(c.match.prefix_ranges),
                   _networks(c.match.source_prefix_ranges))
            for key, c in zip(keys, chains, strict=False)
            if not c.match.never
        )
        self._default = keys[-1] if listener.default_filter_chain is not None else None
        self._local = local
        self._seen: dict[str, str | None] = {}

    def select(self, peer: str) -> str | None:
        """The route key of the chain a connection from `peer` (grpc's `context.peer()`,
        `ipv4:10.0.0.1:5000`) takes, or None when no chain matches. Remembered per peer:
        the calls of one connection share it."""
        try:
            return self._seen[peer]
        except KeyError:
            pass
        if len(self._seen) >= _PEER_CACHE:
            self._seen.clear()
        key = self._seen[peer] = self._select(peer)
        return key

    def _select(self, peer: str) -> str | None:
        source, port = _parse_peer(peer)
        local = self._local
        candidates = [(c, _scores(c, source, port, local)) for c in self._chains]
        for stage in range(_STAGES):
            scored = [(c, s, v) for c, s in candidates if (v := s[stage]) is not None]
            if not scored:
                return self._default
            best = max(v for _, _, v in scored)
            candidates = [(c, s) for c, s, v in scored if v == best]
        return candidates[0][0].key if candidates else self._default


_STAGES = 5
_PEER_CACHE = 4096


def _scores(
    chain: _Chain, source: _Address | None, port: int | None, local: _Address | None
) -> tuple[int | None, ...]:
    """How specifically `chain` matches a connection at each stage (None: not at all)."""
    match = chain.match
    ports = (1 if port in match.source_ports else None) if match.source_ports else 0
    return (
        _longest(chain.destinations, local),
        1 if match.raw_buffer else 0,
        _source_type(match.source_type, source, local),
        _longest(chain.sources, source),
        ports,
    )


def _source_type(kind: SourceType, source: _Address | None, local: _Address | None) -> int | None:
    if kind is SourceType.ANY:
        return 0
    same = source is not None and (source.is_loopback or source == local)
    if kind is SourceType.SAME_IP_OR_LOOPBACK:
        return 1 if same else None
    return 1 if source is not None and not same else None


def _parse_peer(peer: str) -> tuple[_Address | None, int | None]:
    """`ipv4:1.2.3.4:5`, `ipv6:[::1]:5` (grpc's peer strings) → address and port."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None, None
    host, _, port = rest.rpartition(":")
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None, None


def _local_address(address: str) -> _Address | None:
    """The destination address of every connection to a server bound to `address`; None
    for a wildcard bind (grpcio does not tell a handler which local address was hit)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return None if ip.is_unspecified else ip


class ServingWatch:
    """Watches the A36 Listener of one server address on `mesh`.

    `on_change(state)` runs (on the mesh's config thread, or in `start()`) whenever the
    serving verdict or its reason changes; `check(method, metadata)` is the per-call verdict,
    a lock-free read of the state built at the last config update.
    """

    def __init__(
        self,
        mesh: MeshSeam,
        address: str,
        port: int,
        on_change: Callable[[ServingState], None],
        providers: Collection[str] = (),
    ) -> None:
        self.name = mesh.server_listener_name(host_port(address, port))
        self._providers = providers  # the certificate provider instances the server has
        self.listening_tls: bool | None = None  # set by the server once its port is open
        self._mesh = mesh
        self._address = address
        self._port = port
        self._on_change = on_change
        self._local = _local_address(address)
        self.state = ServingState(False, f"waiting for Listener {self.name!r}")

    def start(self) -> None:
        """Subscribe to the Listener and take the verdict of the config at hand."""
        self._mesh.watch(self, self.name)
        self.retire(frozenset())

    def stop(self) -> None:
        """Stop watching (the server is stopping): no more verdicts, the Listener unasked."""
        self._mesh.unwatch(self, self.name)

    def retire(self, live: frozenset[str]) -> None:
        """Called by the mesh after every config update: re-judge."""
        state = self._judge()
        previous, self.state = self.state, state
        if (previous.serving, previous.reason) != (state.serving, state.reason):
            self._on_change(state)

    def _judge(self) -> ServingState:
        mesh_state = self._mesh.dataplane.state
        listener = mesh_state.snapshot.listeners.get(self.name)
        if listener is None:
            error = self._mesh.listener_error(self.name)
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
        tls, why = self._transport(listener)
        if why:
            return ServingState(False, f"Listener {self.name!r}: {why}")
        runtime = mesh_state.services.get(self.name)
        router = runtime.router if runtime is not None else None
        if not listener.filter_chains and listener.default_filter_chain is None:
            return ServingState(True, "", router, tls=tls)
        routers = {
            key: r.router for key in listener.route_keys()
            if (r := mesh_state.services.get(key)) is not None
        }
        return ServingState(
            True, "", router, ChainSelector(listener, self._local, routers), tls=tls
        )

    def _transport(self, listener: Listener) -> tuple[bool, str]:
        """Whether the Listener's chains that can match ask for mTLS, or why the server
        cannot serve them. grpcio listens with one transport per port, fixed once it
        listens: the chains must all be mTLS (the workload's certificate, a client
        certificate required) or all plaintext (a chain for TLS-detected connections,
        PERMISSIVE's, never matches a gRPC server: gRFC A36), and stay so."""
        kinds: set[bool] = set()
        for chain in listener.chains():
            if chain.match.never:
                continue
            if chain.tls is not None:
                refused = refused_server_tls(chain.tls, self._providers)
                if refused is not None:
                    return False, f"filter chain {chain.name or '(unnamed)'!r}: {refused}"
            kinds.add(chain.tls is not None)
        if len(kinds) > 1:
            return False, ("its filter chains mix mTLS and plaintext, and a grpcio server "
                           "serves one of them on a port")
        tls = kinds == {True}
        if self.listening_tls is not None and tls != self.listening_tls:
            now, then = ("mTLS", "plaintext") if tls else ("plaintext", "mTLS")
            return False, (f"it asks for {now} and the port serves {then}: grpcio cannot "
                           "change a listening port's transport; restart the server")
        return tls, ""

    def check(self, method: str, headers: Mapping[str, str], peer: str) -> str | None:
        """Why the call to `method` (with `headers`, its metadata, from `peer`) must fail
        with UNAVAILABLE, or None to serve it."""
        state = self.state
        if not state.serving:
            return f"not serving: {state.reason}"
        router = state.router
        chains = state.chains
        if chains is not None:
            key = chains.select(peer)
            if key is None:
                return f"Listener {self.name!r}: no filter chain matches a connection from {peer}"
            router = chains.routers.get(key)
        if router is None:
            return f"Listener {self.name!r}: its routes have not arrived"
        try:
            result = router.route("", method, cast(Headers, headers), method="POST")
        except NoRoute as exc:
            return f"Listener {self.name!r}: {exc}"
        if result.route.action is not None:
            return (
                f"Listener {self.name!r}: route {result.route.name or '(unnamed)'!r} is not "
                "a non-forwarding route"
            )
        return None
