from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sail import testing
from sail.cli.main import main


def write(tmp_path: Path, resources: list[dict[str, object]]) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"resources": resources}))
    return path


def test_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, testing.service("reviews", {"r": [("127.0.0.1", 1)]}))
    assert main(["check", str(path)]) == 0
    assert "0 rejected" in capsys.readouterr().out


def test_check_names_the_bad_resource(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resources = testing.service("reviews", {"r": [("127.0.0.1", 1)]})
    resources[2]["lb_policy"] = "CLUSTER_PROVIDED"
    path = write(tmp_path, resources)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "'r'" in err and "lb_policy" in err


def test_config_dump_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, testing.service("reviews", {"r": [("127.0.0.1", 9080)]}))
    assert main(["config-dump", "--local", str(path)]) == 0
    dump = json.loads(capsys.readouterr().out)
    assert dump["listeners"].keys() == {"reviews"}
    endpoint = dump["endpoints"]["r"]["localities"][0]["endpoints"][0]
    assert (endpoint["address"], endpoint["port"]) == ("127.0.0.1", 9080)


def test_config_dump_from_xds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with testing.XdsServer(testing.service("reviews", {"r": [("127.0.0.1", 9080)]})) as xds:
        boot = tmp_path / "bootstrap.json"
        boot.write_text(json.dumps(xds.bootstrap_json()))
        assert main(["config-dump", "--bootstrap", str(boot), "--service", "reviews"]) == 0
    dump = json.loads(capsys.readouterr().out)
    assert dump["clusters"]["r"]["name"] == "r"


def test_bad_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("resources: [")
    assert main(["config-dump", "--local", str(path)]) == 1
    assert "broken.yaml" in capsys.readouterr().err
