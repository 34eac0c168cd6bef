"""The JSON shapes of the registry API, both ways, shared by the server (`api.py`) and its
clients (`remote.py`). The API itself is documented in `sail.registry.api`.

Parsing is strict: unknown fields are refused, and every `BodyError` names its field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

from sail.errors import InvalidSpiffeId
from sail.model import HealthStatus, Locality
from sail.registration import Workload
from sail.security.spiffe import SpiffeId

__all__ = [
    "MAX_TTL",
    "MAX_WEIGHT",
    "SERVICE",
    "BodyError",
    "check_fields",
    "decode",
    "encode",
    "health_field",
    "method_path",
    "string_field",
    "workload_from_json",
    "workload_to_json",
]

SERVICE = "sail.registry.v1.Registry"
MAX_TTL = 3600.0
MAX_WEIGHT = 2**32 - 1  # Envoy's load_balancing_weight is a uint32

_REGISTER_FIELDS = (
    "service", "address", "port", "service_port", "labels", "locality", "weight", "health", "ttl",
    "identity", "permissive",
)
_LOCALITY_FIELDS = ("region", "zone", "sub_zone")


class BodyError(ValueError):
    """A request body field is missing or invalid; the message names the field."""


def method_path(method: str) -> str:
    """The gRPC path of a method: `/sail.registry.v1.Registry/Register`."""
    return f"/{SERVICE}/{method}"


def encode(message: Mapping[str, Any]) -> bytes:
    """A JSON object as UTF-8 bytes (a gRPC serializer)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes) -> Any:
    """UTF-8 JSON bytes to Python (a gRPC deserializer); `ValueError` if not JSON."""
    return json.loads(data.decode())


# -- Register ---------------------------------------------------------------------------------


def workload_to_json(
    workload: Workload, health: HealthStatus = HealthStatus.HEALTHY, ttl: float | None = None
) -> dict[str, Any]:
    """The body of a `Register` call."""
    body: dict[str, Any] = {
        "service": workload.service,
        "address": workload.address,
        "port": workload.port,
        "labels": dict(workload.labels),
        "locality": {
            "region": workload.locality.region,
            "zone": workload.locality.zone,
            "sub_zone": workload.locality.sub_zone,
        },
        "weight": workload.weight,
        "health": health.name,
    }
    if workload.service_port is not None:
        body["service_port"] = workload.service_port
    if workload.identity is not None:
        body["identity"] = workload.identity
    if not workload.permissive:
        body["permissive"] = False
    if ttl is not None:
        body["ttl"] = ttl
    return body


def workload_from_json(
    body: Mapping[str, Any], default_ttl: float
) -> tuple[Workload, HealthStatus, float]:
    """Parse and validate a `Register` body: the workload, its health and its lease TTL."""
    check_fields(body, _REGISTER_FIELDS)
    workload = Workload(
        service=string_field(body, "service"),
        address=string_field(body, "address"),
        port=_integer(body, "port", 1, 65535),
        labels=_labels(body),
        locality=_locality(body),
        weight=_integer(body, "weight", 1, MAX_WEIGHT, default=1),
        service_port=(
            _integer(body, "service_port", 1, 65535) if "service_port" in body else None
        ),
        identity=_identity(body),
        permissive=_boolean(body, "permissive", default=True),
    )
    health = health_field(body, default=HealthStatus.HEALTHY)
    return workload, health, _ttl(body, default_ttl)


# -- fields -----------------------------------------------------------------------------------


def check_fields(body: Mapping[str, Any], known: Collection[str]) -> None:
    """Refuse fields outside `known`: a typo must not pass for a default."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        names = ", ".join(sorted(known)) or "none"
        raise BodyError(f"unknown field {unknown[0]!r} (known: {names})")


def string_field(body: Mapping[str, Any], field: str) -> str:
    """A required, non-blank string (stripped)."""
    if field not in body:
        raise BodyError(f"missing required field {field!r}")
    value = body[field]
    if not isinstance(value, str) or not value.strip():
        raise BodyError(f"{field!r} must be a non-empty string, got {value!r}")
    return value.strip()


def health_field(
    body: Mapping[str, Any], field: str = "health", default: HealthStatus | None = None
) -> HealthStatus:
    """A `HealthStatus` by name, in any case; required unless `default` is given."""
    if body.get(field) is None:
        if default is not None:
            return default
        raise BodyError(f"missing required field {field!r}")
    value = body[field]
    if isinstance(value, str) and value.upper() in HealthStatus.__members__:
        return HealthStatus[value.upper()]
    names = ", ".join(h.name for h in HealthStatus)
    raise BodyError(f"{field!r} must be one of {names}, got {value!r}")


def _integer(
    body: Mapping[str, Any], field: str, low: int, high: int, default: int | None = None
) -> int:
    if field not in body:
        if default is not None:
            return default
        raise BodyError(f"missing required field {field!r}")
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BodyError(f"{field!r} must be an integer from {low} to {high}, got {value!r}")
    return value


def _boolean(body: Mapping[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise BodyError(f"{field!r} must be true or false, got {value!r}")
    return value


def _identity(body: Mapping[str, Any]) -> str | None:
    if "identity" not in body:
        return None
    value = string_field(body, "identity")
    try:
        return str(SpiffeId.parse(value))
    except InvalidSpiffeId as exc:
        raise BodyError(f"'identity': {exc}") from None


def _labels(body: Mapping[str, Any]) -> dict[str, str]:
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise BodyError(f"'labels' must be an object of strings to strings, got {labels!r}")
    return dict(labels)


def _locality(body: Mapping[str, Any]) -> Locality:
    value = body.get("locality", {})
    if not isinstance(value, dict):
        raise BodyError(f"'locality' must be an object {{region, zone, sub_zone}}, got {value!r}")
    for key, part in value.items():
        if key not in _LOCALITY_FIELDS:
            raise BodyError(f"unknown field 'locality.{key}' (known: region, zone, sub_zone)")
        if not isinstance(part, str):
            raise BodyError(f"'locality.{key}' must be a string, got {part!r}")
    return Locality(**value)


def _ttl(body: Mapping[str, Any], default: float) -> float:
    value = body.get("ttl", default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TTL
    ):
        raise BodyError(f"'ttl' must be a number of seconds in (0, {MAX_TTL:g}], got {value!r}")
    return float(value)
