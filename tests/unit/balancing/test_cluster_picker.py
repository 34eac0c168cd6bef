from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from sail.balancing import build_picker, registry
from sail.balancing.round_robin import RoundRobinPicker
from sail.balancing.weighted_choice import WeightedChoicePicker
from sail.errors import ConfigError, NoHealthyUpstream, RequestError
from sail.model import Cluster, ClusterLoadAssignment, Endpoint, LbPolicy
from tests.unit.balancing.balancing_helpers import (
    H,
    assert_shares,
    assignment,
    cluster,
    counts,
    endpoints,
    loc,
    mixed,
    prefix,
    seeded,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

N = 10_000


def by_group(c: Cluster, a: ClusterLoadAssignment, n: int = N) -> Counter[str]:
    return counts(build_picker(c, a, rand=seeded()), n, key=prefix)


# --- fast path and policies -------------------------------------------------------------


def test_one_priority_one_locality_is_the_policy_picker_itself() -> None:
    picker = build_picker(cluster(), assignment(loc("a", endpoints("a", 3))))
    assert isinstance(picker, RoundRobinPicker)


def test_policy_applies_within_locality() -> None:
    eps = endpoints("a", 4)
    picker = build_picker(cluster(), assignment(loc("a", eps)))
    assert Counter(picker.pick() for _ in range(400)) == {e: 100 for e in eps}


def test_random_policy() -> None:
    a = assignment(loc("a", endpoints("a", 2)), loc("b", endpoints("b", 2), weight=3))
    assert_shares(by_group(cluster("random"), a), {"a": 0.25, "b": 0.75})


def test_policy_gets_only_healthy_endpoints_and_the_lb_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[tuple[Endpoint, ...], LbPolicy]] = []

    class First:
        def __init__(self, eps: Sequence[Endpoint]) -> None:
            self.eps = eps

        def pick(self, hash_key: int | None = None) -> Endpoint:
            return self.eps[0]

    def factory(eps: Sequence[Endpoint], policy: LbPolicy) -> First:
        seen.append((tuple(eps), policy))
        return First(eps)

    monkeypatch.setitem(registry._POLICIES, "first", factory)
    c = Cluster("reviews", lb_policy=LbPolicy("first", (("k", 1),)))
    eps = mixed("a", 3, 1)
    assert build_picker(c, assignment(loc("a", eps))).pick() == eps[0]
    assert seen == [(eps[:3], c.lb_policy)]


# --- priority levels ----------------------------------------------------------------------


def two_levels(p0_healthy: int, p0_unhealthy: int, *, factor: int = 140) -> ClusterLoadAssignment:
    return assignment(
        loc("a", mixed("p0", p0_healthy, p0_unhealthy)),
        loc("b", endpoints("p1", 4), priority=1),
        factor=factor,
    )


def test_healthy_p0_takes_everything() -> None:
    assert by_group(cluster(), two_levels(4, 0)) == {"p0": N}


def test_half_healthy_p0_gets_70_percent() -> None:
    picker = build_picker(cluster(), two_levels(2, 2), rand=seeded())
    assert isinstance(picker, WeightedChoicePicker)
    assert [(label, share) for label, share, _ in picker.children] == [("P0", 0.7), ("P1", 0.3)]
    picks = [picker.pick() for _ in range(N)]
    assert_shares(Counter(map(prefix, picks)), {"p0": 0.7, "p1": 0.3})
    assert {e.address for e in picks if prefix(e) == "p0"} == {"p0.0", "p0.1"}  # healthy only


def test_p0_down_sends_everything_to_p1() -> None:
    assert by_group(cluster(), two_levels(0, 4)) == {"p1": N}


def test_recovery_on_rebuild() -> None:
    assert by_group(cluster(), two_levels(0, 4)) == {"p1": N}
    assert by_group(cluster(), two_levels(4, 0)) == {"p0": N}


@pytest.mark.parametrize(("factor", "p0"), [(100, 0.5), (120, 0.6), (140, 0.7), (200, 1.0)])
def test_overprovisioning_factor(factor: int, p0: float) -> None:
    c = by_group(cluster(), two_levels(2, 2, factor=factor))
    assert_shares(c, {"p0": p0, "p1": 1 - p0} if p0 < 1 else {"p0": 1.0})


def test_three_priorities() -> None:
    a = assignment(
        loc("a", mixed("p0", 1, 3)),  # health 35
        loc("b", mixed("p1", 1, 3), priority=1),  # health 35
        loc("c", endpoints("p2", 4), priority=2),
    )
    assert_shares(by_group(cluster(), a), {"p0": 0.35, "p1": 0.35, "p2": 0.30})


def test_priorities_need_not_be_contiguous() -> None:
    a = assignment(loc("a", mixed("p0", 2, 2)), loc("b", endpoints("p5", 2), priority=5))
    assert_shares(by_group(cluster(), a), {"p0": 0.7, "p5": 0.3})


def test_rand_drives_the_priority_choice() -> None:
    a = two_levels(2, 2)
    assert prefix(build_picker(cluster(), a, rand=lambda: 0.0).pick()) == "p0"
    assert prefix(build_picker(cluster(), a, rand=lambda: 0.69).pick()) == "p0"
    assert prefix(build_picker(cluster(), a, rand=lambda: 0.70).pick()) == "p1"
    assert prefix(build_picker(cluster(), a, rand=lambda: 0.999999).pick()) == "p1"


# --- panic --------------------------------------------------------------------------------


def test_single_level_below_threshold_panics_over_all_hosts() -> None:
    eps = mixed("a", 1, 3)  # 25 % healthy, normalized health 35
    c = counts(build_picker(cluster(), assignment(loc("a", eps))), 4000)
    assert c == {e.address: 1000 for e in eps}


def test_panic_leaves_out_hosts_known_not_to_answer() -> None:
    eps = mixed("a", 1, 3)  # in panic: 25 % healthy
    shunned = frozenset({eps[1].authority, eps[2].authority})  # refusing connections
    c = counts(build_picker(cluster(), assignment(loc("a", eps)), shunned=shunned), 4000)
    assert c == {eps[0].address: 2000, eps[3].address: 2000}


def test_panic_with_every_host_shunned_still_sends_to_all() -> None:
    eps = mixed("a", 0, 2)
    shunned = frozenset(e.authority for e in eps)
    c = counts(build_picker(cluster(), assignment(loc("a", eps)), shunned=shunned), 100)
    assert c == {e.address: 50 for e in eps}, "nothing else to try: panic as Envoy does"


def test_panic_threshold_zero_disables_panic() -> None:
    eps = mixed("a", 1, 3)
    c = counts(build_picker(cluster(panic=0), assignment(loc("a", eps))), 100)
    assert c == {"a.0": 100}


def test_panic_threshold_is_a_percent_of_healthy_hosts() -> None:
    eps = mixed("a", 2, 3)  # 40 % healthy: panics at 50, not at 40
    assert len(counts(build_picker(cluster(panic=50), assignment(loc("a", eps))), 100)) == 5
    assert len(counts(build_picker(cluster(panic=40), assignment(loc("a", eps))), 100)) == 2


def test_no_panic_when_lower_priorities_cover() -> None:
    a = assignment(loc("a", mixed("p0", 1, 9)), loc("b", endpoints("p1", 4), priority=1))
    picked = counts(build_picker(cluster(), a, rand=seeded()), N)
    assert {a for a in picked if a.startswith("p0")} == {"p0.0"}  # P0 14 %, healthy only


def test_total_panic_spreads_over_all_hosts_by_host_count() -> None:
    a = assignment(loc("a", mixed("p0", 1, 3)), loc("b", mixed("p1", 1, 11), priority=1))
    picker = build_picker(cluster(), a, rand=seeded())
    picks = [picker.pick() for _ in range(N)]
    assert_shares(Counter(map(prefix, picks)), {"p0": 0.25, "p1": 0.75})
    assert len(set(picks)) == 16  # unhealthy hosts too


def test_panic_ignores_localities_but_never_picks_draining() -> None:
    a = assignment(
        loc("a", mixed("a", 0, 2)),
        loc("b", mixed("b", 0, 2, bad=H.DRAINING), weight=100),
    )
    c = counts(build_picker(cluster(), a, rand=seeded()), 1000)
    assert c == {"a.0": 500, "a.1": 500}


# --- localities ---------------------------------------------------------------------------


def test_locality_weights_3_to_1() -> None:
    a = assignment(loc("a", endpoints("a", 2), weight=3), loc("b", endpoints("b", 5), weight=1))
    assert_shares(by_group(cluster(), a), {"a": 0.75, "b": 0.25})


def test_half_unhealthy_locality_loses_effective_weight() -> None:
    # a: 1 * min(1, 1.4 * 2/4) = 0.7; b: 1. So a gets 0.7 / 1.7 = 41.2 %.
    a = assignment(loc("a", mixed("a", 2, 2)), loc("b", endpoints("b", 4)))
    assert_shares(by_group(cluster(), a), {"a": 0.7 / 1.7, "b": 1 / 1.7})


def test_mostly_healthy_locality_keeps_its_weight() -> None:
    a = assignment(loc("a", mixed("a", 3, 1)), loc("b", endpoints("b", 4)))  # 1.4 * 0.75 >= 1
    assert_shares(by_group(cluster(), a), {"a": 0.5, "b": 0.5})


def test_locality_without_healthy_endpoints_gets_nothing() -> None:
    a = assignment(
        loc("a", endpoints("a", 4)), loc("b", mixed("b", 0, 2)), loc("c", endpoints("c", 4))
    )
    assert_shares(by_group(cluster(), a), {"a": 0.5, "c": 0.5})


def test_localities_of_each_priority_are_weighted_separately() -> None:
    a = assignment(
        loc("a", mixed("a", 2, 2), weight=1),
        loc("b", mixed("b", 2, 2), weight=3),
        loc("c", endpoints("c", 2), weight=1, priority=1),
        loc("d", endpoints("d", 2), weight=1, priority=1),
    )  # P0 health 70: a 17.5 %, b 52.5 %; P1 30 %: c 15 %, d 15 %
    assert_shares(by_group(cluster(), a), {"a": 0.175, "b": 0.525, "c": 0.15, "d": 0.15})


def test_all_locality_weights_zero_balance_over_the_level() -> None:
    a = assignment(loc("a", endpoints("a", 1), weight=0), loc("b", endpoints("b", 3), weight=0))
    assert_shares(by_group(cluster(), a), {"a": 0.25, "b": 0.75})


def test_hash_key_sticks_to_one_locality() -> None:
    a = assignment(
        loc("a", endpoints("a", 3)),
        loc("b", endpoints("b", 3)),
        loc("c", mixed("c", 2, 2), priority=1),
    )
    picker = build_picker(cluster(), a)
    for key in range(50):
        assert len({prefix(picker.pick(hash_key=key)) for _ in range(10)}) == 1
    spread = Counter(prefix(picker.pick(hash_key=k)) for k in range(N))
    assert_shares(spread, {"a": 0.5, "b": 0.5})


# --- health statuses ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [H.HEALTHY, H.UNKNOWN])
def test_statuses_that_take_traffic(status: H) -> None:
    a = assignment(loc("a", endpoints("a", 1, health=status) + endpoints("b", 1)))
    assert len(counts(build_picker(cluster(), a), 10)) == 2


@pytest.mark.parametrize("status", [H.UNHEALTHY, H.DRAINING, H.TIMEOUT, H.DEGRADED])
def test_statuses_that_do_not(status: H) -> None:
    a = assignment(loc("a", endpoints("good", 4) + endpoints("bad", 1, health=status)))
    assert {prefix(e) for e in (build_picker(cluster(), a).pick() for _ in range(50))} == {"good"}


def test_draining_hosts_do_not_count_against_health() -> None:
    # 2 healthy + 8 draining: P0 is 100 % healthy among the hosts that count.
    p0 = endpoints("p0", 2) + endpoints("p0d", 8, health=H.DRAINING)
    a = assignment(loc("a", p0), loc("b", endpoints("p1", 4), priority=1))
    assert by_group(cluster(), a) == {"p0": N}


def test_unhealthy_hosts_count_against_health() -> None:
    p0 = endpoints("p0", 2) + endpoints("p0u", 8, health=H.UNHEALTHY)  # health 28
    a = assignment(loc("a", p0), loc("b", endpoints("p1", 4), priority=1))
    assert_shares(by_group(cluster(), a), {"p0": 0.28, "p1": 0.72})


# --- no healthy upstream ------------------------------------------------------------------


@pytest.mark.parametrize(
    "a",
    [assignment(), assignment(loc("a", ())), assignment(loc("a", ()), loc("b", (), priority=1))],
)
def test_no_endpoints(a: ClusterLoadAssignment) -> None:
    picker = build_picker(cluster(), a)  # does not raise
    with pytest.raises(NoHealthyUpstream, match=r"^cluster 'reviews' has no endpoints$"):
        picker.pick()


def test_nothing_healthy_and_panic_disabled() -> None:
    eps = endpoints("a", 2, health=H.DRAINING) + endpoints("b", 1, health=H.UNHEALTHY)
    picker = build_picker(cluster(panic=0), assignment(loc("a", eps)))
    with pytest.raises(NoHealthyUpstream) as err:
        picker.pick()
    assert str(err.value) == "cluster 'reviews': 0 of 3 endpoints healthy (2 DRAINING, 1 UNHEALTHY)"
    assert isinstance(err.value, RequestError)


def test_panic_falls_back_to_unhealthy_but_not_draining() -> None:
    eps = endpoints("a", 2, health=H.DRAINING) + endpoints("b", 1, health=H.UNHEALTHY)
    assert build_picker(cluster(), assignment(loc("a", eps))).pick() == eps[2]


def test_all_draining_is_unavailable_even_in_panic() -> None:
    picker = build_picker(cluster(), assignment(loc("a", endpoints("a", 3, health=H.DRAINING))))
    with pytest.raises(NoHealthyUpstream, match=r"0 of 3 endpoints healthy \(3 DRAINING\)"):
        picker.pick()


# --- config errors ------------------------------------------------------------------------


def test_unknown_policy() -> None:
    with pytest.raises(ConfigError) as err:
        build_picker(cluster("maglev_v9"), assignment())
    msg = str(err.value)
    assert "'reviews'" in msg
    assert "'maglev_v9'" in msg
    assert "least_request, maglev, random, ring_hash, round_robin, weighted_round_robin" in msg


# --- concurrency --------------------------------------------------------------------------


def test_threads_picking_through_priorities_and_localities() -> None:
    a = assignment(
        loc("a", mixed("a", 2, 2), weight=1),
        loc("b", endpoints("b", 4), weight=1),
        loc("c", endpoints("c", 4), priority=1),
    )
    picker = build_picker(cluster(), a)
    results: list[Counter[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(counts(picker, 5000, key=prefix))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # P0 health 100 (6 of 8 healthy * 1.4): a 0.7 / 1.7, b 1 / 1.7, P1 nothing.
    assert_shares(sum(results, Counter()), {"a": 0.7 / 1.7, "b": 1 / 1.7})


def test_repr_shows_the_plan() -> None:
    text = repr(build_picker(cluster(), two_levels(2, 2)))
    assert "P0: 70.0%" in text
    assert "P1: 30.0%" in text
