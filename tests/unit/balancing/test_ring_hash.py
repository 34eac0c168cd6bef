"""ring_hash: Envoy's ring point for point, stability, weights, options."""

from __future__ import annotations

import random
from bisect import bisect_left
from collections import Counter
from typing import Any

import pytest

from sail.balancing import build_picker
from sail.balancing.hashing import murmur_hash2
from sail.balancing.ring_hash import RingHashPicker, build_ring, ring_hash_picker
from sail.errors import ConfigError, ResourceError
from sail.model import Cluster, Endpoint, LbPolicy
from sail.xds.codec import decode_cluster, parse_resource
from tests.unit.balancing.balancing_helpers import assert_shares, assignment, loc

KEYS = 10_000
U64 = (1 << 64) - 1


def hosts(ports: range, **kw: Any) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", p, **kw) for p in ports]


def ring(eps: list[Endpoint], **options: Any) -> RingHashPicker:
    picker = ring_hash_picker(eps, LbPolicy("ring_hash", tuple(sorted(options.items()))))
    assert isinstance(picker, RingHashPicker)
    return picker


def keys(n: int = KEYS, seed: int = 5) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


# --- Envoy's own test vectors (ring_hash_lb_test.cc) -----------------------------------------


def test_ring_points_match_envoy() -> None:
    eps = hosts(range(90, 96))
    picker = ring(eps, minimum_ring_size=12)
    assert [(h, e.port) for h, e in picker.ring] == [
        (833437586790550860, 94),
        (928266305478181108, 92),
        (1033482794131418490, 90),
        (3551244743356806947, 95),
        (3851675632748031481, 93),
        (5583722120771150861, 91),
        (6311230543546372928, 91),
        (7700377290971790572, 93),
        (13144177310400110813, 95),
        (13444792449719432967, 92),
        (15516499411664133160, 94),
        (16117243373044804889, 90),
    ]
    assert picker.pick(0).port == 94
    assert picker.pick(U64).port == 94  # past the last point: wraps to the first
    assert picker.pick(3551244743356806947).port == 95  # a point belongs to its own host
    assert picker.pick(3551244743356806948).port == 93
    assert picker.pick(16117243373044804880).port == 90


def test_murmur_ring_matches_envoy() -> None:
    eps = hosts(range(80, 86))
    picker = ring(eps, minimum_ring_size=12, hash_function="MURMUR_HASH_2")
    assert [e.port for _, e in picker.ring] == [85, 83, 84, 81, 82, 84, 81, 82, 83, 80, 85, 80]
    assert picker.ring[0][0] == 1358027074129602068
    assert picker.pick(1358027074129602069).port == 83
    assert picker.pick(10150910876324007730).port == 82


def test_hostname_ring_matches_envoy() -> None:
    eps = [Endpoint("127.0.0.1", p, hostname=str(p)) for p in range(90, 96)]
    picker = ring(eps, minimum_ring_size=12, use_hostname_for_hashing=True)
    assert [(h, e.port) for h, e in picker.ring[:3]] == [
        (1975508444536362413, 95),
        (2376063919839173711, 95),
        (2386806903309390596, 93),
    ]
    assert picker.pick(7225015537174310577).port == 92
    assert picker.pick(6803900775736438537).port == 93


def test_murmur_hash2_matches_envoy() -> None:
    assert [murmur_hash2(s) for s in ("foo", "bar", "foo\nbar", "lyft", "")] == [
        9631199822919835226,
        11474628671133349555,
        16306510975912980159,
        12847078931730529320,
        6142509188972423790,
    ]


# --- ring size and weights ----------------------------------------------------------------


def test_ring_size_follows_minimum_and_maximum() -> None:
    assert len(ring(hosts(range(90, 96))).ring) == 1026  # ceil(1024 / 6) * 6
    assert len(ring(hosts(range(90, 96)), minimum_ring_size=64, maximum_ring_size=100).ring) == 66
    # A light endpoint would need 2002 entries for a whole one of its own: capped at 2000
    # (the running sums of the weights round up to 2000.0000000000002, so 2001, as in Envoy).
    heavy = [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, weight=1000)]
    assert len(ring(heavy, maximum_ring_size=2000).ring) == 2001
    _, owners = build_ring([f"10.0.{i >> 8}.{i & 255}:80" for i in range(10_000)], [1] * 10_000)
    assert len(owners) == 10_000  # one entry each: the lightest host gets a whole one


def test_weights_scale_the_number_of_entries_and_the_shares() -> None:
    eps = [Endpoint("10.0.0.1", 80 + i, weight=w) for i, w in enumerate([1, 2, 3, 4])]
    picker = ring(eps)
    entries = Counter(e.port for _, e in picker.ring)
    assert [entries[80 + i] for i in range(4)] == [103, 206, 309, 412]  # scale 1030
    c = Counter(str(picker.pick(k).port) for k in keys())
    assert_shares(c, {"80": 0.1, "81": 0.2, "82": 0.3, "83": 0.4}, tol=0.03)


def test_no_hash_picks_at_random() -> None:
    picker = ring(hosts(range(90, 94)))
    random.seed(3)
    c = Counter(str(picker.pick().port) for _ in range(8000))
    assert_shares(c, {str(p): 0.25 for p in range(90, 94)}, tol=0.04)


# --- stability ----------------------------------------------------------------------------


def test_the_same_key_always_gets_the_same_endpoint() -> None:
    eps = hosts(range(9000, 9010))
    a, b = ring(eps), ring(list(reversed(eps)))
    for k in keys(2000):
        assert a.pick(k) == a.pick(k) == b.pick(k)


def point(picker: RingHashPicker, key: int) -> int:
    """The hash of the ring point `key` lands on."""
    hashes = [h for h, _ in picker.ring]
    i = bisect_left(hashes, key)
    return hashes[i if i < len(hashes) else 0]


@pytest.mark.parametrize("n", [50, 100])
def test_adding_one_endpoint_moves_about_one_in_n_keys(n: int) -> None:
    # ceil(1024 / n) points each before and after: only the newcomer's arcs change hands.
    eps = [Endpoint(f"10.1.0.{i}", 8080) for i in range(n)]
    before = ring(eps)
    after = ring([*eps, Endpoint("10.1.1.1", 8080)])
    ks = keys()
    moved = [k for k in ks if before.pick(k) != after.pick(k)]
    assert 0.5 * KEYS / n <= len(moved) <= 1.5 * KEYS / n
    assert {after.pick(k).address for k in moved} == {"10.1.1.1"}


@pytest.mark.parametrize("n", [10, 20])
def test_when_points_per_endpoint_shrink_the_dropped_points_move_too(n: int) -> None:
    """Envoy's ring gives each endpoint ceil(1024 / n) points, so adding one to 10 drops
    every endpoint from 103 to 94 points: the keys of dropped points move as well, about
    2/N in all. A key moves to an old endpoint only if the point it sat on was dropped."""
    eps = [Endpoint(f"10.1.0.{i}", 8080) for i in range(n)]
    before = ring(eps)
    after = ring([*eps, Endpoint("10.1.1.1", 8080)])
    after_points = {h for h, _ in after.ring}
    moved = 0
    for k in keys():
        if before.pick(k) == after.pick(k):
            continue
        moved += 1
        if after.pick(k).address != "10.1.1.1":
            assert point(before, k) not in after_points
    assert moved <= 2.5 * KEYS / n


def test_removing_one_endpoint_moves_only_its_keys_and_those_of_new_points() -> None:
    eps = [Endpoint(f"10.1.0.{i}", 8080) for i in range(20)]
    before, after = ring(eps), ring(eps[1:])
    before_points = {h for h, _ in before.ring}
    for k in keys(5000):
        if before.pick(k) != eps[0] and after.pick(k) != before.pick(k):
            # ceil(1024 / 19) = 54 > 52 points each: the key now sits on a new point.
            assert point(after, k) not in before_points


def test_a_hash_keeps_its_endpoint_through_build_picker_with_localities() -> None:
    a = assignment(
        loc("a", [Endpoint(f"10.0.0.{i}", 80) for i in range(5)]),
        loc("b", [Endpoint(f"10.0.1.{i}", 80) for i in range(5)], weight=2),
    )
    cluster = Cluster("reviews", lb_policy=LbPolicy("ring_hash"))
    first, second = build_picker(cluster, a), build_picker(cluster, a)
    for k in keys(2000):
        assert first.pick(k) == second.pick(k)
    by_zone = Counter(first.pick(k).address.split(".")[2] for k in keys())
    assert_shares(by_zone, {"0": 1 / 3, "1": 2 / 3}, tol=0.03)


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"minimum_ring_size": 0}, "minimum_ring_size 0"),
        ({"maximum_ring_size": 9_000_000}, "maximum_ring_size 9000000"),
        ({"minimum_ring_size": 20, "maximum_ring_size": 10}, r"minimum_ring_size \(20\) >"),
        ({"hash_function": "SHA1"}, "hash_function 'SHA1'"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ring(hosts(range(90, 92)), **options)


def eds(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, **fields}


def decode(data: dict[str, Any]) -> Cluster:
    return decode_cluster(parse_resource("Cluster", data))


def test_ring_hash_cluster_is_accepted_with_its_options() -> None:
    cluster = decode(
        eds(
            lb_policy="RING_HASH",
            ring_hash_lb_config={"minimum_ring_size": "12", "hash_function": "MURMUR_HASH_2"},
            common_lb_config={"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}},
        )
    )
    assert cluster.lb_policy == LbPolicy(
        "ring_hash",
        (
            ("hash_function", "MURMUR_HASH_2"),
            ("minimum_ring_size", 12),
            ("use_hostname_for_hashing", True),
        ),
    )
    picker = build_picker(cluster, assignment(loc("a", hosts(range(80, 86)))))
    assert isinstance(picker, RingHashPicker) and len(picker.ring) == 12


def test_typed_ring_hash_options_decode() -> None:
    t = "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
    config = {
        "@type": t,
        "maximum_ring_size": "4096",
        "hash_function": "XX_HASH",
        "consistent_hashing_lb_config": {"use_hostname_for_hashing": True},
    }
    policies = {"policies": [{"typed_extension_config": {"name": "r", "typed_config": config}}]}
    cluster = decode(eds(load_balancing_policy=policies))
    assert cluster.lb_policy == LbPolicy(
        "ring_hash", (("maximum_ring_size", 4096), ("use_hostname_for_hashing", True))
    )


def test_ring_size_out_of_range_is_rejected_naming_the_field() -> None:
    with pytest.raises(ResourceError) as info:
        decode(eds(lb_policy="RING_HASH", ring_hash_lb_config={"maximum_ring_size": "9000000"}))
    assert info.value.reason == "ring_hash_lb_config.maximum_ring_size: 9000000 is not in 1-8388608"


def test_ring_hash_options_round_trip_through_the_encoder() -> None:
    from sail.xds.codec.encode import encode_cluster

    policy = LbPolicy("ring_hash", (("hash_function", "MURMUR_HASH_2"), ("minimum_ring_size", 64)))
    cluster = Cluster("c", lb_policy=policy)
    assert decode_cluster(encode_cluster(cluster)).lb_policy == policy
