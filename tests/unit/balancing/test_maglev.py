"""maglev: Envoy's table slot for slot, stability, weights, table size."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from sail.balancing import build_picker
from sail.balancing.maglev import MaglevPicker, build_table, is_prime, maglev_picker
from sail.errors import ConfigError, ResourceError
from sail.model import Cluster, Endpoint, LbPolicy
from sail.xds.codec import decode_cluster, parse_resource
from tests.unit.balancing.balancing_helpers import assert_shares, assignment, loc

KEYS = 10_000


def maglev(eps: list[Endpoint], **options: Any) -> MaglevPicker:
    picker = maglev_picker(eps, LbPolicy("maglev", tuple(sorted(options.items()))))
    assert isinstance(picker, MaglevPicker)
    return picker


def hosts(ports: range, **kw: Any) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", p, **kw) for p in ports]


def keys(n: int = KEYS, seed: int = 5) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


# --- Envoy's own test vectors (maglev_lb_test.cc) ------------------------------------------


def test_table_matches_envoy() -> None:
    eps = hosts(range(90, 96))
    picker = maglev(eps, table_size=7)
    expected = [2, 4, 0, 1, 5, 0, 3]
    assert [e.port - 90 for e in picker.table] == expected
    for i in range(21):  # pick = table[hash % 7]
        assert picker.pick(i) == eps[expected[i % 7]]


def test_table_ignores_endpoint_order() -> None:
    eps = hosts(range(90, 96))
    shuffled = eps[:]
    random.Random(1).shuffle(shuffled)
    assert maglev(shuffled, table_size=7).table == maglev(eps, table_size=7).table


def test_weighted_table_matches_envoy() -> None:
    eps = [Endpoint("127.0.0.1", 90, weight=1), Endpoint("127.0.0.1", 91, weight=2)]
    picker = maglev(eps, table_size=17)
    expected = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]
    assert [e.port - 90 for e in picker.table] == expected


def test_hostname_table_matches_envoy() -> None:
    eps = [Endpoint("127.0.0.1", p, hostname=str(p)) for p in range(90, 96)]
    picker = maglev(eps, table_size=7, use_hostname_for_hashing=True)
    assert [e.port - 90 for e in picker.table] == [2, 5, 0, 3, 4, 1, 0]


def test_build_table_returns_host_indexes() -> None:
    assert build_table(["127.0.0.1:90"], [7], 17) == [0] * 17


# --- weights, stability ---------------------------------------------------------------------


def test_default_table_size_and_weights_within_tolerance() -> None:
    eps = [Endpoint("10.0.0.1", 80 + i, weight=w) for i, w in enumerate([1, 2, 3, 4])]
    picker = maglev(eps)
    assert len(picker.table) == 65537
    slots = Counter(str(e.port) for e in picker.table)
    assert_shares(slots, {"80": 0.1, "81": 0.2, "82": 0.3, "83": 0.4}, tol=0.002)
    c = Counter(str(picker.pick(k).port) for k in keys())
    assert_shares(c, {"80": 0.1, "81": 0.2, "82": 0.3, "83": 0.4}, tol=0.02)


def test_the_same_key_always_gets_the_same_endpoint() -> None:
    eps = [Endpoint(f"10.1.0.{i}", 8080) for i in range(10)]
    a, b = maglev(eps, table_size=65537), maglev(eps[::-1], table_size=65537)
    for k in keys(2000):
        assert a.pick(k) == a.pick(k) == b.pick(k)


@pytest.mark.parametrize("n", [10, 20, 50])
def test_adding_one_endpoint_moves_about_one_in_n_keys(n: int) -> None:
    eps = [Endpoint(f"10.1.0.{i}", 8080) for i in range(n)]
    before, after = maglev(eps), maglev([*eps, Endpoint("10.1.1.1", 8080)])
    moved = [k for k in keys() if before.pick(k) != after.pick(k)]
    assert len(moved) <= 1.5 * KEYS / n
    # Most of them go to the newcomer; Maglev reshuffles a few others.
    to_new = sum(1 for k in moved if after.pick(k).address == "10.1.1.1")
    assert to_new >= 0.7 * len(moved)


def test_no_hash_picks_at_random() -> None:
    picker = maglev(hosts(range(90, 94)), table_size=65537)
    random.seed(9)
    c = Counter(str(picker.pick().port) for _ in range(8000))
    assert_shares(c, {str(p): 0.25 for p in range(90, 94)}, tol=0.04)


def test_through_build_picker() -> None:
    a = assignment(loc("a", [Endpoint(f"10.0.0.{i}", 80) for i in range(5)]))
    picker = build_picker(Cluster("c", lb_policy=LbPolicy("maglev", (("table_size", 131),))), a)
    assert isinstance(picker, MaglevPicker) and len(picker.table) == 131


# --- table size -------------------------------------------------------------------------------


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537) and is_prime(5_000_011) and not is_prime(65536)


@pytest.mark.parametrize("size", [8, 65536, 5_000_017, 1])
def test_table_size_must_be_a_small_enough_prime(size: int) -> None:
    with pytest.raises(ConfigError, match=f"table_size {size} is not a prime"):
        maglev(hosts(range(90, 92)), table_size=size)


def eds(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, **fields}


def decode(data: dict[str, Any]) -> Cluster:
    return decode_cluster(parse_resource("Cluster", data))


def test_maglev_cluster_is_accepted() -> None:
    assert decode(eds(lb_policy="MAGLEV")).lb_policy == LbPolicy("maglev")
    cluster = decode(eds(lb_policy="MAGLEV", maglev_lb_config={"table_size": "131"}))
    assert cluster.lb_policy == LbPolicy("maglev", (("table_size", 131),))


def test_typed_maglev_with_hostnames() -> None:
    t = "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev"
    config = {
        "@type": t,
        "table_size": "7",
        "consistent_hashing_lb_config": {"use_hostname_for_hashing": True},
    }
    policies = {"policies": [{"typed_extension_config": {"name": "m", "typed_config": config}}]}
    cluster = decode(eds(load_balancing_policy=policies))
    assert cluster.lb_policy == LbPolicy(
        "maglev", (("table_size", 7), ("use_hostname_for_hashing", True))
    )


def test_non_prime_table_size_is_rejected_naming_the_field() -> None:
    with pytest.raises(ResourceError) as info:
        decode(eds(lb_policy="MAGLEV", maglev_lb_config={"table_size": "65536"}))
    assert info.value.reason == (
        "maglev_lb_config.table_size: 65536 is not a prime of at most 5000011"
    )
