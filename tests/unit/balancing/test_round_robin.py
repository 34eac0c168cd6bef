from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

import pytest

from sail.balancing import registry
from sail.balancing.round_robin import GoldenRatioPicker, RoundRobinPicker, round_robin_picker
from sail.balancing.schedule import SCHEDULE_LIMIT, edf_schedule, reduce_weights
from sail.errors import NoHealthyUpstream
from sail.model import Endpoint, LbPolicy
from tests.unit.balancing.balancing_helpers import assert_shares, counts, endpoints, weight_shares

POLICY = LbPolicy("round_robin")


def weighted(weights: list[int]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.0.0.{i}", 80, weight=w) for i, w in enumerate(weights))


def test_registered_under_both_names() -> None:
    assert registry.get("round_robin") is round_robin_picker
    assert registry.get("weighted_round_robin") is round_robin_picker


def test_equal_weights_rotate_exactly() -> None:
    eps = endpoints("10.0.0", 5)
    picker = round_robin_picker(eps, POLICY)
    picks = [picker.pick() for _ in range(15)]
    start = eps.index(picks[0])
    assert picks == [eps[(start + i) % 5] for i in range(15)]


def test_equal_weights_other_than_one_still_plain_rotation() -> None:
    picker = round_robin_picker(endpoints("10.0.0", 3, weight=7), POLICY)
    assert isinstance(picker, RoundRobinPicker)
    assert len(picker._schedule) == 3


def test_starts_at_a_random_offset() -> None:
    eps = endpoints("10.0.0", 10)
    firsts = {round_robin_picker(eps, POLICY).pick() for _ in range(50)}
    assert len(firsts) > 3


@pytest.mark.parametrize(
    "weights",
    [[1, 2, 3, 4], [1, 100], [5, 1], [3, 3, 1], [100, 200, 300]],
)
def test_weighted_shares_within_2_percent(weights: list[int]) -> None:
    eps = weighted(weights)
    assert_shares(counts(round_robin_picker(eps, POLICY), 10_000), weight_shares(eps), 0.02)


def test_many_endpoints_random_weights_within_2_percent() -> None:
    rng = random.Random(3)
    eps = weighted([rng.randint(1, 100) for _ in range(40)])
    c = counts(round_robin_picker(eps, POLICY), 10_000)
    want = weight_shares(eps)
    assert_shares(c, want, 0.02 * max(want.values()))
    # Stronger: from any starting point, no endpoint strays 2 picks from its exact share.
    assert max(abs(c[a] - 10_000 * s) for a, s in want.items()) < 2


def test_each_cycle_is_exact() -> None:
    eps = weighted([1, 2, 3, 4])
    picker = round_robin_picker(eps, POLICY)
    for _ in range(3):
        c = Counter(picker.pick() for _ in range(10))
        assert [c[e] for e in eps] == [1, 2, 3, 4]


def test_schedule_is_smooth() -> None:
    heavy, light = weighted([100, 1])
    schedule = edf_schedule([heavy, light], [100, 1])
    assert schedule.count(light) == 1
    # The light endpoint comes mid-cycle, not first or last: no burst at either end.
    assert 40 < schedule.index(light) < 60
    eps = weighted([1, 2, 3, 4])
    seq = [eps.index(e) for e in edf_schedule(eps, [1, 2, 3, 4])]
    assert seq == [3, 2, 1, 3, 0, 2, 3, 1, 2, 3]


def test_weights_are_divided_by_their_gcd() -> None:
    assert reduce_weights([100, 200, 300]) == [1, 2, 3]
    picker = round_robin_picker(weighted([100, 200]), POLICY)
    assert isinstance(picker, RoundRobinPicker)
    assert len(picker._schedule) == 3


def test_weight_zero_counts_as_one() -> None:
    eps = weighted([0, 1])
    assert_shares(counts(round_robin_picker(eps, POLICY), 1000), {e.address: 0.5 for e in eps})


def test_huge_cycle_falls_back_to_golden_ratio_picker() -> None:
    weights = [300_007, 200_003, 100_003, 400_009]
    assert sum(weights) > SCHEDULE_LIMIT
    eps = weighted(weights)
    picker = round_robin_picker(eps, POLICY)
    assert isinstance(picker, GoldenRatioPicker)
    assert_shares(counts(picker, 10_000), weight_shares(eps), 0.02 * 0.4)


def test_golden_ratio_picker_tracks_many_uneven_weights() -> None:
    rng = random.Random(11)
    eps = weighted([rng.randint(1, 10_000) for _ in range(200)])
    picker = round_robin_picker(eps, POLICY)
    assert isinstance(picker, GoldenRatioPicker)
    n = 100_000
    c = counts(picker, n)
    want = weight_shares(eps)
    # Low discrepancy: each endpoint is within a handful of picks of its exact share.
    assert max(abs(c[a] - n * s) for a, s in want.items()) < 10
    # Total variation distance (half the L1 distance) well under 1 %.
    assert sum(abs(c[a] / n - s) for a, s in want.items()) / 2 < 0.01


def test_golden_ratio_picker_exact_at_huge_counts() -> None:
    picker = GoldenRatioPicker(weighted([1, 3]), [1, 3])
    picker._counter = iter(range(2**70, 2**70 + 4000))  # type: ignore[assignment]
    c = counts(picker, 4000)
    assert abs(c["10.0.0.0"] - 1000) < 5


def test_empty_endpoints_give_an_unavailable_picker() -> None:
    with pytest.raises(NoHealthyUpstream):
        round_robin_picker((), POLICY).pick()


def test_hash_key_is_ignored() -> None:
    picker = round_robin_picker(endpoints("10.0.0", 3), POLICY)
    assert len({picker.pick(hash_key=42) for _ in range(3)}) == 3


@pytest.mark.parametrize("weights", [[1] * 8, [1, 2, 3, 4, 5, 6, 7, 8]])
def test_threads_share_one_counter_exactly(weights: list[int]) -> None:
    eps = weighted(weights)
    picker = round_robin_picker(eps, POLICY)
    per_thread = sum(weights) * 1000
    results: list[Counter[Endpoint]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait()
            results.append(Counter(picker.pick() for _ in range(per_thread)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = sum(results, Counter())
    # Every position of the shared counter is used exactly once: exact weighted shares.
    assert [total[e] for e in eps] == [w * 8000 for w in weights]


def test_asyncio_tasks_and_threads_at_once() -> None:
    eps = endpoints("10.0.0", 4)
    picker = round_robin_picker(eps, POLICY)

    async def task() -> list[Endpoint]:
        out = []
        for _ in range(500):
            out.append(picker.pick())
            await asyncio.sleep(0)
        return out

    async def main() -> list[list[Endpoint]]:
        in_threads = [asyncio.to_thread(lambda: [picker.pick() for _ in range(500)])]
        return list(await asyncio.gather(*(task() for _ in range(7)), *in_threads))

    picks = Counter(e for batch in asyncio.run(main()) for e in batch)
    assert [picks[e] for e in eps] == [1000] * 4
