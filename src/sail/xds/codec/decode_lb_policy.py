"""A cluster's load-balancing policy → `LbPolicy(name, options)`.

Two places in a `Cluster` name the policy:

* `load_balancing_policy` (typed extensions, gRFC A52) takes precedence when it lists any
  policy. Like gRPC, sail walks the list and takes the **first** entry whose type it knows
  *and* whose name is registered in `sail.balancing.registry`; the others are fallbacks for
  clients that know less. `wrr_locality` wraps an `endpoint_picking_policy` list: sail
  picks from that inner list (locality weights are always honoured by sail's balancer).
  A `TypedStruct` whose type sail does not know names a custom policy by the last path
  segment of its type URL (`type.googleapis.com/my_policy` → `my_policy`), its struct
  becoming the options, so users can register their own policies as in gRPC.
* the `lb_policy` enum, with its options in `round_robin_lb_config`,
  `least_request_lb_config`, `ring_hash_lb_config` or `maglev_lb_config` (and, for the
  hashing policies, `common_lb_config.consistent_hashing_lb_config`).

Options are recorded only when the config sets them; policies apply their own defaults
(`policy.option("choice_count", 2)`); `sail.xds.codec.lb_options` lists them. Envoy's limits
are checked here: `choice_count >= 2`, ring sizes at most 8M with the minimum not above the
maximum, a prime Maglev table size of at most 5000011, a slow-start `min_weight_percent` in
0-100. Sizes within those limits are kept as sent (config dumps and the encoder show them);
the balancers clamp them when they build, as gRPC does (a ring to 4096 entries, a Maglev
table to 65537 slots by default: `sail.balancing.ring_hash`, `sail.balancing.maglev`).
Every policy Envoy's enum names except `CLUSTER_PROVIDED` is registered in
`sail.balancing`: `ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST`, `RING_HASH`, `MAGLEV`.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from google.protobuf import json_format

from sail.balancing import registry
from sail.model import LbPolicy
from sail.xds.codec.extensions import LB_POLICIES, WRR_LOCALITY, configured_type, unpack_into
from sail.xds.codec.lb_options import (
    freeze,
    legacy_options,
    message_class_for,
    typed_options,
)
from sail.xds.codec.validation import Invalid, at
from sail.xds.codec.wellknown import enum_name

__all__ = ["decode_lb_policy"]

_ENUM_NAMES = {
    cluster_pb2.Cluster.ROUND_ROBIN: "round_robin",
    cluster_pb2.Cluster.RANDOM: "random",
    cluster_pb2.Cluster.LEAST_REQUEST: "least_request",
    cluster_pb2.Cluster.RING_HASH: "ring_hash",
    cluster_pb2.Cluster.MAGLEV: "maglev",
}
_MAX_DEPTH = 16  # gRPC's limit on nested policy configs


def decode_lb_policy(cluster: Any) -> LbPolicy:
    """The cluster's policy, raising `Invalid` when none is usable."""
    if len(cluster.load_balancing_policy.policies):
        with at("load_balancing_policy"):
            return _first_usable(cluster.load_balancing_policy, 0)
    name = _ENUM_NAMES.get(cluster.lb_policy)
    if cluster.lb_policy == cluster_pb2.Cluster.LOAD_BALANCING_POLICY_CONFIG:
        raise Invalid("load_balancing_policy.policies", "lb_policy says to use it, but it is empty")
    if name is None:
        raise Invalid(
            "lb_policy",
            f"{enum_name(cluster_pb2.Cluster.LbPolicy, cluster.lb_policy)} is not supported",
        )
    if registry.get(name) is None:
        raise Invalid("lb_policy", f"no registered policy {name!r} ({_registered()})")
    return LbPolicy(name, legacy_options(cluster, name))


def _registered() -> str:
    names = sorted(registry.names())
    return "registered: " + (", ".join(names) if names else "none")


def _first_usable(lbp: Any, depth: int) -> LbPolicy:
    if depth >= _MAX_DEPTH:
        raise Invalid("", f"policies nested more than {_MAX_DEPTH} deep")
    skipped: list[str] = []
    for i, entry in enumerate(lbp.policies):
        with at("policies", i), at("typed_extension_config"), at("typed_config"):
            config = entry.typed_extension_config.typed_config
            type_url, struct = configured_type(config)
            if type_url == WRR_LOCALITY:
                inner = _unpack(config, struct, wrr_locality_pb2.WrrLocality)
                with at("endpoint_picking_policy"):
                    return _first_usable(inner.endpoint_picking_policy, depth + 1)
            name = LB_POLICIES.get(type_url)
            if name is None and struct is not None:
                name = type_url.rsplit("/", 1)[-1]
            if name is None or registry.get(name) is None:
                skipped.append(name or type_url)
                continue
            cls = message_class_for(type_url)
            if cls is None:  # a custom policy: its TypedStruct is its options
                return LbPolicy(name, freeze(_struct_to_dict(struct)))
            return LbPolicy(name, typed_options(name, _unpack(config, struct, cls)))
    listed = ", ".join(repr(s) for s in skipped) or "nothing"
    raise Invalid("policies", f"no registered policy among {listed} ({_registered()})")


def _unpack(config: Any, struct: Any, cls: Any) -> Any:
    """The typed config as a `cls` message, from a plain `Any` or a `TypedStruct`."""
    message = cls()
    if struct is None:
        return unpack_into(config, message)
    try:
        json_format.ParseDict(_struct_to_dict(struct), message)
    except json_format.ParseError as exc:
        raise Invalid("value", f"not a valid {cls.DESCRIPTOR.full_name}: {exc}") from None
    return message


def _struct_to_dict(struct: Any) -> Any:
    try:
        return json_format.MessageToDict(struct)
    except (ValueError, TypeError) as exc:  # NaN or infinite numbers have no JSON form
        raise Invalid("value", str(exc)) from None
