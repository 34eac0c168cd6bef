"""`Mesh.status()`: the xDS connection, the versions held, and each NACK until it clears."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import attrs
import pytest

import sail
from sail import testing
from sail.xds.resolver import CDS, EDS, LDS, RDS
from tests.helpers import wait_until


def _bad_regex(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`resources` (a `testing.service`) with a RouteConfiguration the codec NACKs."""
    bad = copy.deepcopy(resources)
    bad[1]["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "("}}
    return bad


def test_a_nack_is_reported_with_its_reason_and_clears_on_a_good_version() -> None:
    good = testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})
    with testing.XdsServer(good) as xds, sail.Mesh.from_bootstrap(
        xds.bootstrap(), services=["reviews"]
    ) as mesh:
        first = wait_until(lambda: (s := mesh.status()).versions.get(EDS) and s)
        assert first.connected and first.server == xds.address and first.nacks == ()
        assert set(first.versions) == {LDS, RDS, CDS, EDS}
        held = first.versions[RDS]

        xds.put(_bad_regex(good)[1])
        status = wait_until(lambda: (s := mesh.status()).nacks and s)
        (nack,) = status.nacks
        assert (nack.type_url, nack.type_name, nack.name) == (
            RDS, "RouteConfiguration", "reviews"
        )
        assert "regex" in nack.reason
        assert nack.reason == wait_until(lambda: xds.nacks)[-1].error  # what the NACK said
        assert nack.version == str(xds.version) != held  # the version refused...
        assert status.versions[RDS] == held  # ...and the one still held
        assert mesh.is_mesh_host("reviews", "reviews") is True  # the last good routes serve

        xds.put(testing.route_config("reviews", [testing.route("reviews-v1", prefix="/v2")]))
        status = wait_until(lambda: (s := mesh.status()).versions[RDS] != held and s)
        assert status.nacks == ()
        assert status.versions[RDS] == str(xds.version)


def test_a_nack_of_a_resource_no_longer_subscribed_clears() -> None:
    with testing.XdsServer(
        _bad_regex(testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]}))
    ) as xds, sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        with pytest.raises(sail.RejectedService):
            mesh.is_mesh_host("reviews", "reviews")
        assert [(n.type_url, n.name) for n in mesh.status().nacks] == [(RDS, "reviews")]
        # The listener moves to another (good) RouteConfiguration: "reviews" is no longer
        # asked for, so its NACK is gone with it.
        xds.put(
            testing.api_listener("reviews", rds="reviews-2"),
            testing.route_config("reviews-2", [testing.route("reviews-v1")]),
        )
        wait_until(lambda: mesh.status().nacks == ())
        wait_until(lambda: "reviews" in mesh.snapshot.routes)
        assert mesh.is_mesh_host("reviews", "reviews") is True


def test_connection_state_follows_the_server() -> None:
    with testing.XdsServer(testing.service("reviews", {"v1": [("127.0.0.1", 1)]})) as xds:
        with sail.Mesh.from_bootstrap(xds.bootstrap(), discovery_timeout=5) as mesh:
            unstarted = mesh.status()
            assert (unstarted.connected, unstarted.server, unstarted.last_error) == (
                False, None, ""
            )
            assert mesh.is_mesh_host("reviews", "reviews") is True
            wait_until(lambda: mesh.status().connected)

            xds.stop_serving()
            down = wait_until(lambda: None if (s := mesh.status()).connected else s)
            assert down.server == xds.address
            assert xds.address in down.last_error
            assert down.versions[LDS]  # what was accepted is still held, and served
            assert mesh.is_mesh_host("reviews", "reviews") is True

            xds.start()  # back on the same port: the client reconnects (backoff ~1 s)
            up = wait_until(lambda: (s := mesh.status()).connected and s, timeout=20)
            assert up.server == xds.address


def test_status_is_a_frozen_value() -> None:
    status = sail.MeshStatus(connected=True, server=None, last_error="", versions={LDS: "1"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        status.connected = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        status.versions[LDS] = "2"  # type: ignore[index]
    nack = sail.Nack(LDS, "reviews", "bad", "3")
    assert nack.type_name == "Listener"


# -- local mode -----------------------------------------------------------------------------


def test_local_mode_reports_a_bad_resource_until_it_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    good = testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})
    path.write_text(json.dumps(good))
    with sail.Mesh.local(path, poll_interval=0.02) as mesh:
        first = mesh.status()
        assert (first.connected, first.server, first.last_error, first.nacks) == (
            True, None, "", ()
        )
        assert first.versions == {LDS: "1", RDS: "1", CDS: "1", EDS: "1"}

        path.write_text(json.dumps(_bad_regex(good)))
        status = wait_until(lambda: (s := mesh.status()).nacks and s)
        (nack,) = status.nacks
        assert (nack.type_url, nack.name, nack.version) == (RDS, "reviews", "")
        assert str(path) in nack.reason and "regex" in nack.reason
        assert status.versions[RDS] == "2"
        assert mesh.is_mesh_host("reviews", "reviews") is True  # its last good version

        path.write_text("[ {")  # unreadable: the last config and its report stay
        status = wait_until(lambda: (s := mesh.status()).last_error and s)
        assert str(path) in status.last_error and status.nacks == (nack,)

        path.write_text(json.dumps(good) + " ")
        status = wait_until(lambda: (s := mesh.status()).versions[RDS] == "3" and s)
        assert (status.nacks, status.last_error) == ((), "")
