"""The build-time caps on hash balancers: ring entries (gRFC A42's cap) and Maglev slots.

Envoy's limits are NACKs at decode; sizes within them are kept as sent, and the balancer
clamps what it builds to the process-wide cap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest

from sail.balancing import build_picker
from sail.balancing import maglev as maglev_module
from sail.balancing import ring_hash as ring_module
from sail.balancing.hashing import xxh64
from sail.balancing.maglev import MaglevPicker, maglev_picker, set_table_size_cap, table_size_cap
from sail.balancing.ring_hash import (
    RingHashPicker,
    build_ring,
    ring_hash_picker,
    ring_size_cap,
    set_ring_size_cap,
)
from sail.errors import ResourceError
from sail.model import Cluster, Endpoint, LbPolicy
from sail.xds.codec import decode_cluster, parse_resource
from tests.unit.balancing.balancing_helpers import assignment, loc

EIGHT_M = 8_388_608
RING_HASH = "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
MAGLEV = "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev"


@pytest.fixture(autouse=True)
def default_caps() -> Iterator[None]:
    set_ring_size_cap()
    set_table_size_cap()
    yield
    set_ring_size_cap()
    set_table_size_cap()


def hosts(n: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.{i >> 8}.{i & 255}", 8080) for i in range(n)]


def ring(eps: list[Endpoint], **options: Any) -> RingHashPicker:
    picker = ring_hash_picker(eps, LbPolicy("ring_hash", tuple(sorted(options.items()))))
    assert isinstance(picker, RingHashPicker)
    return picker


def maglev(eps: list[Endpoint], **options: Any) -> MaglevPicker:
    picker = maglev_picker(eps, LbPolicy("maglev", tuple(sorted(options.items()))))
    assert isinstance(picker, MaglevPicker)
    return picker


def keys(n: int = 2000, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


# --- ring: the cap applies ---------------------------------------------------------------------


def test_the_default_cap_is_grpcs() -> None:
    assert ring_size_cap() == ring_module.DEFAULT_RING_SIZE_CAP == 4096


def test_an_8m_ring_request_is_built_at_the_cap() -> None:
    eps = hosts(6)
    picker = ring(eps, minimum_ring_size=EIGHT_M, maximum_ring_size=EIGHT_M)
    assert len(picker.ring) == 4096  # Envoy: 8388608 (ceil(8M / 6) * 6, clamped to 8M)
    hashes, owners = build_ring([e.authority for e in eps], [1] * 6, 4096, 4096)
    assert picker.ring == tuple(zip(hashes, [eps[i] for i in owners], strict=True))


def test_the_default_maximum_is_capped_too() -> None:
    # The lightest endpoint needs 5001 entries for a whole one of its own: Envoy (maximum 8M)
    # builds 5001; with the cap the maximum is 4096.
    eps = [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, weight=5000)]
    assert 4096 <= len(ring(eps).ring) <= 4097  # the running sums may round up by one
    set_ring_size_cap(EIGHT_M)
    assert len(ring(eps).ring) == 5001


def test_rings_below_the_cap_are_envoys() -> None:
    assert len(ring(hosts(6)).ring) == 1026  # ceil(1024 / 6) * 6
    assert len(ring(hosts(6), minimum_ring_size=2000).ring) == 2004


def test_raising_the_cap_allows_bigger_rings() -> None:
    set_ring_size_cap(20_000)
    assert ring_size_cap() == 20_000
    assert len(ring(hosts(6), minimum_ring_size=EIGHT_M).ring) == 20_000
    set_ring_size_cap()
    assert len(ring(hosts(6), minimum_ring_size=EIGHT_M).ring) == 4096


def test_the_cap_never_leaves_an_endpoint_off_the_ring() -> None:
    eps = hosts(5000)  # more than the cap: one entry each, as Envoy (gRPC would drop 904)
    picker = ring(eps)
    assert len(picker.ring) == 5000
    assert {e for _, e in picker.ring} == set(eps)


@pytest.mark.parametrize("bad", [0, EIGHT_M + 1, -1, True, 4096.0, "4096"])
def test_a_bad_cap_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="ring size cap"):
        set_ring_size_cap(bad)
    assert ring_size_cap() == 4096


# --- ring: picks stay consistent ---------------------------------------------------------------


def test_the_same_key_gets_the_same_endpoint_across_capped_rebuilds() -> None:
    eps = hosts(10)
    first = ring(eps, minimum_ring_size=EIGHT_M)
    again = ring(list(eps), minimum_ring_size=EIGHT_M)
    set_ring_size_cap(EIGHT_M)
    set_ring_size_cap()
    after_a_round_trip = ring(eps, minimum_ring_size=EIGHT_M)
    for k in keys():
        assert first.pick(k) == again.pick(k) == after_a_round_trip.pick(k)


def test_a_capped_ring_over_reordered_endpoints_moves_only_a_few_keys() -> None:
    # 4096 entries over 10 endpoints is 409.6 each: the running sums give 409 or 410 by
    # position, as in Envoy and gRPC, so a reorder moves the keys of a few entries only.
    eps = hosts(10)
    first = ring(eps, minimum_ring_size=EIGHT_M)
    reordered = ring(list(reversed(eps)), minimum_ring_size=EIGHT_M)
    ks = keys(20_000)
    moved = sum(first.pick(k) != reordered.pick(k) for k in ks)
    assert 0 < moved <= 0.005 * len(ks)


def test_the_same_key_gets_the_same_endpoint_through_build_picker() -> None:
    cluster = Cluster("c", lb_policy=LbPolicy("ring_hash", (("minimum_ring_size", EIGHT_M),)))
    a = assignment(loc("a", hosts(8)))
    first, second = build_picker(cluster, a), build_picker(cluster, a)
    assert isinstance(first, RingHashPicker) and len(first.ring) == 4096
    for k in keys():
        assert first.pick(k) == second.pick(k)


def reference_ring(keys_: list[str], weights: list[int], low: int, high: int) -> list[int]:
    """Envoy's loop, entry by entry: the owners in ring order."""
    total = sum(weights)
    normalized = [w / total for w in weights]
    least = min(normalized)
    scale = min(math.ceil(least * low) / least, float(high))
    entries: list[tuple[int, int]] = []
    current = target = 0.0
    for index, (key, weight) in enumerate(zip(keys_, normalized, strict=True)):
        target += scale * weight
        i = 0
        while current < target:
            entries.append((xxh64(f"{key}_{i}"), index))
            i += 1
            current += 1
    entries.sort()
    return [owner for _, owner in entries]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_ring_is_envoys_entry_for_entry_with_any_weights(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    names = [f"10.2.0.{i}:{rng.randint(1, 65535)}" for i in range(n)]
    weights = [rng.randint(1, 50) for _ in range(n)]
    low = rng.randint(1, 3000)
    high = rng.randint(low, 4096)
    hashes, owners = build_ring(names, weights, low, high)
    assert owners == reference_ring(names, weights, low, high)
    assert list(hashes) == sorted(hashes)


# --- ring: Envoy's limits are NACKs, at decode -------------------------------------------------


def eds(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, **fields}


def decode(data: dict[str, Any]) -> Cluster:
    return decode_cluster(parse_resource("Cluster", data))


def typed(config: dict[str, Any]) -> dict[str, Any]:
    entry = {"typed_extension_config": {"name": "p", "typed_config": config}}
    return eds(load_balancing_policy={"policies": [entry]})


def test_an_8m_ring_is_accepted_as_sent_and_built_at_the_cap() -> None:
    cluster = decode(eds(lb_policy="RING_HASH", ring_hash_lb_config={
        "minimum_ring_size": str(EIGHT_M), "maximum_ring_size": str(EIGHT_M),
    }))
    assert cluster.lb_policy == LbPolicy(
        "ring_hash", (("maximum_ring_size", EIGHT_M), ("minimum_ring_size", EIGHT_M))
    )
    picker = build_picker(cluster, assignment(loc("a", hosts(3))))
    assert isinstance(picker, RingHashPicker) and len(picker.ring) == 4096


@pytest.mark.parametrize("field", ["minimum_ring_size", "maximum_ring_size"])
def test_a_ring_size_above_8m_is_a_nack_naming_the_field(field: str) -> None:
    with pytest.raises(ResourceError) as info:
        decode(eds(lb_policy="RING_HASH", ring_hash_lb_config={field: str(EIGHT_M + 1)}))
    assert info.value.reason == f"ring_hash_lb_config.{field}: 8388609 is not in 1-8388608"
    with pytest.raises(ResourceError) as info:
        decode(typed({"@type": RING_HASH, field: str(EIGHT_M + 1)}))
    assert info.value.reason.endswith(f"{field}: 8388609 is not in 1-8388608")
    assert info.value.reason.startswith("load_balancing_policy.policies[0]")


def test_a_minimum_above_the_maximum_is_a_nack_even_when_both_are_above_the_cap() -> None:
    with pytest.raises(ResourceError) as info:
        decode(eds(lb_policy="RING_HASH", ring_hash_lb_config={
            "minimum_ring_size": "10000", "maximum_ring_size": "5000",
        }))
    assert info.value.reason == (
        "ring_hash_lb_config.minimum_ring_size: 10000 is above maximum_ring_size 5000"
    )


# --- maglev: the cap applies -------------------------------------------------------------------


def test_the_default_table_cap_is_envoys_default_size() -> None:
    assert table_size_cap() == maglev_module.DEFAULT_TABLE_SIZE_CAP == 65537


def test_a_table_above_the_cap_is_built_at_the_cap() -> None:
    eps = hosts(5)
    big = maglev(eps, table_size=5_000_011)
    assert len(big.table) == 65537
    assert big.table == maglev(eps).table  # the capped table is the 65537-slot one


def test_lowering_and_raising_the_table_cap() -> None:
    set_table_size_cap(131)
    assert len(maglev(hosts(3)).table) == 131
    assert len(maglev(hosts(3), table_size=7).table) == 7  # below the cap: as configured
    set_table_size_cap(65537)
    assert len(maglev(hosts(3)).table) == 65537


@pytest.mark.parametrize("bad", [65536, 5_000_017, 1, 0, True, 65537.0])
def test_a_bad_table_cap_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="table size cap"):
        set_table_size_cap(bad)
    assert table_size_cap() == 65537


def test_the_same_key_gets_the_same_endpoint_across_capped_maglev_rebuilds() -> None:
    eps = hosts(10)
    first = maglev(eps, table_size=5_000_011)
    again = maglev(list(reversed(eps)), table_size=5_000_011)
    for k in keys():
        assert first.pick(k) == again.pick(k)


# --- maglev: Envoy's limits are NACKs, at decode -----------------------------------------------


def test_envoys_largest_table_is_accepted_as_sent_and_built_at_the_cap() -> None:
    cluster = decode(eds(lb_policy="MAGLEV", maglev_lb_config={"table_size": "5000011"}))
    assert cluster.lb_policy == LbPolicy("maglev", (("table_size", 5_000_011),))
    picker = build_picker(cluster, assignment(loc("a", hosts(3))))
    assert isinstance(picker, MaglevPicker) and len(picker.table) == 65537


@pytest.mark.parametrize("size", [5_000_017, 5_000_012])
def test_a_table_above_envoys_limit_is_a_nack_naming_the_field(size: int) -> None:
    with pytest.raises(ResourceError) as info:
        decode(eds(lb_policy="MAGLEV", maglev_lb_config={"table_size": str(size)}))
    assert info.value.reason == (
        f"maglev_lb_config.table_size: {size} is not a prime of at most 5000011"
    )
    with pytest.raises(ResourceError) as info:
        decode(typed({"@type": MAGLEV, "table_size": str(size)}))
    assert info.value.reason.endswith(f"table_size: {size} is not a prime of at most 5000011")
