from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from sail.balancing import registry
from sail.balancing.random_policy import UniformRandomPicker, WeightedRandomPicker, random_picker
from sail.errors import NoHealthyUpstream
from sail.model import Endpoint, LbPolicy
from tests.unit.balancing.balancing_helpers import assert_shares, counts, endpoints, weight_shares

POLICY = LbPolicy("random")


def weighted(weights: list[int]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.0.0.{i}", 80, weight=w) for i, w in enumerate(weights))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)


def test_registered() -> None:
    assert registry.get("random") is random_picker


def test_uniform_fast_path() -> None:
    eps = endpoints("10.0.0", 10)
    picker = random_picker(eps, POLICY)
    assert isinstance(picker, UniformRandomPicker)
    assert_shares(counts(picker, 100_000), {e.address: 0.1 for e in eps}, 0.005)


@pytest.mark.parametrize("weights", [[1, 2, 3, 4], [1, 100], [7, 3]])
def test_weighted_shares(weights: list[int]) -> None:
    eps = weighted(weights)
    picker = random_picker(eps, POLICY)
    assert isinstance(picker, WeightedRandomPicker)
    assert_shares(counts(picker, 100_000), weight_shares(eps), 0.01)


def test_many_endpoints_random_weights() -> None:
    rng = random.Random(5)
    eps = weighted([rng.randint(1, 1000) for _ in range(1000)])
    n = 200_000
    c = counts(random_picker(eps, POLICY), n)
    want = weight_shares(eps)
    assert sum(abs(c[a] / n - s) for a, s in want.items()) / 2 < 0.05


def test_seeding_the_module_generator_reproduces_picks() -> None:
    picker = random_picker(weighted([1, 2, 3]), POLICY)
    random.seed(99)
    first = [picker.pick() for _ in range(20)]
    random.seed(99)
    assert [picker.pick() for _ in range(20)] == first


def test_single_endpoint() -> None:
    (only,) = eps = endpoints("10.0.0", 1)
    assert {random_picker(eps, POLICY).pick() for _ in range(10)} == {only}


def test_empty_endpoints_give_an_unavailable_picker() -> None:
    with pytest.raises(NoHealthyUpstream):
        random_picker((), POLICY).pick()


def test_threads() -> None:
    eps = weighted([1, 3])
    picker = random_picker(eps, POLICY)
    results: list[Counter[str]] = []

    def work() -> None:
        results.append(counts(picker, 20_000))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert_shares(sum(results, Counter()), weight_shares(eps), 0.01)
