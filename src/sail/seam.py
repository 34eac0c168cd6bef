"""The seam between a `Mesh` and its shells: what the httpx transports, the gRPC channels
and the xDS-enabled servers see of the mesh that made them.

A shell is handed one `MeshSeam` and nothing else of the mesh (as grpc-go's balancers see
a `balancer.ClientConn`, never the channel behind it): the data plane whose `state` it
reads once per request, the rule that says which hosts are the mesh's, and the
subscriptions it needs (`track` for config updates, `watch` for a server's Listener).
`sail.mesh` builds the seam and imports the shells; the shells import only this module,
so there is no import circle and no shell reads a private member of `Mesh`.

Which hosts belong to the mesh (the rule `classify` follows, in order):

1. a host whose listener the mesh already has is a mesh host;
2. a host whose Listener, or the RouteConfiguration it names, the mesh *refused* (NACKed
   over ADS, or failed to decode in local mode) with no earlier good version to serve is a
   mesh host that cannot be served: its requests fail with `sail.errors.RejectedService`
   naming the reason, and never go to DNS or a plain connection;
3. in local mode, nothing else is;
4. IP literals, `localhost`, and names with a dot that do not end in one of the
   `mesh_domains` are outside hosts: they go to the ordinary transport at once, with no
   lookup at all (so outside calls never wait on discovery);
5. any other name (a single label such as `reviews`, or a name under a mesh domain) is
   asked of the control plane once, as a Listener named `host` or `host:port`. The first
   request waits until the answer is in (one round trip with sail's registry; at most
   the 15 s does-not-exist timer with a server that stays silent); the answer is cached,
   and later requests do not wait.

The refused names are handed to the seam by the mesh (`refuse`) from the control path; a
request reads them with one dict lookup, and only for a name the data plane does not serve
(a name it serves pays nothing for the rule).
"""

from __future__ import annotations

import ipaddress
import os
import threading
import weakref
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread

from sail.errors import RejectedService

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sail.dataplane import Dataplane

__all__ = ["ConfigSource", "MeshSeam", "Watcher"]

_OUTSIDE_CACHE_LIMIT = 4096

# How many times this process is a forked child of a child...: `os.fork()` bumps it in the
# child, so a seam sees it was forked without a `getpid()` system call per request.
_forks = [0]


def _after_fork_in_child() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class ConfigSource(Protocol):
    """Where a mesh's config comes from (the xDS client, or a local file)."""

    @property
    def dynamic(self) -> bool:
        """Whether names unknown so far may be asked of a control plane."""
        ...

    def request(self, name: str) -> threading.Event | None:
        """Subscribe to Listener `name`; an event set once the answer is in (`None`: the
        source has every listener already)."""
        ...

    def forget(self, name: str) -> None: ...

    def listener_error(self, name: str) -> str | None:
        """Why the control plane's Listener `name` was rejected, if it was."""
        ...

    def server_listener_name(self, address: str) -> str: ...

    def after_fork(self) -> None: ...

    def close(self) -> None: ...


class Watcher(Protocol):
    """A shell that hears of config updates: `retire` gets the endpoints still in the
    mesh after each one (to close connections to the rest, or re-judge a Listener)."""

    def retire(self, live: frozenset[str]) -> None: ...


class MeshSeam:
    """What a shell sees of its mesh (see the module docstring).

    **Parameters**

    * `dataplane` - the data plane; a request reads `dataplane.state` once.
    * `mesh_domains` - DNS suffixes whose names are asked of the control plane.
    * `discovery_timeout` - the longest a first request to an unknown name waits.

    The config source is attached once made (`attach`): a local source publishes its first
    config while it is being made, and that goes to the seam's watchers already.
    """

    __slots__ = ("_domains", "_forks", "_outside", "_refused", "_source", "dataplane",
                 "discovery_timeout", "watchers")

    def __init__(
        self,
        dataplane: Dataplane,
        mesh_domains: tuple[str, ...] = (),
        discovery_timeout: float = 15.0,
    ) -> None:
        self.dataplane = dataplane
        self.discovery_timeout = discovery_timeout
        self.watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
        self._domains = tuple("." + d.strip(".").lower() for d in mesh_domains)
        self._outside: dict[str, bool] = {}
        self._refused: Mapping[str, str] = {}
        self._forks = _forks[0]

    def attach(self, source: ConfigSource) -> None:
        """Take `source` as the mesh's config source (once, when the mesh is made)."""
        self._source = source

    def check_fork(self) -> None:
        """Restart the config source's thread in a forked child. Cheap (one list read and
        compare, no system call); the shells call it on every request, since a child
        forked from a process with a running mesh inherits no threads."""
        if self._forks != _forks[0]:
            self._forks = _forks[0]
            self._source.after_fork()

    # -- which hosts are the mesh's ---------------------------------------------------------

    def classify(self, host: str, name: str) -> bool | threading.Event:
        """Whether `name` (`host` or `host:port`) is a mesh service: True/False when known;
        an event to wait on when the control plane has just been asked (then `settled`).
        Raises `RejectedService` for a name the mesh refused (rule 2)."""
        self.check_fork()
        if name in self.dataplane.state.services:
            return True
        cached = self._outside.get(name)
        if cached is not None:
            return cached
        reason = self._refused.get(name)
        if reason is not None:
            raise RejectedService(name, reason)
        if not self._source.dynamic or not self.is_candidate(host):
            if len(self._outside) >= _OUTSIDE_CACHE_LIMIT:
                self._outside.clear()
            self._outside[name] = False
            if name in self._refused:
                # Refused meanwhile: `refuse` may have run before the line above.
                self._outside.pop(name, None)
                return self.classify(host, name)
            return False
        event = self._source.request(name)
        if event is None or event.is_set():
            return self.settled(name)
        return event

    def settled(self, name: str) -> bool:
        """After the control plane answered: whether it has a Listener `name`. Raises
        `RejectedService` for a name the mesh refused."""
        reason = self._refused.get(name)
        if reason is not None:
            raise RejectedService(name, reason)
        return name in self.dataplane.state.snapshot.listeners

    def refuse(self, refused: Mapping[str, str]) -> None:
        """Take `refused` (service name -> why its config was rejected) as the names the
        mesh refuses (rule 2), in place of the last ones. Called on the control path."""
        self._refused = dict(refused)
        for name in refused:
            self._outside.pop(name, None)

    def is_candidate(self, host: str) -> bool:
        """Whether `host` is a name the control plane may know (rule 3 of the module
        docstring): not an IP literal or `localhost`, and dotless or under a mesh domain."""
        host = host.lower()
        if host == "localhost":
            return False
        try:
            ipaddress.ip_address(host)
            return False
        except ValueError:
            pass
        if "." not in host:
            return True
        return bool(self._domains) and host.endswith(self._domains)

    def is_mesh_host(self, host: str, name: str, timeout: float | None = None) -> bool:
        """Whether requests to `name` go through the mesh; waits (at most `timeout`, else
        the discovery timeout) for the control plane the first time a candidate name is
        seen. Raises `RejectedService` for a name the mesh refused."""
        verdict = self.classify(host, name)
        if isinstance(verdict, bool):
            return verdict
        verdict.wait(self._limit(timeout))
        return self.settled(name)

    async def ais_mesh_host(self, host: str, name: str, timeout: float | None = None) -> bool:
        """`is_mesh_host` for async code: waits without blocking the event loop."""
        verdict = self.classify(host, name)
        if isinstance(verdict, bool):
            return verdict
        await anyio.to_thread.run_sync(verdict.wait, self._limit(timeout))
        return self.settled(name)

    def _limit(self, timeout: float | None) -> float:
        limit = self.discovery_timeout
        return limit if timeout is None else min(timeout, limit)

    # -- subscriptions ----------------------------------------------------------------------

    def track(self, watcher: Watcher) -> None:
        """Call `watcher.retire` after every config update, for as long as it lives."""
        self.watchers.add(watcher)

    def untrack(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def watch(self, watcher: Watcher, listener: str) -> None:
        """Subscribe to `listener` and `track` `watcher`."""
        self.track(watcher)
        self.check_fork()
        self._source.request(listener)

    def unwatch(self, watcher: Watcher, listener: str) -> None:
        """Undo `watch`: no more calls to `watcher`, and `listener` is no longer asked for."""
        self.untrack(watcher)
        self._source.forget(listener)

    def listener_error(self, listener: str) -> str | None:
        """Why the control plane's `listener` was rejected, if it was."""
        return self._source.listener_error(listener)

    def server_listener_name(self, address: str) -> str:
        """The Listener an xDS-enabled server on `address` (`ip:port`) watches."""
        return self._source.server_listener_name(address)
