"""Request mirroring decisions: which clusters get a shadow copy, and the shadow Host."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sail.model import DirectResponse, FractionalPercent, MirrorPolicy, RouteAction
from sail.routing.mirror import mirrors, shadow_authority


def once(value: float) -> Callable[[], float]:
    calls: list[float] = []

    def rand() -> float:
        if calls:
            pytest.fail("rand() drawn twice for one request")
        calls.append(value)
        return value

    return rand


def never() -> float:
    pytest.fail("rand() drawn without a runtime_fraction")


def action(*policies: MirrorPolicy) -> RouteAction:
    return RouteAction(cluster="c", request_mirror_policies=policies)


def test_no_policies_no_mirrors() -> None:
    assert mirrors(action(), never) == []
    assert mirrors(DirectResponse(200), never) == []
    assert mirrors(None, never) == []


def test_a_policy_without_fraction_mirrors_every_request() -> None:
    assert mirrors(action(MirrorPolicy("shadow")), never) == ["shadow"]


def test_fraction_with_injected_rand() -> None:
    half = action(MirrorPolicy("shadow", FractionalPercent(50)))
    assert mirrors(half, once(0.4999)) == ["shadow"]
    assert mirrors(half, once(0.5)) == []
    tenth = action(MirrorPolicy("s", FractionalPercent(100_000, 1_000_000)))
    assert mirrors(tenth, once(0.0999)) == ["s"]
    assert mirrors(tenth, once(0.1)) == []
    assert mirrors(action(MirrorPolicy("s", FractionalPercent(0))), once(0.0)) == []


def test_policies_share_one_draw_as_in_envoy() -> None:
    both = action(
        MirrorPolicy("a", FractionalPercent(50)),
        MirrorPolicy("always"),
        MirrorPolicy("b", FractionalPercent(50)),
    )
    assert mirrors(both, once(0.3)) == ["a", "always", "b"]
    assert mirrors(both, once(0.7)) == ["always"]
    nested = action(
        MirrorPolicy("a", FractionalPercent(20)), MirrorPolicy("b", FractionalPercent(60))
    )
    assert mirrors(nested, once(0.1)) == ["a", "b"]
    assert mirrors(nested, once(0.5)) == ["b"]


def test_mirror_shares_over_many_requests() -> None:
    import random

    rng = random.Random(7)
    policy = action(MirrorPolicy("s", FractionalPercent(25)))
    hits = sum(bool(mirrors(policy, rng.random)) for _ in range(10_000))
    assert 2300 < hits < 2700


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        ("reviews", "reviews-shadow"),
        ("reviews:9080", "reviews-shadow:9080"),
        ("127.0.0.1:8080", "127.0.0.1-shadow:8080"),
        ("[::1]:80", "[::1]-shadow:80"),
        ("[::1]", "[::1]-shadow"),
    ],
)
def test_shadow_authority(authority: str, shadow: str) -> None:
    assert shadow_authority(authority) == shadow
