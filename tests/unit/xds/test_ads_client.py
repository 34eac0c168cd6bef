"""The ADS client against a real in-process ADS server over loopback gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sail import testing
from sail.bootstrap import parse_bootstrap
from sail.xds.client import AdsClient, Backoff
from sail.xds.resolver import CDS, EDS, LDS, RDS
from tests.helpers import Recorder, free_port, wait_until

FAST = Backoff(initial=0.05, multiplier=1.6, maximum=0.5, jitter=0.1)


@pytest.fixture
def server() -> Iterator[testing.XdsServer]:
    with testing.XdsServer(
        testing.service("reviews", {"reviews-v1": [("127.0.0.1", 9001)]})
    ) as srv:
        yield srv


def make_client(server: testing.XdsServer, recorder: Recorder, **kwargs: object) -> AdsClient:
    client = AdsClient(
        server.bootstrap(),
        recorder,
        backoff=FAST,
        connect_timeout=1.0,
        **kwargs,  # type: ignore[arg-type]
    )
    client.start()
    return client


def test_ack_carries_version_and_nonce_per_type(server, recorder):
    client = make_client(server, recorder)
    try:
        client.set_names(LDS, ["reviews"])
        client.set_names(CDS, ["reviews-v1"])
        wait_until(lambda: (LDS, "reviews") in recorder.values)
        wait_until(lambda: (CDS, "reviews-v1") in recorder.values)
        listener = recorder.values[(LDS, "reviews")]
        assert listener.hcm.rds_name == "reviews"
        acks = wait_until(lambda: len(server.acks) >= 2 and server.acks)
        lds_ack = acks[("sail-test", LDS)]
        cds_ack = acks[("sail-test", CDS)]
        assert not lds_ack.nacked and not cds_ack.nacked
        assert lds_ack.version == str(server.store.type_version(LDS))
        assert lds_ack.nonce != cds_ack.nonce
        assert client.status().versions[LDS] == lds_ack.version
    finally:
        client.close()


def test_nack_names_resource_and_reason_and_keeps_last_good(server, recorder):
    client = make_client(server, recorder)
    try:
        client.set_names(RDS, ["reviews"])
        wait_until(lambda: (RDS, "reviews") in recorder.values)
        good = recorder.values[(RDS, "reviews")]
        bad = testing.route_config("reviews", [testing.route("reviews-v1")])
        bad["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "/(unclosed"}}
        server.put(bad)
        nack = wait_until(lambda: server.nacks and server.nacks[-1])
        assert nack.type_url == RDS
        assert "reviews" in nack.error and "regex" in nack.error
        # The NACK repeats the version the client still runs.
        assert nack.version == client.status().versions[RDS]
        assert recorder.values[(RDS, "reviews")] == good
        assert (RDS, "reviews") in recorder.errors
    finally:
        client.close()


def test_partial_nack_applies_the_valid_resources(server, recorder):
    server.put(testing.eds_cluster("ratings"))
    client = make_client(server, recorder)
    try:
        client.set_names(CDS, ["reviews-v1", "ratings"])
        wait_until(lambda: (CDS, "ratings") in recorder.values)
        server.put(
            testing.eds_cluster("reviews-v1", lb_policy="RANDOM"),
            testing.eds_cluster("ratings", lb_policy="CLUSTER_PROVIDED"),
        )
        wait_until(lambda: server.nacks)
        wait_until(lambda: recorder.values[(CDS, "reviews-v1")].lb_policy.name == "random")
        assert recorder.values[(CDS, "ratings")].lb_policy.name == "round_robin"
        assert "ratings" in server.nacks[-1].error
        assert "reviews-v1" not in server.nacks[-1].error
    finally:
        client.close()


def test_reconnects_after_server_restart(server, recorder):
    client = make_client(server, recorder)
    try:
        client.set_names(EDS, ["reviews-v1"])
        wait_until(lambda: (EDS, "reviews-v1") in recorder.values)
        server.stop_serving()
        wait_until(lambda: not recorder.connected)
        server.put(testing.load_assignment("reviews-v1", [("127.0.0.1", 9002)]))
        server.start()
        wait_until(
            lambda: recorder.values[(EDS, "reviews-v1")].endpoints[0].port == 9002, timeout=15
        )
        assert recorder.connected
    finally:
        client.close()


def test_unknown_listener_is_absent_after_one_round_trip(server, recorder):
    client = make_client(server, recorder)
    try:
        client.set_names(LDS, ["reviews", "nosuch"])
        wait_until(lambda: (LDS, "nosuch") in recorder.absent, timeout=2)
        assert (LDS, "reviews") in recorder.values
    finally:
        client.close()


def test_does_not_exist_timer_for_route_config(server, recorder):
    client = make_client(server, recorder, does_not_exist_timeout=0.3)
    try:
        client.set_names(RDS, ["missing-routes"])
        wait_until(lambda: (RDS, "missing-routes") in recorder.absent, timeout=3)
        # A resource that appears later is delivered and no longer absent.
        server.put(testing.route_config("missing-routes", [testing.route("reviews-v1")]))
        wait_until(lambda: (RDS, "missing-routes") in recorder.values)
        assert (RDS, "missing-routes") not in recorder.absent
    finally:
        client.close()


def test_listener_deletion_and_ignore_resource_deletion(recorder):
    resources = testing.service("reviews", {"reviews-v1": [("127.0.0.1", 9001)]})
    with testing.XdsServer(resources) as server:
        client = make_client(server, recorder)
        try:
            client.set_names(LDS, ["reviews"])
            wait_until(lambda: (LDS, "reviews") in recorder.values)
            server.remove(LDS, "reviews")
            wait_until(lambda: (LDS, "reviews") in recorder.removed)
        finally:
            client.close()

    kept = Recorder()
    with testing.XdsServer(resources) as server:
        boot = server.bootstrap_json()
        boot["xds_servers"][0]["server_features"] = ["xds_v3", "ignore_resource_deletion"]
        client = AdsClient(parse_bootstrap(boot), kept, backoff=FAST)
        client.start()
        try:
            client.set_names(LDS, ["reviews"])
            wait_until(lambda: (LDS, "reviews") in kept.values)
            server.remove(LDS, "reviews")
            wait_until(lambda: server.acks[("sail-test", LDS)].version == str(server.version))
            assert (LDS, "reviews") in kept.values
            assert (LDS, "reviews") not in kept.removed
        finally:
            client.close()


@pytest.mark.parametrize("connect_timeout", [0.3, 60])
def test_falls_back_to_second_server(server, recorder, connect_timeout):
    # With a 60 s connect timeout, far beyond the wait, only a server that refuses being
    # left at once lets the client reach the second in time (gRFC A71's fallback).
    dead = f"127.0.0.1:{free_port()}"
    boot = server.bootstrap_json()
    boot["xds_servers"].insert(0, {"server_uri": dead, "channel_creds": [{"type": "insecure"}]})
    client = AdsClient(parse_bootstrap(boot), recorder, backoff=FAST,
                       connect_timeout=connect_timeout)
    client.start()
    try:
        client.set_names(LDS, ["reviews"])
        wait_until(lambda: (LDS, "reviews") in recorder.values, timeout=10)
        assert client.status().server == server.address
    finally:
        client.close()


def test_stale_nonce_is_ignored_by_server_and_client_acks_latest(server, recorder):
    client = make_client(server, recorder)
    try:
        client.set_names(EDS, ["reviews-v1"])
        wait_until(lambda: (EDS, "reviews-v1") in recorder.values)
        for port in range(9100, 9105):
            server.put(testing.load_assignment("reviews-v1", [("127.0.0.1", port)]))
        wait_until(lambda: recorder.values[(EDS, "reviews-v1")].endpoints[0].port == 9104)
        ack = wait_until(
            lambda: (
                server.acks[("sail-test", EDS)].version == str(server.version)
                and server.acks[("sail-test", EDS)]
            )
        )
        assert not ack.nacked
    finally:
        client.close()


def test_names_added_before_an_answer_are_not_taken_for_absent(recorder):
    """Two first requests at once (a service calling two new services): the answer to the
    first subscription must not count as a verdict on the second name."""
    resources = [
        *testing.service("details", {"d": [("127.0.0.1", 1)]}),
        *testing.service("reviews", {"r": [("127.0.0.1", 2)]}),
    ]
    for _ in range(5):  # the race was easy to hit; a few rounds make the test sharp
        rec = Recorder()
        with testing.XdsServer(resources) as server:
            client = make_client(server, rec)
            try:
                client.set_names(CDS, ["d"])  # bring the stream up first
                wait_until(lambda r=rec: (CDS, "d") in r.values)
                client.set_names(LDS, ["details"])
                client.set_names(LDS, ["details", "reviews"])
                wait_until(lambda r=rec: (LDS, "reviews") in r.values, timeout=5)
                wait_until(lambda r=rec: (LDS, "details") in r.values, timeout=5)
                said_absent = [e[1][4] for e in rec.events if e[0] == "resources" and e[1][4]]
                assert said_absent == []
            finally:
                client.close()
