"""Load-balancing policy options: protobuf configs ⇄ `LbPolicy.options`.

Option keys are the proto field names (`choice_count`, `minimum_ring_size`, ...); durations
are float seconds. Only fields the config sets become options, and `encode_options` writes
back exactly those, so a policy round-trips unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2 as cswrr_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.pick_first.v3 import pick_first_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2

from sail.xds.codec.extensions import type_url_of
from sail.xds.codec.validation import Invalid, at
from sail.xds.codec.wellknown import duration_seconds, seconds_to_duration

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "TYPED_CLASSES",
    "encode_options",
    "freeze",
    "legacy_options",
    "message_class_for",
    "typed_options",
]

TYPED_CLASSES: Mapping[str, Any] = {
    "round_robin": round_robin_pb2.RoundRobin,
    "random": random_pb2.Random,
    "least_request": least_request_pb2.LeastRequest,
    "ring_hash": ring_hash_pb2.RingHash,
    "maglev": maglev_pb2.Maglev,
    "weighted_round_robin": cswrr_pb2.ClientSideWeightedRoundRobin,
    "pick_first": pick_first_pb2.PickFirst,
}
"""The typed config message of each policy sail knows by name."""

_BY_TYPE_URL = {type_url_of(cls): cls for cls in TYPED_CLASSES.values()}

# Per policy: option key → kind ("wrapper" for UInt32/UInt64/Float/BoolValue, "duration",
# "bool" for a plain bool field).
_FIELDS: Mapping[str, Mapping[str, str]] = {
    "least_request": {"choice_count": "wrapper"},
    "ring_hash": {"minimum_ring_size": "wrapper", "maximum_ring_size": "wrapper"},
    "maglev": {"table_size": "wrapper"},
    "weighted_round_robin": {
        "enable_oob_load_report": "wrapper",
        "oob_reporting_period": "duration",
        "blackout_period": "duration",
        "weight_expiration_period": "duration",
        "weight_update_period": "duration",
        "error_utilization_penalty": "wrapper",
    },
    "pick_first": {"shuffle_address_list": "bool"},
}

_MAX_RING = 8_388_608
_MAX_MAGLEV = 5_000_011


def message_class_for(type_url: str) -> Any | None:
    return _BY_TYPE_URL.get(type_url)


def typed_options(name: str, config: Any) -> tuple[tuple[str, object], ...]:
    """Options of a typed policy config (`RingHash`, `LeastRequest`, ...), validated."""
    options: dict[str, object] = {}
    for key, kind in _FIELDS.get(name, {}).items():
        if kind == "bool":
            if getattr(config, key):
                options[key] = True
        elif kind == "duration":
            value = duration_seconds(config, key)
            if value is not None:
                options[key] = value
        elif config.HasField(key):
            options[key] = getattr(config, key).value
    _check(name, options)
    return tuple(sorted(options.items()))


def legacy_options(cluster: Any, name: str) -> tuple[tuple[str, object], ...]:
    """Options from the `Cluster`'s own `*_lb_config` field for the enum policy `name`."""
    field = {
        "least_request": "least_request_lb_config",
        "ring_hash": "ring_hash_lb_config",
        "maglev": "maglev_lb_config",
    }.get(name)
    if field is None or not cluster.HasField(field):
        return ()
    config = getattr(cluster, field)
    options = {k: getattr(config, k).value for k in _FIELDS[name] if config.HasField(k)}
    with at(field):
        _check(name, options)
    return tuple(sorted(options.items()))


def _check(name: str, options: dict[str, Any]) -> None:
    if name == "least_request" and options.get("choice_count", 2) < 2:
        raise Invalid("choice_count", f"{options['choice_count']} is less than 2")
    if name == "ring_hash":
        low = options.get("minimum_ring_size", 1024)
        high = options.get("maximum_ring_size", _MAX_RING)
        for key, value in (("minimum_ring_size", low), ("maximum_ring_size", high)):
            if not 1 <= value <= _MAX_RING:
                raise Invalid(key, f"{value} is not in 1-{_MAX_RING}")
        if low > high:
            raise Invalid("minimum_ring_size", f"{low} is above maximum_ring_size {high}")
    if name == "maglev" and "table_size" in options:
        size = options["table_size"]
        if size > _MAX_MAGLEV or not _is_prime(size):
            raise Invalid("table_size", f"{size} is not a prime of at most {_MAX_MAGLEV}")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def encode_options(name: str, options: tuple[tuple[str, object], ...], config: Any) -> Any:
    """Write `options` into the typed config message `config` of policy `name`."""
    fields = _FIELDS.get(name, {})
    for key, option in options:
        value: Any = option
        kind = fields.get(key)
        if kind is None:
            raise ValueError(f"policy {name!r} has no option {key!r} that xDS can carry")
        if kind == "bool":
            setattr(config, key, bool(value))
        elif kind == "duration":
            getattr(config, key).CopyFrom(seconds_to_duration(float(value)))
        else:
            getattr(config, key).value = value
    return config


def freeze(value: Any) -> Any:
    """A JSON-like value made hashable: dicts become sorted `(key, value)` tuples, lists
    become tuples. Used for the options of custom policies sent as a `TypedStruct`."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value
