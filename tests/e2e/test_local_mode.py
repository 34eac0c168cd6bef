"""Local mode: a file of Envoy resources, reloaded live, no control plane."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import yaml

import sail
from sail import testing
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def write(path: Path, backends: dict[str, int], weights: dict[str, int]) -> None:
    resources = testing.service(
        "reviews",
        {f"reviews-{n}": [("127.0.0.1", backends[n])] for n in weights},
        weights={f"reviews-{n}": w for n, w in weights.items()},
    )
    path.write_text(yaml.safe_dump({"resources": resources}))


def test_local_file_drives_split_and_reloads(tmp_path: Path, backends: dict[str, int]) -> None:
    path = tmp_path / "mesh.yaml"
    write(path, backends, {"a": 50, "b": 50})
    with sail.Mesh.local(path, poll_interval=0.05) as mesh, mesh.client() as http:
        names = collections.Counter(http.get("http://reviews/").json()["name"] for _ in range(400))
        assert names["a"] == pytest.approx(200, abs=40)
        version = mesh.snapshot.version
        write(path, backends, {"c": 100})
        wait_until(lambda: mesh.snapshot.version > version)
        assert {http.get("http://reviews/").json()["name"] for _ in range(20)} == {"c"}


def test_bad_reload_keeps_last_good(tmp_path: Path, backends: dict[str, int]) -> None:
    path = tmp_path / "mesh.json"
    resources = testing.service("reviews", {"reviews-a": [("127.0.0.1", backends["a"])]})
    path.write_text(json.dumps(resources))
    with sail.Mesh.local(path, poll_interval=0.05) as mesh, mesh.client() as http:
        assert http.get("http://reviews/").json()["name"] == "a"
        resources[1]["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "("}}
        path.write_text(json.dumps(resources) + " ")
        source = mesh._source.config  # type: ignore[attr-defined]
        wait_until(lambda: source.errors)
        assert "regex" in next(iter(source.errors.values()))
        assert http.get("http://reviews/").json()["name"] == "a"


def test_first_load_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("resources: [ {")
    with pytest.raises(sail.ConfigError, match=r"bad\.yaml"):
        sail.Mesh.local(path)


def test_emptied_file_keeps_last_good(tmp_path: Path, backends: dict[str, int]) -> None:
    path = tmp_path / "mesh.yaml"
    write(path, backends, {"a": 100})
    with sail.Mesh.local(path, poll_interval=0.05) as mesh, mesh.client() as http:
        path.write_text("")
        source = mesh._source.config  # type: ignore[attr-defined]
        wait_until(lambda: source.errors)
        assert "no resources" in next(iter(source.errors.values()))
        assert http.get("http://reviews/").json()["name"] == "a"
