"""Envoy's locality weights, against the table of its docs
(arch_overview/upstream/load_balancing/locality_weight): X weight 1, Y weight 2, Y healthy."""

from __future__ import annotations

import pytest

from sail.balancing.locality import effective_locality_weight


@pytest.mark.parametrize(
    ("x_healthy", "x_share"), [(100, 33), (70, 33), (69, 32), (50, 26), (25, 15), (0, 0)]
)
def test_docs_table(x_healthy: int, x_share: int) -> None:
    x = effective_locality_weight(1, x_healthy, 100)
    y = effective_locality_weight(2, 100, 100)
    assert abs(100 * x / (x + y) - x_share) < 1


def test_formula() -> None:
    assert effective_locality_weight(3, 2, 4) == pytest.approx(3 * 0.7)
    assert effective_locality_weight(3, 4, 4) == 3
    assert effective_locality_weight(3, 2, 4, overprovisioning_factor=100) == pytest.approx(1.5)


def test_empty_or_weightless_localities_weigh_nothing() -> None:
    assert effective_locality_weight(5, 0, 0) == 0
    assert effective_locality_weight(0, 4, 4) == 0
    assert effective_locality_weight(5, 0, 4) == 0
