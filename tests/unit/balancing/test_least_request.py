"""least_request (P2C, N choices, full scan, weighted EDF), slow start and the stats table."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from sail.balancing import ClusterStats, build_picker, registry
from sail.balancing.edf import DynamicEdfPicker, SlowStart
from sail.balancing.least_request import (
    FullScanPicker,
    NChoicesPicker,
    TwoChoicesPicker,
    least_request_picker,
)
from sail.balancing.round_robin import RoundRobinPicker, round_robin_picker
from sail.errors import ConfigError, ResourceError
from sail.model import Cluster, Endpoint, LbPolicy
from sail.xds.codec import decode_cluster, parse_resource
from tests.unit.balancing.balancing_helpers import (
    H,
    assert_shares,
    assignment,
    endpoints,
    loc,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sail.balancing.base import Picker

N = 20_000


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(
    eps: Sequence[Endpoint], clock: Clock | None = None, now: float | None = None
) -> ClusterStats:
    stats = ClusterStats(clock or Clock())
    stats.observe(eps, now=now)
    return stats


def lr(**options: Any) -> LbPolicy:
    return LbPolicy("least_request", tuple(sorted(options.items())))


def count(picker: Picker, n: int = N) -> Counter[str]:
    return Counter(picker.pick().address for _ in range(n))


def set_active(stats: ClusterStats, eps: Sequence[Endpoint], active: Sequence[int]) -> None:
    for e, a in zip(eps, active, strict=True):
        stats.host(e).active = a


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)


# --- equal weights: N choices ---------------------------------------------------------------


def test_equal_weights_use_two_choices_and_idle_counts_spread_evenly() -> None:
    eps = endpoints("a", 4)
    picker = least_request_picker(eps, lr(), table(eps, now=float("-inf")))
    assert isinstance(picker, TwoChoicesPicker)
    assert_shares(count(picker), {e.address: 0.25 for e in eps})


def test_p2c_prefers_less_loaded_hosts() -> None:
    # Five busy, five idle: a busy host is picked only when both draws are busy (1/4).
    eps = endpoints("a", 10)
    stats = table(eps, now=float("-inf"))
    set_active(stats, eps, [10] * 5 + [0] * 5)
    picker = least_request_picker(eps, lr(), stats)
    c = count(picker)
    assert_shares(c, {e.address: 0.05 if i < 5 else 0.15 for i, e in enumerate(eps)}, tol=0.01)


def test_counts_are_read_live_without_a_rebuild() -> None:
    eps = endpoints("a", 2)
    stats = table(eps, now=float("-inf"))
    picker = least_request_picker(eps, lr(), stats)
    stats.host(eps[0]).active = 5
    c = count(picker, 4000)
    assert_shares(c, {"a.0": 0.25, "a.1": 0.75})  # a.0 only when drawn twice
    stats.host(eps[0]).active = 0
    stats.host(eps[1]).active = 5
    assert_shares(count(picker, 4000), {"a.0": 0.75, "a.1": 0.25})


def test_choice_count_three() -> None:
    eps = endpoints("a", 2)
    stats = table(eps, now=float("-inf"))
    stats.host(eps[0]).active = 1
    picker = least_request_picker(eps, lr(choice_count=3), stats)
    assert isinstance(picker, NChoicesPicker)
    assert_shares(count(picker), {"a.0": 0.125, "a.1": 0.875}, tol=0.01)


def test_negative_counts_read_as_zero_in_weighted_mode() -> None:
    eps = (Endpoint("a.0", 80, weight=1), Endpoint("a.1", 80, weight=1 + 1))
    stats = table(eps, now=float("-inf"))
    stats.host(eps[0]).active = -3  # a lost update: must not divide by zero or go negative
    picker = least_request_picker(eps, lr(), stats)
    assert_shares(count(picker, 3000), {"a.0": 1 / 3, "a.1": 2 / 3})


def test_full_scan_takes_the_least_loaded_and_breaks_ties_at_random() -> None:
    eps = endpoints("a", 4)
    stats = table(eps, now=float("-inf"))
    set_active(stats, eps, [3, 1, 1, 2])
    picker = least_request_picker(eps, lr(selection_method="FULL_SCAN"), stats)
    assert isinstance(picker, FullScanPicker)
    assert_shares(count(picker, 4000), {"a.1": 0.5, "a.2": 0.5}, tol=0.03)
    set_active(stats, eps, [0, 1, 1, 2])
    assert count(picker, 100) == {"a.0": 100}


def test_choice_count_below_two_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="choice_count 1"):
        least_request_picker(endpoints("a", 2), lr(choice_count=1))


def test_without_stats_every_count_is_zero() -> None:
    picker = least_request_picker(endpoints("a", 3), lr())
    assert_shares(count(picker, 6000), {f"a.{i}": 1 / 3 for i in range(3)})


# --- unequal weights: weighted least request (EDF) ------------------------------------------


def weighted(weights: Sequence[int]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"a.{i}", 80, weight=w) for i, w in enumerate(weights))


def test_unequal_weights_use_the_weighted_edf_with_weight_shares_when_idle() -> None:
    eps = weighted([1, 3])
    picker = least_request_picker(eps, lr(), table(eps, now=float("-inf")))
    assert isinstance(picker, DynamicEdfPicker)
    # EDF is deterministic: over any 4k picks the shares are exact to a pick or two.
    c = count(picker, 4000)
    assert abs(c["a.0"] - 1000) <= 2 and abs(c["a.1"] - 3000) <= 2


@pytest.mark.parametrize(
    ("weights", "active", "bias", "expected"),
    [
        # weight / (active + 1) ** bias
        ([1, 2, 3], [0, 1, 2], 1.0, [1 / 3, 1 / 3, 1 / 3]),
        ([1, 3], [0, 2], 1.0, [1 / 2, 1 / 2]),
        ([1, 3], [0, 2], 0.0, [1 / 4, 3 / 4]),  # bias 0: plain weighted round robin
        ([4, 1], [1, 0], 2.0, [1 / 2, 1 / 2]),
        ([2, 1], [3, 0], 0.5, [1 / 2, 1 / 2]),
    ],
)
def test_weighted_least_request_matches_expected_shares(
    weights: list[int], active: list[int], bias: float, expected: list[float]
) -> None:
    eps = weighted(weights)
    stats = table(eps, now=float("-inf"))
    set_active(stats, eps, active)
    picker = least_request_picker(eps, lr(active_request_bias=bias), stats)
    assert_shares(count(picker, 6000), {e.address: s for e, s in zip(eps, expected, strict=True)})


def test_invalid_bias_falls_back_to_one_as_envoy_does() -> None:
    eps = weighted([1, 2])
    stats = table(eps, now=float("-inf"))
    set_active(stats, eps, [0, 1])  # 1/1 vs 2/2: equal with bias 1
    picker = least_request_picker(eps, lr(active_request_bias=-2.0), stats)
    assert_shares(count(picker, 4000), {"a.0": 0.5, "a.1": 0.5})


def test_the_weighted_picker_is_safe_across_threads() -> None:
    eps = weighted([1, 2, 3, 4])
    picker = least_request_picker(eps, lr(), table(eps, now=float("-inf")))
    results: list[Counter[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(count(picker, 5000))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for c in results:  # each thread walks its own schedule: exact shares in each
        for i, w in enumerate([1, 2, 3, 4]):
            assert abs(c[f"a.{i}"] - 500 * w) <= 4


# --- through build_picker, with a stats table kept across rebuilds -------------------------


def test_build_picker_hands_the_stats_table_to_least_request() -> None:
    eps = endpoints("a", 4)
    cluster = Cluster("reviews", lb_policy=lr())
    stats = ClusterStats()
    picker = build_picker(cluster, assignment(loc("a", eps)), stats=stats)
    assert set(stats) == {e.authority for e in eps}
    for e in eps[:3]:
        stats.host(e).active = 50
    # A rebuild (new EDS version) keeps the counters: the picker still avoids the busy ones.
    picker = build_picker(cluster, assignment(loc("a", eps)), stats=stats)
    c = count(picker, 4000)
    assert c["a.3"] / 4000 == pytest.approx(1 - (3 / 4) ** 2, abs=0.03)


def test_data_plane_pattern_increments_and_decrements() -> None:
    eps = endpoints("a", 2)
    stats = ClusterStats()
    picker = build_picker(Cluster("c", lb_policy=lr()), assignment(loc("a", eps)), stats=stats)
    endpoint = picker.pick()
    host = stats.host(endpoint)
    host.active += 1
    assert stats.get(endpoint.authority) is host and host.active == 1
    host.active -= 1
    assert host.active == 0


def test_a_three_argument_custom_factory_gets_the_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ClusterStats] = []

    def factory(eps: Sequence[Endpoint], policy: LbPolicy, stats: ClusterStats) -> Picker:
        seen.append(stats)
        return round_robin_picker(eps, policy)

    monkeypatch.setitem(registry._POLICIES, "mine", factory)
    stats = ClusterStats()
    build_picker(
        Cluster("c", lb_policy=LbPolicy("mine")),
        assignment(loc("a", endpoints("a", 2))),
        stats=stats,
    )
    assert seen == [stats]


# --- the stats table ----------------------------------------------------------------------


def test_observe_keeps_counters_drops_departed_and_stamps_first_healthy() -> None:
    clock = Clock(10.0)
    stats = ClusterStats(clock)
    a, b = endpoints("a", 2)
    sick = Endpoint("a.9", 80, health=H.UNHEALTHY)
    stats.observe([a, b, sick])
    stats.host(a).active = 3
    assert stats.host(a).first_healthy == 10.0
    assert stats.host(sick).first_healthy is None
    clock.now = 20.0
    stats.observe([a, Endpoint("a.9", 80, health=H.HEALTHY)])
    assert "a.1:80" not in stats
    assert stats.host(a).active == 3 and stats.host(a).first_healthy == 10.0
    assert stats.get("a.9:80") is not None and stats.get("a.9:80").first_healthy == 20.0  # type: ignore[union-attr]
    assert len(stats) == 2


# --- slow start -----------------------------------------------------------------------------


def slow(window: float = 10.0, **extra: float) -> tuple[tuple[str, object], ...]:
    return (("slow_start_config", tuple(sorted({"slow_start_window": window, **extra}.items()))),)


def test_slow_start_factor_follows_envoy_formula() -> None:
    s = SlowStart(10.0)
    assert s.factor(5.0) == 0.5
    assert s.factor(0.0) == pytest.approx(0.1)  # max(1 ms / 10 s, min_weight 10 %)
    assert s.factor(10.0) == 1.0
    assert SlowStart(10.0, aggression=2.0).factor(2.5) == pytest.approx(0.5)  # sqrt(0.25)
    assert SlowStart(10.0, min_weight=0.0).factor(0.0) == pytest.approx(0.0001)
    assert SlowStart.from_policy(LbPolicy("round_robin", slow(0.0))) is None


def ramp_picker(policy: str, clock: Clock, stats: ClusterStats, eps: Sequence[Endpoint]) -> Picker:
    factory = round_robin_picker if policy == "round_robin" else least_request_picker
    return factory(eps, LbPolicy(policy, slow(10.0)), stats)


@pytest.mark.parametrize("policy", ["round_robin", "least_request"])
def test_a_new_endpoint_ramps_up_then_gets_its_full_share(policy: str) -> None:
    clock = Clock(0.0)
    old = endpoints("a", 3)
    stats = ClusterStats(clock)
    stats.observe(old, now=-100.0)  # known long before
    new = Endpoint("b.0", 80)
    eps = (*old, new)
    clock.now = 100.0
    stats.observe(eps)  # b.0 first seen healthy at t=100
    clock.now = 105.0  # half way: factor 0.5, share 0.5 / 3.5
    picker = ramp_picker(policy, clock, stats, eps)
    assert isinstance(picker, DynamicEdfPicker)
    c = count(picker, 7000)
    assert c["b.0"] / 7000 == pytest.approx(0.5 / 3.5, abs=0.01)
    clock.now = 110.5  # the window has passed: the plain picker, full share
    c = count(picker, 4000)
    assert c["b.0"] / 4000 == pytest.approx(0.25, abs=0.03)
    if policy == "round_robin":
        rebuilt = ramp_picker(policy, clock, stats, eps)
        assert isinstance(rebuilt, RoundRobinPicker)


def test_slow_start_needs_the_stats_table_and_ignores_unhealthy_hosts() -> None:
    eps = endpoints("a", 3)
    assert isinstance(round_robin_picker(eps, LbPolicy("round_robin", slow())), RoundRobinPicker)
    clock = Clock(0.0)
    stats = ClusterStats(clock)
    stats.observe(eps)  # all new, all at the same time: ramp together, equal shares
    clock.now = 2.0
    picker = round_robin_picker(eps, LbPolicy("round_robin", slow()), stats)
    assert isinstance(picker, DynamicEdfPicker)
    assert_shares(count(picker, 3000), {e.address: 1 / 3 for e in eps})


def test_build_picker_without_stats_never_slow_starts() -> None:
    c = Cluster("c", lb_policy=LbPolicy("round_robin", slow()))
    assert isinstance(build_picker(c, assignment(loc("a", endpoints("a", 3)))), RoundRobinPicker)


# --- config decode --------------------------------------------------------------------------


def eds(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, **fields}


def decode(data: dict[str, Any]) -> Cluster:
    return decode_cluster(parse_resource("Cluster", data))


T = "type.googleapis.com/envoy.extensions.load_balancing_policies."


def typed(config: dict[str, Any]) -> dict[str, Any]:
    return {"policies": [{"typed_extension_config": {"name": "p", "typed_config": config}}]}


def test_least_request_cluster_is_accepted_and_builds() -> None:
    cluster = decode(eds(lb_policy="LEAST_REQUEST"))
    assert cluster.lb_policy == LbPolicy("least_request")
    picker = build_picker(cluster, assignment(loc("a", endpoints("a", 3))))
    assert isinstance(picker, TwoChoicesPicker)


def test_least_request_options_decode() -> None:
    cluster = decode(
        eds(
            lb_policy="LEAST_REQUEST",
            least_request_lb_config={
                "choice_count": 3,
                "active_request_bias": {"default_value": 0.5, "runtime_key": "k"},
                "slow_start_config": {
                    "slow_start_window": "30s",
                    "aggression": {"default_value": 2.0, "runtime_key": "a"},
                    "min_weight_percent": {"value": 5},
                },
            },
        )
    )
    assert cluster.lb_policy == LbPolicy(
        "least_request",
        (
            ("active_request_bias", 0.5),
            ("choice_count", 3),
            (
                "slow_start_config",
                (("aggression", 2.0), ("min_weight_percent", 5.0), ("slow_start_window", 30.0)),
            ),
        ),
    )
    assert SlowStart.from_policy(cluster.lb_policy) == SlowStart(30.0, 2.0, 0.05)
    typed_cluster = decode(
        eds(
            load_balancing_policy=typed(
                {"@type": T + "least_request.v3.LeastRequest", "selection_method": "FULL_SCAN"}
            )
        )
    )
    assert typed_cluster.lb_policy == LbPolicy(
        "least_request", (("selection_method", "FULL_SCAN"),)
    )


def test_round_robin_slow_start_decodes() -> None:
    cluster = decode(
        eds(
            lb_policy="ROUND_ROBIN",
            round_robin_lb_config={"slow_start_config": {"slow_start_window": "10s"}},
        )
    )
    assert cluster.lb_policy == LbPolicy("round_robin", slow(10.0))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            eds(lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 1}),
            "least_request_lb_config.choice_count: 1 is less than 2",
        ),
        (
            eds(
                lb_policy="LEAST_REQUEST",
                least_request_lb_config={
                    "slow_start_config": {"min_weight_percent": {"value": 150}}
                },
            ),
            "least_request_lb_config.slow_start_config.min_weight_percent.value: "
            "150.0 is not in 0-100",
        ),
    ],
)
def test_bad_least_request_options_are_rejected_naming_the_field(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ResourceError) as info:
        decode(data)
    assert info.value.reason == message


def test_least_request_options_round_trip_through_the_encoder() -> None:
    from sail.xds.codec.encode import encode_cluster

    policy = LbPolicy(
        "least_request",
        (
            ("active_request_bias", 0.5),
            ("choice_count", 3),
            ("slow_start_config", (("aggression", 2.0), ("slow_start_window", 30.0))),
        ),
    )
    cluster = Cluster("c", lb_policy=policy)
    assert decode_cluster(encode_cluster(cluster)).lb_policy == policy
