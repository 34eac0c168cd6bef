"""Listeners: the entry of a service (a client `api_listener`, or Envoy's port listener)."""

from __future__ import annotations

import attrs

from sail.model.fault import FaultPolicy
from sail.model.route import RouteConfig

__all__ = ["HttpConnectionManager", "HttpFilter", "Listener"]


@attrs.frozen
class HttpFilter:
    """One HTTP filter by name and type URL of its `typed_config`.

    `config` is the filter's own config where sail reads it: a fault filter's
    `FaultPolicy`, `None` when it injects nothing (routes may still configure faults for it
    by its `name`)."""

    name: str
    type_url: str
    is_optional: bool = False
    config: FaultPolicy | None = None


@attrs.frozen
class HttpConnectionManager:
    """The parts of Envoy's HCM the mesh uses.

    Exactly one of `rds_name` (routes from RDS) and `route_config` (inline) is set.
    """

    rds_name: str | None = None
    route_config: RouteConfig | None = None
    http_filters: tuple[HttpFilter, ...] = ()
    max_stream_duration: float | None = None


@attrs.frozen
class Listener:
    """A named listener.

    **Parameters**

    * `name` - the resource name; for client listeners the service authority
      (`reviews`, `reviews:9080`).
    * `hcm` - the HTTP connection manager of its `api_listener`, or of the single filter
      chain of a port listener.
    * `address` - `(host, port)` for port listeners, `None` for API listeners.
    """

    name: str
    hcm: HttpConnectionManager
    address: tuple[str, int] | None = None
