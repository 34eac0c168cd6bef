"""`ServiceEntry` (networking.istio.io): a service the mesh knows without registered workloads.

Supported:

* `hosts` (each becomes a service, with a listener per port as registered services have);
* `ports[]`: `number`, `name`, `protocol` (`HTTP`, `HTTP2`, `GRPC`, `GRPC-WEB`: sail's
  listeners speak HTTP, and a sail client speaks the protocol of the library that makes
  the call; the other Istio protocols are refused), `targetPort` (the endpoints' port
  when they do not name one);
* `resolution`: `STATIC` (the `endpoints` are IP addresses, served by EDS) or `DNS` (a
  `STRICT_DNS` cluster resolves each endpoint address; without `endpoints`, the hosts
  themselves);
* `endpoints[]`: `address`, `ports` (port name → number), `labels` (for subsets),
  `weight`, `locality` (`region/zone/subzone`);
* `location: MESH_EXTERNAL` (Istio's default), which is what sail does with every
  ServiceEntry host: plaintext, no server-side policy. `MESH_INTERNAL` parses but is
  refused by `validate.check_supported` until sail has mesh security.

Istio's default `resolution`, `NONE` (pass through to the address the caller resolved), has
no meaning for a proxyless client, so `resolution` is required.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from typing import ClassVar

import attrs

from sail.model import Locality
from sail.registry.istio.errors import FieldError
from sail.registry.istio.schema import in_range, non_empty, not_yet, valid_hosts

__all__ = [
    "Location",
    "Protocol",
    "Resolution",
    "ServiceEntrySpec",
    "ServicePort",
    "WorkloadEntry",
]


class Resolution(enum.Enum):
    STATIC = "STATIC"
    DNS = "DNS"


class Location(enum.Enum):
    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


class Protocol(enum.Enum):
    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    GRPC_WEB = "GRPC-WEB"


not_yet(Resolution, "NONE", "DNS_ROUND_ROBIN")
not_yet(Protocol, "HTTPS", "TCP", "TLS", "UDP", "MONGO", "MYSQL", "REDIS")


@attrs.frozen
class ServicePort:
    number: int = attrs.field(validator=in_range(1, 65535))
    name: str = attrs.field(validator=non_empty)
    protocol: Protocol | None = None
    target_port: int | None = attrs.field(default=None, validator=in_range(1, 65535))


@attrs.frozen
class WorkloadEntry:
    """One endpoint of a ServiceEntry."""

    UNSUPPORTED: ClassVar = ("network", "serviceAccount")

    address: str = attrs.field(validator=non_empty)
    ports: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    weight: int | None = attrs.field(default=None, validator=in_range(1, 2**32 - 1))
    locality: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.address.startswith("unix://"):
            raise FieldError("address", "unix domain sockets are not supported")
        for name, number in self.ports.items():
            if not 1 <= number <= 65535:
                raise FieldError(f"ports[{name}]", f"must be between 1 and 65535, got {number}")
        if self.locality is not None and self.locality.count("/") > 2:
            raise FieldError("locality", f"{self.locality!r}: expected region/zone/subzone")

    @property
    def parsed_locality(self) -> Locality:
        """`region/zone/subzone` (any trailing parts may be left out) as a `Locality`."""
        parts = [*(self.locality or "").split("/"), "", ""]
        return Locality(region=parts[0], zone=parts[1], sub_zone=parts[2])

    def port_for(self, port: ServicePort) -> int:
        """The port to connect to for the entry's `port`: named in `ports`, else the
        port's `targetPort`, else its number."""
        return self.ports.get(port.name) or port.target_port or port.number


@attrs.frozen
class ServiceEntrySpec:
    UNSUPPORTED: ClassVar = ("addresses", "exportTo", "subjectAltNames", "workloadSelector")

    hosts: tuple[str, ...] = attrs.field(validator=valid_hosts)
    ports: tuple[ServicePort, ...] = attrs.field(validator=non_empty)
    resolution: Resolution
    location: Location | None = None
    endpoints: tuple[WorkloadEntry, ...] = ()

    def __attrs_post_init__(self) -> None:
        numbers: dict[int, int] = {}
        names: dict[str, int] = {}
        for i, port in enumerate(self.ports):
            if port.number in numbers:
                raise FieldError(
                    f"ports[{i}].number",
                    f"duplicate port {port.number} (also ports[{numbers[port.number]}])",
                )
            if port.name in names:
                raise FieldError(
                    f"ports[{i}].name",
                    f"duplicate port name {port.name!r} (also ports[{names[port.name]}])",
                )
            numbers[port.number] = names[port.name] = i
        for i, endpoint in enumerate(self.endpoints):
            for name in endpoint.ports:
                if name not in names:
                    raise FieldError(
                        f"endpoints[{i}].ports[{name}]",
                        f"no port named {name!r} (ports: {', '.join(names)})",
                    )
            if self.resolution is Resolution.STATIC:
                _check_ip(f"endpoints[{i}].address", endpoint.address)
        if self.resolution is Resolution.STATIC and not self.endpoints:
            raise FieldError("endpoints", "STATIC resolution needs at least one endpoint")


def _check_ip(field: str, address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise FieldError(
            field,
            f"{address!r} is not an IP address, as STATIC resolution needs "
            "(use resolution: DNS for host names)",
        ) from None
