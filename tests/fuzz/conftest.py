"""Hypothesis profiles of the fuzz suite, chosen by `SAIL_FUZZ_PROFILE` (default `ci`).

* `ci` - about 1,850 cases over the whole suite (each test's `scale` times 120), in
  about 45 s on a busy 2-core machine, derandomized so a run is repeatable and CI is never
  flaky; what `make test` runs.
* `long` - about 100,500 cases (`scale` times 6,700), a fresh random seed each run
  (`make fuzz-long`): some 50 minutes on one busy core, half that split over two.

The profile is applied to the fuzz tests only (each takes `tests.fuzz.mutate.fuzz_settings`),
never loaded globally, so the rest of the suite's property tests keep their own settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_SLOW = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_SLOW,
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=6_700,
    deadline=None,
    database=None,
    suppress_health_check=_SLOW,
    print_blob=True,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In the long profile a fuzz test runs for many minutes: lift the suite's per-test
    timeout (pyproject's `timeout`) for this folder's tests only."""
    if os.environ.get("SAIL_FUZZ_PROFILE", "ci") != "long":
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.timeout(0))
