"""Envoy's priority load arithmetic, checked against the tables of Envoy's docs
(arch_overview/upstream/load_balancing/priority and .../panic_threshold), 100 hosts a level."""

from __future__ import annotations

import pytest

from sail.balancing.priority import LevelHealth, level_health, priority_load


def pct(*healthy: int, hosts: int = 100) -> list[LevelHealth]:
    return [LevelHealth(h, hosts) for h in healthy]


@pytest.mark.parametrize(
    ("p0", "want"),
    [(100, (100, 0)), (72, (100, 0)), (71, (99, 1)), (50, (70, 30)), (25, (35, 65)), (0, (0, 100))],
)
def test_p1_fully_healthy(p0: int, want: tuple[int, int]) -> None:
    load = priority_load(pct(p0, 100))
    assert load.loads == want
    assert load.panic == (False, False)
    assert load.normalized_total_health == 100


@pytest.mark.parametrize(
    ("p0", "p1", "want"),
    [
        (100, 100, (100, 0)),
        (72, 72, (100, 0)),
        (71, 71, (99, 1)),
        (50, 50, (70, 30)),
        (25, 100, (35, 65)),
    ],
)
def test_two_levels(p0: int, p1: int, want: tuple[int, int]) -> None:
    assert priority_load(pct(p0, p1)).loads == want


@pytest.mark.parametrize(
    ("levels", "want"),
    [
        ((100, 100, 100), (100, 0, 0)),
        ((72, 72, 100), (100, 0, 0)),
        ((71, 71, 100), (99, 1, 0)),
        ((50, 50, 100), (70, 30, 0)),
        ((25, 100, 100), (35, 65, 0)),
        ((25, 25, 100), (35, 35, 30)),
    ],
)
def test_three_levels(levels: tuple[int, int, int], want: tuple[int, ...]) -> None:
    assert priority_load(pct(*levels)).loads == want


def test_rounding_leftover_goes_to_first_healthy_level() -> None:
    # Healths 35/35/28, normalized 98: Envoy's code floors each share (35, 35, 28) and gives
    # the 2 left over to P0. The docs table (which leaves panic aside) shows 36/36/28.
    load = priority_load(pct(25, 25, 20), panic_threshold=0)
    assert load.normalized_total_health == 98
    assert load.loads == (37, 35, 28)
    # With the default threshold every level is below 50 % healthy: total panic, by hosts.
    panicked = priority_load(pct(25, 25, 20))
    assert panicked.panic == (True, True, True)
    assert panicked.loads == (34, 33, 33)


def test_health_is_integer_and_counts_hosts() -> None:
    assert level_health(LevelHealth(2, 3)) == 93  # 140 * 2 // 3
    assert level_health(LevelHealth(5, 7)) == 100
    assert level_health(LevelHealth(0, 0)) == 0


@pytest.mark.parametrize(
    ("factor", "want"), [(100, (50, 50)), (140, (70, 30)), (200, (100, 0)), (120, (60, 40))]
)
def test_overprovisioning_factor(factor: int, want: tuple[int, int]) -> None:
    assert priority_load(pct(50, 100), overprovisioning_factor=factor).loads == want


def test_no_panic_while_normalized_total_health_is_100() -> None:
    load = priority_load(pct(5, 100))  # P0 5 % healthy: far below 50, but P1 covers it
    assert load.loads == (7, 93)
    assert load.panic == (False, False)


def test_total_panic_spreads_by_host_count() -> None:
    load = priority_load(pct(25, 25))  # the docs' row: both in panic, 50/50, total 70
    assert load.normalized_total_health == 70
    assert load.panic == (True, True)
    assert load.total_panic
    assert load.loads == (50, 50)
    uneven = priority_load([LevelHealth(1, 10), LevelHealth(2, 30)])
    assert uneven.loads == (25, 75)


def test_partial_panic() -> None:
    load = priority_load(pct(5, 65))  # the docs' row: P0 in panic, P1 not, total 98
    assert load.normalized_total_health == 98
    assert load.panic == (True, False)
    assert load.loads == (8, 92)  # docs: 7/93 (see the rounding test)


def test_everything_down_is_total_panic() -> None:
    load = priority_load([LevelHealth(0, 4), LevelHealth(0, 4)])
    assert load.total_panic
    assert load.loads == (50, 50)


def test_threshold_zero_disables_panic() -> None:
    load = priority_load([LevelHealth(0, 4), LevelHealth(0, 4)], panic_threshold=0)
    assert load.loads == (0, 0)
    assert load.panic == (False, False)
    low = priority_load(pct(10, 10), panic_threshold=0)
    assert low.panic == (False, False)
    assert low.loads == (50, 50)


def test_threshold_above_100_is_capped() -> None:
    assert priority_load(pct(60, 60), panic_threshold=500).panic == (False, False)  # 168 -> 100
    assert priority_load(pct(30, 30), panic_threshold=500).panic == (True, True)


def test_empty_levels() -> None:
    load = priority_load([LevelHealth(0, 0), LevelHealth(4, 4)])
    assert load.loads == (0, 100)
    assert priority_load([LevelHealth(0, 0)]).loads == (0,)
