"""Load-balancing policy options: protobuf configs ⇄ `LbPolicy.options`.

Option keys are the proto field names (`choice_count`, `minimum_ring_size`, ...); durations
are float seconds. Only fields the config sets become options, and `encode_options` writes
back exactly those, so a policy round-trips unchanged. Nested and special fields:

* `slow_start_config` (round_robin, least_request) becomes sorted pairs of what it sets:
  `(("aggression", 2.0), ("min_weight_percent", 5.0), ("slow_start_window", 30.0))`;
  `aggression` and `active_request_bias` are `RuntimeDouble`s: sail has no runtime and keeps
  their `default_value`.
* `hash_function` (ring_hash) and `selection_method` (least_request) are recorded by name,
  only when not the default (`MURMUR_HASH_2`, `FULL_SCAN`): the legacy and typed ring-hash
  enums number their values differently, the names agree.
* `use_hostname_for_hashing` (ring_hash, maglev) is read from `consistent_hashing_lb_config`
  (or, for ring_hash, the deprecated field of the same name; for the `lb_policy` enum, from
  the cluster's `common_lb_config.consistent_hashing_lb_config`).
* `weighted_round_robin` (`ClientSideWeightedRoundRobin`) is sail's round robin, which
  honours the endpoints' EDS weights; it takes no weights from ORCA load reports. So its
  only option is `slow_start_config` (as round robin's), and every option that needs load
  reports is a NACK naming it rather than being ignored: `blackout_period`,
  `weight_expiration_period`, `weight_update_period`, `oob_reporting_period`,
  `error_utilization_penalty`, `metric_names_for_computing_utilization`, and
  `enable_oob_load_report` unless it is `false`.
* `minimum_ring_size`, `maximum_ring_size` (1-8388608, the minimum not above the maximum)
  and Maglev's `table_size` (a prime of at most 5000011) are NACKed outside Envoy's limits,
  naming the field, and otherwise recorded as sent: the cap on what a client builds (4096
  ring entries, 65537 table slots by default) is the balancer's, applied at build time.
* Fields sail does not implement are not recorded and have no effect: `locality_lb_config`
  (locality weights are always on), `hash_balance_factor` (bounded load),
  `enable_full_scan` (deprecated; Envoy reads `selection_method`).
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
# "bool" for a plain bool field, "runtime" for a RuntimeDouble, "slow_start" for a
# SlowStartConfig, "enum" for an enum recorded by name when not its 0 value, "hostname" for
# use_hostname_for_hashing and its consistent_hashing_lb_config).
_FIELDS: Mapping[str, Mapping[str, str]] = {
    "round_robin": {"slow_start_config": "slow_start"},
    "least_request": {
        "choice_count": "wrapper",
        "active_request_bias": "runtime",
        "slow_start_config": "slow_start",
        "selection_method": "enum",
    },
    "ring_hash": {
        "minimum_ring_size": "wrapper",
        "maximum_ring_size": "wrapper",
        "hash_function": "enum",
        "use_hostname_for_hashing": "hostname",
    },
    "maglev": {"table_size": "wrapper", "use_hostname_for_hashing": "hostname"},
    "weighted_round_robin": {"slow_start_config": "slow_start"},
    "pick_first": {"shuffle_address_list": "bool"},
}

_MAX_RING = 8_388_608
_MAX_MAGLEV = 5_000_011
_DEFAULT_ENUM_NAMES = frozenset({"DEFAULT_HASH", "XX_HASH", "N_CHOICES"})
_SLOW_START_FIELDS = ("slow_start_window", "aggression", "min_weight_percent")


def message_class_for(type_url: str) -> Any | None:
    return _BY_TYPE_URL.get(type_url)


def typed_options(name: str, config: Any) -> tuple[tuple[str, object], ...]:
    """Options of a typed policy config (`RingHash`, `LeastRequest`, ...), validated."""
    if name == "weighted_round_robin":
        _refuse_load_report_options(config)
    options = _read(name, config, None)
    _check(name, options)
    return tuple(sorted(options.items()))


_LEGACY_FIELDS = {
    "round_robin": "round_robin_lb_config",
    "least_request": "least_request_lb_config",
    "ring_hash": "ring_hash_lb_config",
    "maglev": "maglev_lb_config",
}


def legacy_options(cluster: Any, name: str) -> tuple[tuple[str, object], ...]:
    """Options from the `Cluster`'s own `*_lb_config` field for the enum policy `name` (and,
    for the hashing policies, `common_lb_config.consistent_hashing_lb_config`)."""
    field = _LEGACY_FIELDS.get(name)
    options: dict[str, Any] = {}
    common = cluster.common_lb_config
    consistent = (
        common.consistent_hashing_lb_config
        if common.HasField("consistent_hashing_lb_config")
        else None
    )
    if (
        consistent is not None
        and name in ("ring_hash", "maglev")
        and consistent.use_hostname_for_hashing
    ):
        options["use_hostname_for_hashing"] = True
    if field is None or not cluster.HasField(field):
        if options:
            with at("common_lb_config"):
                _check(name, options)
        return tuple(sorted(options.items()))
    with at(field):
        options.update(_read(name, getattr(cluster, field), consistent))
        _check(name, options)
    return tuple(sorted(options.items()))


def _read(name: str, config: Any, consistent: Any) -> dict[str, Any]:
    """The options `config` (typed or legacy) sets among those of policy `name`."""
    options: dict[str, Any] = {}
    present = config.DESCRIPTOR.fields_by_name
    for key, kind in _FIELDS.get(name, {}).items():
        if kind == "hostname":
            if _use_hostname(config, consistent):
                options[key] = True
            continue
        if key not in present:
            continue
        if kind == "bool":
            if getattr(config, key):
                options[key] = True
        elif kind == "duration":
            value = duration_seconds(config, key)
            if value is not None:
                options[key] = value
        elif kind == "enum":
            number = getattr(config, key)
            label = present[key].enum_type.values_by_number.get(number)
            if label is None:
                raise Invalid(key, f"{number} is not a defined value")
            if label.name not in _DEFAULT_ENUM_NAMES:
                options[key] = label.name
        elif not config.HasField(key):
            continue
        elif kind == "runtime":
            options[key] = getattr(config, key).default_value
        elif kind == "slow_start":
            with at(key):
                options[key] = _slow_start(getattr(config, key))
        else:
            options[key] = getattr(config, key).value
    return options


def _use_hostname(config: Any, consistent: Any) -> bool:
    """Envoy: `consistent_hashing_lb_config` when set, else the deprecated field."""
    fields = config.DESCRIPTOR.fields_by_name
    if "consistent_hashing_lb_config" in fields and config.HasField("consistent_hashing_lb_config"):
        return bool(config.consistent_hashing_lb_config.use_hostname_for_hashing)
    if "use_hostname_for_hashing" in fields:
        return bool(config.use_hostname_for_hashing)
    return consistent is not None and bool(consistent.use_hostname_for_hashing)


def _slow_start(config: Any) -> tuple[tuple[str, object], ...]:
    values: dict[str, object] = {}
    window = duration_seconds(config, "slow_start_window")
    if window is not None:
        values["slow_start_window"] = window
    if config.HasField("aggression"):
        values["aggression"] = config.aggression.default_value
    if config.HasField("min_weight_percent"):
        percent = config.min_weight_percent.value
        if not 0.0 <= percent <= 100.0:
            raise Invalid("min_weight_percent.value", f"{percent} is not in 0-100")
        values["min_weight_percent"] = percent
    return tuple(sorted(values.items()))


def _refuse_load_report_options(config: Any) -> None:
    """NACK any `ClientSideWeightedRoundRobin` option sail cannot honour (see the module
    docstring): all but `slow_start_config`, and `enable_oob_load_report: false`."""
    for field, value in config.ListFields():
        if field.name == "slow_start_config":
            continue
        if field.name == "enable_oob_load_report" and not value.value:
            continue
        raise Invalid(
            field.name,
            "is not supported: sail's weighted_round_robin is round robin by the endpoints' "
            "EDS weights and reads no ORCA load reports, so it cannot honour this option; "
            "refused rather than ignored",
        )


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
    """Write `options` into the config message `config` of policy `name` (typed, or the
    `Cluster`'s legacy `*_lb_config`; an option the message has no field for is a
    `ValueError`)."""
    fields = _FIELDS.get(name, {})
    present = config.DESCRIPTOR.fields_by_name
    for option_key, option in options:
        key = option_key
        value: Any = option
        kind = fields.get(key)
        if kind is None:
            raise ValueError(f"policy {name!r} has no option {key!r} that xDS can carry")
        if kind == "hostname":
            if "consistent_hashing_lb_config" in present:
                config.consistent_hashing_lb_config.use_hostname_for_hashing = bool(value)
                continue
            key = "use_hostname_for_hashing"
        if key not in present:
            raise ValueError(
                f"{config.DESCRIPTOR.full_name} has no field {key!r} for policy {name!r}"
            )
        if kind in ("bool", "hostname"):
            setattr(config, key, bool(value))
        elif kind == "duration":
            getattr(config, key).CopyFrom(seconds_to_duration(float(value)))
        elif kind == "enum":
            setattr(config, key, present[key].enum_type.values_by_name[value].number)
        elif kind == "runtime":
            runtime = getattr(config, key)
            runtime.default_value = float(value)
            runtime.runtime_key = f"{name}.{key}"  # required by Envoy's validation
        elif kind == "slow_start":
            _encode_slow_start(name, dict(value), getattr(config, key))
        else:
            getattr(config, key).value = value
    return config


def _encode_slow_start(name: str, values: dict[str, Any], config: Any) -> None:
    config.SetInParent()
    if "slow_start_window" in values:
        config.slow_start_window.CopyFrom(seconds_to_duration(float(values["slow_start_window"])))
    if "aggression" in values:
        config.aggression.default_value = float(values["aggression"])
        config.aggression.runtime_key = f"{name}.slow_start_config.aggression"
    if "min_weight_percent" in values:
        config.min_weight_percent.value = float(values["min_weight_percent"])


def freeze(value: Any) -> Any:
    """A JSON-like value made hashable: dicts become sorted `(key, value)` tuples, lists
    become tuples. Used for the options of custom policies sent as a `TypedStruct`."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value
