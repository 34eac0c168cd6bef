"""`MeshSnapshot`: one complete, consistent view of the config the data plane runs on."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from sail.model.cluster import Cluster
from sail.model.endpoint import ClusterLoadAssignment
from sail.model.listener import Listener
from sail.model.route import RouteConfig

__all__ = ["MeshSnapshot"]


@attrs.frozen
class MeshSnapshot:
    """Resolved config: every listener with its routes, every cluster they name with its
    endpoints.

    **Parameters**

    * `listeners` - by listener name.
    * `routes` - the route configuration of each listener, by *listener* name (inline
      or from RDS); a port listener's further filter chains' under `Listener.route_keys`.
    * `clusters` - by cluster name.
    * `endpoints` - by cluster name (resolved through `eds_service_name`).
    * `absent` - names a watcher asked for that the server said do not exist.
    * `version` - increases by one with each published snapshot.
    """

    listeners: Mapping[str, Listener] = attrs.field(factory=dict)
    routes: Mapping[str, RouteConfig] = attrs.field(factory=dict)
    clusters: Mapping[str, Cluster] = attrs.field(factory=dict)
    endpoints: Mapping[str, ClusterLoadAssignment] = attrs.field(factory=dict)
    absent: frozenset[str] = frozenset()
    version: int = 0
