"""`ConfigResolver` driven directly, as `AdsClient` and local mode drive it: LDS → RDS → CDS
→ EDS following (the names handed to `subscribe`), make-before-break, absent and rejected
resources, `settled_event`, deletions, inline routes, and `replace_all`.

Every resource is an Envoy JSON dict from `sail.testing`, decoded by the xDS codec into the
model object the client would deliver. Each test asserts the exact snapshots published (and
the exact subscriptions), not merely that something was published.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pytest

from sail import testing
from sail.model import MeshSnapshot
from sail.xds.codec import RESOURCE_TYPES, load_resources, resource_name
from sail.xds.codec.extensions import type_url_of
from sail.xds.resolver import CDS, EDS, LDS, RDS, ConfigResolver

NONE: frozenset[str] = frozenset()


def decode(*resources: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Envoy JSON dicts → model objects by type URL and name, as the client decodes them."""
    out: dict[str, dict[str, Any]] = {LDS: {}, RDS: {}, CDS: {}, EDS: {}}
    for message in load_resources([dict(r) for r in resources]):
        rtype = RESOURCE_TYPES[type_url_of(message)]
        out[rtype.type_url][resource_name(message)] = rtype.decode(message)
    return out


def one(resource: Mapping[str, Any]) -> Any:
    """The model object of one resource."""
    (found,) = (v for by_name in decode(resource).values() for v in by_name.values())
    return found


class Harness:
    """A resolver with its `publish` and `subscribe` callbacks recorded."""

    def __init__(self, *, local: bool = False) -> None:
        self.published: list[MeshSnapshot] = []
        self.calls: list[tuple[str, frozenset[str]]] = []
        self.resolver = ConfigResolver(
            self.published.append, None if local else self._subscribe
        )

    def _subscribe(self, type_url: str, names: frozenset[str]) -> None:
        self.calls.append((type_url, names))

    def take_calls(self) -> list[tuple[str, frozenset[str]]]:
        calls, self.calls = self.calls, []
        return calls

    def take_published(self, *, complete: bool = True) -> list[MeshSnapshot]:
        """What was published since the last call; `complete`: check each snapshot's
        routes name only clusters it holds (not so once one is known missing)."""
        published = list(self.published)
        self.published.clear()  # the list the resolver appends to
        if complete:
            for snap in published:
                assert_complete(snap)
        return published

    def send(
        self,
        type_url: str,
        *resources: Mapping[str, Any],
        removed: Iterable[str] = (),
        errors: Mapping[str, str] | None = None,
        absent: Iterable[str] = (),
    ) -> None:
        """One `on_resources` call, as the client makes after one response."""
        decoded = decode(*resources)
        assert all(not v for t, v in decoded.items() if t != type_url), "one type per call"
        self.resolver.on_resources(
            type_url, decoded[type_url], frozenset(removed), dict(errors or {}),
            frozenset(absent),
        )

    @property
    def snapshot(self) -> MeshSnapshot:
        return self.resolver.snapshot


def assert_complete(snap: MeshSnapshot) -> None:
    """Every route configuration names only clusters the snapshot holds (with endpoints)."""
    for key, config in snap.routes.items():
        missing = config.cluster_names() - snap.clusters.keys()
        assert not missing, f"routes of {key!r} name {missing} missing from {snap}"
        no_endpoints = config.cluster_names() - snap.endpoints.keys()
        assert not no_endpoints, f"routes of {key!r}: no endpoints for {no_endpoints}"


def ep(cluster: str, *ports: int) -> dict[str, Any]:
    return testing.load_assignment(cluster, [("10.0.0.1", p) for p in ports])


def served(h: Harness, name: str, clusters: Mapping[str, Iterable[int]]) -> None:
    """Resolve listener `name` (RDS `name`, one route to its single cluster, or an even
    split) completely, in the client's order, and forget what was published and asked."""
    weights = {c: 1 for c in clusters}
    routes = [testing.route(next(iter(clusters)))] if len(clusters) == 1 else [
        testing.route(weights)]
    h.resolver.add_interest([name])
    h.send(LDS, testing.api_listener(name))
    h.send(RDS, testing.route_config(name, routes))
    h.send(CDS, *(testing.eds_cluster(c) for c in clusters))
    h.send(EDS, *(ep(c, *ports) for c, ports in clusters.items()))
    h.take_calls()
    h.take_published()


# -- following LDS → RDS → CDS → EDS ---------------------------------------------------------


def test_follows_listener_to_routes_to_clusters_to_endpoints() -> None:
    h = Harness()
    h.resolver.add_interest(["reviews"])
    assert h.take_calls() == [(LDS, frozenset({"reviews"}))]
    assert h.take_published() == []  # nothing known yet: the empty snapshot stands

    listener = testing.api_listener("reviews", rds="reviews-routes")
    h.send(LDS, listener)
    assert h.take_calls() == [(RDS, frozenset({"reviews-routes"}))]
    assert h.take_published() == [
        MeshSnapshot(listeners={"reviews": one(listener)}, version=1)
    ]

    routes = testing.route_config("reviews-routes", [
        testing.route("reviews-v2", prefix="/v2"), testing.route("reviews-v1"),
    ])
    h.send(RDS, routes)
    assert h.take_calls() == [(CDS, frozenset({"reviews-v1", "reviews-v2"}))]
    assert h.take_published() == []  # routes wait for their clusters

    h.send(CDS, testing.eds_cluster("reviews-v1"), testing.eds_cluster("reviews-v2"))
    assert h.take_calls() == [(EDS, frozenset({"reviews-v1", "reviews-v2"}))]
    assert h.take_published() == []  # and the clusters for their endpoints

    h.send(EDS, ep("reviews-v1", 8001))
    assert h.take_calls() == []
    assert h.take_published() == []  # one cluster of two is not enough

    h.send(EDS, ep("reviews-v2", 8002))
    assert h.take_calls() == []
    assert h.take_published() == [
        MeshSnapshot(
            listeners={"reviews": one(listener)},
            routes={"reviews": one(routes)},
            clusters={
                "reviews-v1": one(testing.eds_cluster("reviews-v1")),
                "reviews-v2": one(testing.eds_cluster("reviews-v2")),
            },
            endpoints={
                "reviews-v1": one(ep("reviews-v1", 8001)),
                "reviews-v2": one(ep("reviews-v2", 8002)),
            },
            version=2,
        )
    ]
    assert h.snapshot is h.resolver.snapshot
    assert h.resolver.interest == {"reviews"}


def test_eds_service_name_is_subscribed_and_endpoints_are_keyed_by_cluster() -> None:
    h = Harness()
    h.resolver.add_interest(["reviews"])
    h.send(LDS, testing.api_listener("reviews"))
    h.send(RDS, testing.route_config("reviews", [testing.route("reviews-v1")]))
    h.take_calls()
    cluster = testing.eds_cluster(
        "reviews-v1", eds_cluster_config={"eds_config": {"ads": {}}, "service_name": "rv1"}
    )
    h.send(CDS, cluster)
    assert h.take_calls() == [(EDS, frozenset({"rv1"}))]
    h.take_published()
    h.send(EDS, ep("rv1", 8001))
    (snap,) = h.take_published()
    assert snap.clusters == {"reviews-v1": one(cluster)}
    assert snap.endpoints == {"reviews-v1": one(ep("rv1", 8001))}


def test_removing_interest_unsubscribes_only_what_no_other_listener_needs() -> None:
    h = Harness()
    served(h, "a", {"shared": [1], "only-a": [2]})
    served(h, "b", {"shared": [1], "only-b": [3]})
    assert h.snapshot.clusters.keys() == {"shared", "only-a", "only-b"}

    h.resolver.remove_interest(["a"])
    assert h.take_calls() == [
        (LDS, frozenset({"b"})),
        (RDS, frozenset({"b"})),
        (CDS, frozenset({"shared", "only-b"})),
        (EDS, frozenset({"shared", "only-b"})),
    ]
    (snap,) = h.take_published()
    assert snap.listeners.keys() == {"b"}
    assert snap.routes.keys() == {"b"}
    assert snap.clusters.keys() == {"shared", "only-b"}
    assert snap.endpoints == {"shared": one(ep("shared", 1)), "only-b": one(ep("only-b", 3))}
    assert h.resolver.interest == {"b"}

    h.resolver.remove_interest(["a"])  # not of interest any more: nothing happens
    h.resolver.remove_interest(["b"])
    assert h.take_calls() == [(LDS, NONE), (RDS, NONE), (CDS, NONE), (EDS, NONE)]
    assert h.take_published() == [MeshSnapshot(version=snap.version + 1)]


def test_adding_interest_again_is_a_no_op() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    before = h.snapshot
    h.resolver.add_interest(["a"])
    assert h.take_calls() == []
    assert h.take_published() == []
    assert h.snapshot is before


def test_unchanged_resources_publish_nothing() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    before = h.snapshot
    h.send(CDS, testing.eds_cluster("a-v1"))
    h.send(EDS, ep("a-v1", 1))
    h.resolver.on_connection(False, "stream broke")
    h.resolver.on_connection(True, "")
    assert h.take_published() == []
    assert h.take_calls() == []
    assert h.snapshot is before


# -- make-before-break ---------------------------------------------------------------------


def test_route_to_a_new_cluster_waits_for_its_cluster_and_endpoints() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    new_routes = testing.route_config("a", [testing.route("a-v2")])

    h.send(RDS, new_routes)
    assert h.take_calls() == [(CDS, frozenset({"a-v1", "a-v2"}))]  # old kept, new asked
    assert h.take_published() == []
    assert h.snapshot is old

    h.send(CDS, testing.eds_cluster("a-v2"))
    assert h.take_calls() == [(EDS, frozenset({"a-v1", "a-v2"}))]
    assert h.take_published() == []  # a cluster without its endpoints has not resolved

    # Meanwhile the old routes' cluster still follows its updates.
    h.send(EDS, ep("a-v1", 1, 11))
    (meanwhile,) = h.take_published()
    assert meanwhile == attrs.evolve(old, endpoints={"a-v1": one(ep("a-v1", 1, 11))},
                                     version=old.version + 1)

    h.send(EDS, ep("a-v2", 2))
    (switched,) = h.take_published()
    assert switched == MeshSnapshot(
        listeners=old.listeners,
        routes={"a": one(new_routes)},
        clusters={"a-v2": one(testing.eds_cluster("a-v2"))},
        endpoints={"a-v2": one(ep("a-v2", 2))},
        version=old.version + 2,
    )
    # Only now is the old cluster let go.
    assert h.take_calls() == [(CDS, frozenset({"a-v2"})), (EDS, frozenset({"a-v2"}))]


def test_weighted_split_waits_for_every_cluster_it_names() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    split = testing.route_config("a", [testing.route({"a-v1": 90, "a-v2": 10})])
    h.send(RDS, split)
    h.send(CDS, testing.eds_cluster("a-v2"))
    assert h.take_published() == []  # a-v1 is ready, a-v2 is not: still the old routes
    assert h.snapshot is old
    h.send(EDS, ep("a-v2", 2))
    (snap,) = h.take_published()
    assert snap.routes == {"a": one(split)}
    assert snap.clusters == {
        "a-v1": one(testing.eds_cluster("a-v1")), "a-v2": one(testing.eds_cluster("a-v2"))
    }
    assert snap.endpoints == {"a-v1": one(ep("a-v1", 1)), "a-v2": one(ep("a-v2", 2))}


def test_later_route_update_replaces_a_pending_one() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    h.send(RDS, testing.route_config("a", [testing.route("a-v2")]))
    assert h.take_calls() == [(CDS, frozenset({"a-v1", "a-v2"}))]
    # The control plane changes its mind before a-v2 arrives: back to a-v1, new prefix.
    back = testing.route_config("a", [testing.route("a-v1", prefix="/api")])
    h.send(RDS, back)
    assert h.take_calls() == [(CDS, frozenset({"a-v1"}))]
    (snap,) = h.take_published()
    assert snap == attrs.evolve(old, routes={"a": one(back)}, version=old.version + 1)


def test_static_cluster_resolves_without_eds() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    static = {
        "@type": testing.CLUSTER, "name": "a-static", "type": "STATIC",
        "load_assignment": {k: v for k, v in ep("a-static", 7).items() if k != "@type"},
    }
    routes = testing.route_config("a", [testing.route("a-static")])
    h.send(RDS, routes)
    h.send(CDS, static)
    assert h.take_calls() == [(CDS, frozenset({"a-v1", "a-static"})),
                              (CDS, frozenset({"a-static"})), (EDS, NONE)]
    (snap,) = h.take_published()
    assert snap == attrs.evolve(
        old, routes={"a": one(routes)}, clusters={"a-static": one(static)},
        endpoints={"a-static": one(static).load_assignment}, version=old.version + 1,
    )


def test_cluster_changing_its_eds_name_keeps_the_old_endpoints_until_the_new_arrive() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    renamed = testing.eds_cluster(
        "a-v1", eds_cluster_config={"eds_config": {"ads": {}}, "service_name": "a-v1-new"}
    )
    h.send(CDS, renamed)
    assert h.take_calls() == [(EDS, frozenset({"a-v1-new"}))]
    assert h.take_published() == []
    assert h.snapshot is old  # the old cluster with its old endpoints
    h.resolver.add_interest(["other"])  # any later recompute, once "a-v1" is unwatched
    assert h.take_calls() == [(LDS, frozenset({"a", "other"}))]
    assert h.take_published() == []
    assert h.snapshot is old
    h.send(EDS, ep("a-v1-new", 5))
    (snap,) = h.take_published()
    assert snap == attrs.evolve(
        old, clusters={"a-v1": one(renamed)}, endpoints={"a-v1": one(ep("a-v1-new", 5))},
        version=old.version + 1,
    )


def test_route_to_a_cluster_known_absent_is_published_without_it() -> None:
    # A cluster the server says does not exist has resolved (to nothing): the routes are
    # not held back for it forever; requests to it fail as Envoy's 503 "no cluster".
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    routes = testing.route_config("a", [
        testing.route("nope", prefix="/nope"), testing.route("a-v1"),
    ])
    h.send(RDS, routes)
    assert h.take_published() == []
    h.send(CDS, absent=["nope"])
    assert h.published == [attrs.evolve(old, routes={"a": one(routes)}, version=old.version + 1)]
    assert "nope" not in h.snapshot.clusters


# -- absent and rejected resources -----------------------------------------------------------


def test_absent_listener_is_settled_and_reported_absent() -> None:
    h = Harness()
    h.resolver.add_interest(["nope"])
    event = h.resolver.settled_event("nope")
    assert not event.is_set()
    h.send(LDS, absent=["nope"])
    assert event.is_set()
    assert h.take_published() == [MeshSnapshot(absent=frozenset({"nope"}), version=1)]
    assert h.take_calls() == [(LDS, frozenset({"nope"}))]  # still asked for, in case

    # It turns up later after all.
    listener = testing.api_listener("nope")
    h.send(LDS, listener)
    assert h.take_published() == [MeshSnapshot(listeners={"nope": one(listener)}, version=2)]
    assert h.take_calls() == [(RDS, frozenset({"nope"}))]


def test_absent_name_not_of_interest_is_not_in_the_snapshot() -> None:
    h = Harness()
    h.send(LDS, absent=["other"])
    assert h.take_published() == []
    assert h.snapshot.absent == NONE


def test_rejected_update_keeps_the_last_good_value_and_is_reported() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    h.send(RDS, errors={"a": "RouteConfiguration 'a': bad regex"})
    h.send(CDS, errors={"a-v1": "Cluster 'a-v1': bad lb_policy"})
    assert h.take_published() == []
    assert h.snapshot is old
    assert h.resolver.errors() == {
        RDS: {"a": "RouteConfiguration 'a': bad regex"},
        CDS: {"a-v1": "Cluster 'a-v1': bad lb_policy"},
    }
    assert h.resolver.settled_event("a").is_set()

    # A good value clears the error of its own name only.
    fixed = testing.route_config("a", [testing.route("a-v1", prefix="/fixed")])
    h.send(RDS, fixed)
    assert h.resolver.errors() == {CDS: {"a-v1": "Cluster 'a-v1': bad lb_policy"}}
    assert h.take_published() == [
        attrs.evolve(old, routes={"a": one(fixed)}, version=old.version + 1)
    ]


def test_rejected_listener_never_received_is_settled_and_reported() -> None:
    h = Harness()
    h.resolver.add_interest(["bad"])
    event = h.resolver.settled_event("bad")
    h.send(LDS, errors={"bad": "Listener 'bad': no api_listener"})
    assert event.is_set()
    assert h.resolver.errors() == {LDS: {"bad": "Listener 'bad': no api_listener"}}
    assert h.take_published() == []  # nothing to serve, and not "absent" either
    assert h.snapshot == MeshSnapshot()


def test_rejected_new_cluster_releases_the_routes_that_wait_for_it() -> None:
    # Rejected with no last good value is known missing, as absent is.
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    routes = testing.route_config("a", [testing.route("a-v2", prefix="/v2"),
                                        testing.route("a-v1")])
    h.send(RDS, routes)
    assert h.take_published() == []
    h.send(CDS, errors={"a-v2": "Cluster 'a-v2': bad"})
    assert h.published == [attrs.evolve(old, routes={"a": one(routes)}, version=old.version + 1)]


def test_errors_of_names_no_longer_watched_are_forgotten() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    h.send(CDS, errors={"a-v1": "Cluster 'a-v1': bad"})
    assert h.resolver.errors() == {CDS: {"a-v1": "Cluster 'a-v1': bad"}}
    h.resolver.remove_interest(["a"])
    assert h.resolver.errors() == {}


# -- settled_event ---------------------------------------------------------------------------


def test_settled_only_once_the_listener_and_all_it_needs_resolved() -> None:
    h = Harness()
    h.resolver.add_interest(["a"])
    early = h.resolver.settled_event("a")
    assert h.resolver.settled_event("a") is early  # one event per listener
    steps = [
        (LDS, testing.api_listener("a")),
        (RDS, testing.route_config("a", [testing.route({"a-v1": 1, "a-v2": 1})])),
        (CDS, testing.eds_cluster("a-v1")),
        (CDS, testing.eds_cluster("a-v2")),
        (EDS, ep("a-v1", 1)),
    ]
    for type_url, resource in steps:
        h.send(type_url, resource)
        assert not early.is_set(), f"settled after {resource}"
        assert not h.resolver.settled_event("a").is_set()
    h.send(EDS, ep("a-v2", 2))
    assert early.is_set()
    late = h.resolver.settled_event("a")  # asked for after the fact: already set
    assert late is early


def test_settled_event_asked_after_resolution_is_set_at_once() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    assert h.resolver.settled_event("a").is_set()
    assert not h.resolver.settled_event("other").is_set()


def test_settled_when_the_route_configuration_is_known_absent() -> None:
    h = Harness()
    h.resolver.add_interest(["a"])
    event = h.resolver.settled_event("a")
    h.send(LDS, testing.api_listener("a"))
    assert not event.is_set()
    h.send(RDS, absent=["a"])  # the client's does-not-exist timer
    assert event.is_set()
    assert h.snapshot.routes == {}


def test_settled_when_a_needed_cluster_is_known_absent() -> None:
    h = Harness()
    h.resolver.add_interest(["a"])
    event = h.resolver.settled_event("a")
    h.send(LDS, testing.api_listener("a"))
    h.send(RDS, testing.route_config("a", [testing.route("a-v1")]))
    assert not event.is_set()
    h.send(CDS, absent=["a-v1"])
    assert event.is_set()


def test_settled_event_is_not_stale_after_interest_is_dropped_and_taken_again() -> None:
    # The mesh subscribes a listener only when its settled event is not set
    # (`_XdsSource.request`), so an event left set after `remove_interest` would keep a
    # listener watched again (an xDS-enabled server restarted on the same port) from ever
    # being asked for.
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.resolver.settled_event("a")
    assert old.is_set()
    h.resolver.remove_interest(["a"])
    again = h.resolver.settled_event("a")
    assert not again.is_set()
    h.resolver.add_interest(["a"])
    assert h.take_calls()[-1] == (LDS, frozenset({"a"}))
    assert not again.is_set()
    h.send(LDS, testing.api_listener("a"))
    h.send(RDS, testing.route_config("a", [testing.route("a-v1")]))
    h.send(CDS, testing.eds_cluster("a-v1"))
    assert not again.is_set()
    h.send(EDS, ep("a-v1", 1))
    assert again.is_set()


# -- EDS updates -----------------------------------------------------------------------------


def test_eds_update_of_one_cluster_changes_only_its_endpoints() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1], "a-v2": [2]})
    old = h.snapshot
    h.send(EDS, ep("a-v2", 2, 22))
    (snap,) = h.take_published()
    assert snap == attrs.evolve(
        old, endpoints={**old.endpoints, "a-v2": one(ep("a-v2", 2, 22))},
        version=old.version + 1,
    )
    # The untouched parts are the very objects of the previous snapshot.
    assert snap.endpoints["a-v1"] is old.endpoints["a-v1"]
    assert snap.clusters["a-v1"] is old.clusters["a-v1"]
    assert snap.routes["a"] is old.routes["a"]
    assert snap.listeners["a"] is old.listeners["a"]
    assert h.take_calls() == []


# -- deletions -------------------------------------------------------------------------------


def test_deleted_cluster_still_routed_to_keeps_serving_until_the_routes_move_off_it() -> None:
    # The server deleted a cluster the routes in force still name (a restarted registry
    # answering CDS before RDS does so): dropping it would fail every request routed there
    # until the new routes arrive. As gRPC's ignore_resource_deletion, its last version
    # keeps serving, its endpoints still watched, and it leaves with the last route to it.
    h = Harness()
    served(h, "a", {"a-v1": [1], "a-v2": [2]})
    old = h.snapshot
    h.send(CDS, removed=["a-v2"])
    assert h.take_calls() == []  # a-v2's endpoints are still watched
    assert h.take_published() == []  # nothing a request can see changed
    h.send(EDS, ep("a-v2", 7))
    (snap,) = h.take_published()
    assert snap.clusters == old.clusters
    assert snap.endpoints["a-v2"] == one(ep("a-v2", 7))
    h.send(RDS, testing.route_config("a", [testing.route("a-v1")]))
    assert h.take_calls() == [(CDS, frozenset({"a-v1"})), (EDS, frozenset({"a-v1"}))]
    (snap,) = h.take_published()
    assert set(snap.clusters) == set(snap.endpoints) == {"a-v1"}
    assert h.resolver.settled_event("a").is_set()


def test_deleted_cluster_no_route_names_leaves_at_once() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    h.send(RDS, testing.route_config("a", [testing.route("a-v2")]))
    h.send(CDS, testing.eds_cluster("a-v2"))
    h.send(EDS, ep("a-v2", 2))
    h.take_published()
    h.take_calls()
    h.send(CDS, removed=["a-v1"])  # no longer named: nothing to keep
    assert h.take_calls() == []
    assert h.take_published() == []
    h.send(RDS, testing.route_config("a", [testing.route("a-v1")]))
    assert h.take_calls() == [(CDS, frozenset({"a-v1"})), (EDS, NONE)]
    (snap,) = h.take_published(complete=False)
    assert snap.clusters == {}  # known not to exist: requests routed to it fail


def test_deleted_cluster_comes_back_with_its_endpoints() -> None:
    h = Harness()
    served(h, "a", {"a-v1": [1]})
    old = h.snapshot
    h.send(CDS, removed=["a-v1"])
    assert h.take_published() == [] and h.take_calls() == []
    h.send(CDS, testing.eds_cluster("a-v1"))
    assert h.take_calls() == []
    assert h.take_published() == []  # the same cluster as before
    h.send(EDS, ep("a-v1", 3))
    (snap,) = h.take_published()
    assert snap == attrs.evolve(old, endpoints={"a-v1": one(ep("a-v1", 3))},
                                version=old.version + 1)


def test_deleted_listener_leaves_the_snapshot_with_what_only_it_needed() -> None:
    h = Harness()
    served(h, "a", {"shared": [1], "only-a": [2]})
    served(h, "b", {"shared": [1]})
    old = h.snapshot
    h.send(LDS, removed=["a"])
    assert h.take_calls() == [
        (RDS, frozenset({"b"})), (CDS, frozenset({"shared"})), (EDS, frozenset({"shared"})),
    ]  # still watching the listener itself
    (snap,) = h.take_published()
    assert snap == MeshSnapshot(
        listeners={"b": old.listeners["b"]},
        routes={"b": old.routes["b"]},
        clusters={"shared": old.clusters["shared"]},
        endpoints={"shared": old.endpoints["shared"]},
        absent=frozenset({"a"}),
        version=old.version + 1,
    )
    assert h.resolver.interest == {"a", "b"}

    # Re-created: followed again from the top.
    h.send(LDS, testing.api_listener("a"))
    assert h.take_calls() == [(RDS, frozenset({"a", "b"}))]
    (back,) = h.take_published()
    assert back.absent == NONE
    assert back.listeners.keys() == {"a", "b"}
    assert back.routes.keys() == {"b"}


# -- inline routes and port listeners ----------------------------------------------------------


def test_inline_routes_listener_needs_no_rds() -> None:
    h = Harness()
    h.resolver.add_interest(["inline"])
    h.take_calls()
    routes = testing.route_config("inline", [testing.route("c1")])
    listener = testing.api_listener("inline", routes=routes)
    h.send(LDS, listener)
    assert h.take_calls() == [(CDS, frozenset({"c1"}))]  # straight to the clusters
    assert h.take_published() == [MeshSnapshot(listeners={"inline": one(listener)}, version=1)]
    h.send(CDS, testing.eds_cluster("c1"))
    assert h.take_calls() == [(EDS, frozenset({"c1"}))]
    h.send(EDS, ep("c1", 1))
    (snap,) = h.take_published()
    assert snap == MeshSnapshot(
        listeners={"inline": one(listener)},
        routes={"inline": one(listener).hcm.route_config},
        clusters={"c1": one(testing.eds_cluster("c1"))},
        endpoints={"c1": one(ep("c1", 1))},
        version=2,
    )
    assert h.resolver.settled_event("inline").is_set()

    # A listener update to a new cluster is make-before-break too.
    moved = testing.api_listener(
        "inline", routes=testing.route_config("inline", [testing.route("c2")])
    )
    h.send(LDS, moved)
    assert h.take_calls() == [(CDS, frozenset({"c1", "c2"}))]
    (interim,) = h.take_published()  # the new listener, the old routes and cluster
    assert interim == attrs.evolve(snap, listeners={"inline": one(moved)}, version=3)
    h.send(CDS, testing.eds_cluster("c2"))
    h.send(EDS, ep("c2", 2))
    (final,) = h.take_published()
    assert final == MeshSnapshot(
        listeners={"inline": one(moved)},
        routes={"inline": one(moved).hcm.route_config},
        clusters={"c2": one(testing.eds_cluster("c2"))},
        endpoints={"c2": one(ep("c2", 2))},
        version=4,
    )


def test_port_listener_routes_of_each_filter_chain_under_its_key() -> None:
    listener = testing.server_listener("0.0.0.0", 50051, name="srv", rds="srv-default")
    second = copy.deepcopy(listener["filter_chains"][0])
    second["filter_chain_match"] = {"source_type": "SAME_IP_OR_LOOPBACK"}
    second["filters"][0]["typed_config"]["rds"]["route_config_name"] = "srv-local"
    listener["filter_chains"].append(second)
    h = Harness()
    h.resolver.add_interest(["srv"])
    assert len(one(listener).chains()) == 2
    h.send(LDS, listener)
    assert h.take_calls() == [
        (LDS, frozenset({"srv"})), (RDS, frozenset({"srv-default", "srv-local"})),
    ]
    assert h.take_published() == [MeshSnapshot(listeners={"srv": one(listener)}, version=1)]
    every = [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]
    default_routes = testing.route_config("srv-default", every)
    local_routes = testing.route_config("srv-local", every)
    h.send(RDS, default_routes, local_routes)
    assert h.take_published() == [
        MeshSnapshot(
            listeners={"srv": one(listener)},
            routes={"srv": one(default_routes), "srv#chain-1": one(local_routes)},
            version=2,
        )
    ]
    assert h.take_calls() == []  # non-forwarding routes name no cluster


# -- local mode ------------------------------------------------------------------------------


def test_replace_all_watches_every_listener_and_publishes_complete_snapshots() -> None:
    h = Harness(local=True)
    first = decode(
        *testing.service("a", {"a-v1": [("10.0.0.1", 1)]}),
        *testing.service("b", {"b-v1": [("10.0.0.2", 2)]}),
    )
    h.resolver.replace_all(first)
    (snap,) = h.take_published()
    assert snap == MeshSnapshot(
        listeners=first[LDS], routes={"a": first[RDS]["a"], "b": first[RDS]["b"]},
        clusters=first[CDS], endpoints=first[EDS], version=1,
    )
    assert h.resolver.interest == {"a", "b"}

    second = decode(*testing.service("b", {"b-v2": [("10.0.0.3", 3)]}))
    h.resolver.replace_all(second)
    (snap,) = h.take_published()
    assert snap == MeshSnapshot(
        listeners=second[LDS], routes=second[RDS], clusters=second[CDS],
        endpoints=second[EDS], version=2,
    )
    assert h.resolver.interest == {"b"}
    h.resolver.replace_all(second)
    assert h.take_published() == []


def test_replace_all_does_not_wait_for_what_the_file_lacks() -> None:
    # In local mode every resource is known up front: one the file lacks is never coming,
    # so a route naming it must not keep the whole listener unroutable (which would make
    # every request to it "no listener for it in the mesh config").
    h = Harness(local=True)
    resources = decode(
        testing.api_listener("a"),
        testing.route_config("a", [
            testing.route("typo", prefix="/typo"),
            testing.route("no-endpoints", prefix="/empty"),
            testing.route("a-v1"),
        ]),
        testing.eds_cluster("a-v1"), ep("a-v1", 1),
        testing.eds_cluster("no-endpoints"),  # and no ClusterLoadAssignment for it
        testing.api_listener("no-routes"),  # and no RouteConfiguration for it
    )
    h.resolver.replace_all(resources)
    assert h.published == [
        MeshSnapshot(
            listeners=resources[LDS],
            routes={"a": resources[RDS]["a"]},
            clusters=resources[CDS],
            endpoints={"a-v1": resources[EDS]["a-v1"]},
            version=1,
        )
    ]
    assert h.resolver.settled_event("a").is_set()
    assert h.resolver.settled_event("no-routes").is_set()


@pytest.mark.parametrize("type_url", [LDS, RDS, CDS, EDS])
def test_empty_batches_publish_nothing(type_url: str) -> None:
    h = Harness()
    h.send(type_url)
    assert h.take_published() == []
    assert h.take_calls() == []
