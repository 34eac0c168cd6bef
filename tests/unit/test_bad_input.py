"""Bad config and bootstrap: a clear error or NACK, never a hang, never a traceback from
sail's own thread."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import sail
from sail import testing
from sail.http.errors import NoHealthyUpstreamError
from tests.helpers import wait_until


@pytest.fixture
def xds() -> Iterator[testing.XdsServer]:
    with testing.XdsServer(testing.service("reviews", {"reviews-v1": [("127.0.0.1", 1)]})) as s:
        yield s


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith("sail")]
    assert not crashes, [r.getMessage() for r in crashes]


def test_malformed_bootstrap_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text('{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}')
    with pytest.raises(sail.BootstrapError) as info:
        sail.Mesh.from_bootstrap(path)
    assert str(path) in str(info.value)
    assert "xds_servers[0].server_uri" in str(info.value)
    path.write_text("{not json")
    with pytest.raises(sail.BootstrapError, match="JSON"):
        sail.Mesh.from_bootstrap(path)


def test_unknown_lb_policy_is_nacked_and_last_good_kept(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        assert mesh.is_mesh_host("reviews", "reviews")
        xds.put(testing.eds_cluster("reviews-v1", lb_policy="CLUSTER_PROVIDED"))
        nack = wait_until(lambda: xds.nacks and xds.nacks[-1])
        assert "reviews-v1" in nack.error and "lb_policy" in nack.error
        assert mesh.snapshot.clusters["reviews-v1"].lb_policy.name == "round_robin"


def test_bad_regex_is_nacked_with_field(xds: testing.XdsServer) -> None:
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh:
        assert mesh.is_mesh_host("reviews", "reviews")
        bad = testing.route_config("reviews", [testing.route("reviews-v1")])
        bad["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "a(b"}}
        xds.put(bad)
        nack = wait_until(lambda: xds.nacks and xds.nacks[-1])
        assert "routes[0].match.safe_regex" in nack.error


def test_route_to_missing_cluster_fails_fast_with_names(xds: testing.XdsServer) -> None:
    xds.set(
        [
            testing.api_listener("reviews"),
            testing.route_config("reviews", [testing.route("reviews-v9")]),
        ]
    )
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh, mesh.client() as http:
        start = time.monotonic()
        with pytest.raises(NoHealthyUpstreamError) as info:
            http.get("http://reviews/")
        assert time.monotonic() - start < 5
    assert "reviews-v9" in str(info.value) and "'reviews'" in str(info.value)


def test_cluster_with_no_endpoints(xds: testing.XdsServer) -> None:
    xds.set(testing.service("reviews", {"reviews-v1": []}))
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh, mesh.client() as http:
        with pytest.raises(httpx.ConnectError) as info:
            http.get("http://reviews/")
    assert "reviews-v1" in str(info.value) and "no endpoints" in str(info.value)


def test_unknown_mesh_service_routes_nowhere_and_raises(xds: testing.XdsServer) -> None:
    xds.set(
        [
            testing.api_listener("reviews"),
            testing.route_config("reviews", [testing.route("reviews-v1", prefix="/only")]),
            *testing.service("other", {"reviews-v1": [("127.0.0.1", 1)]})[2:],
        ]
    )
    with sail.Mesh.from_bootstrap(xds.bootstrap()) as mesh, mesh.client() as http:
        with pytest.raises(sail.NoRoute) as info:
            http.get("http://reviews/elsewhere")
    assert "reviews" in str(info.value) and "/elsewhere" in str(info.value)


# -- reproducers found by fuzzing: sail's own error, never another exception ----------------

CLUSTER_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_URL = "type.googleapis.com/envoy.config.listener.v3.Listener"


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("type.json", '[{"@type": 5}]', "[0].@type: expected a string"),
        ("nested_type.json",
         json.dumps([{"@type": LISTENER_URL, "name": "l",
                      "api_listener": {"api_listener": {"@type": 5}}}]),
         "api_listener.api_listener.@type: expected a string"),
        ("inf.yaml", f'- "@type": {CLUSTER_URL}\n  name: c\n  connect_timeout: .inf\n',
         "connect_timeout: inf is not a finite number"),
        ("big.json",
         json.dumps([{"@type": CLUSTER_URL, "name": "c"}])[:-2] + ', "lb_policy": 1e400}]',
         "lb_policy: inf is not a finite number"),
        ("deep.json", "[" * 1000 + "]" * 1000, "nested too deeply"),
        ("deep.yaml", "[" * 1000 + "]" * 1000, "nested too deeply"),
        ("tag.yaml", "- !!timestamp 2020-13-45\n", "not valid YAML"),
        ("latin1.yaml", "name: caf\xe9\n", "not UTF-8"),
    ],
)
def test_local_file_crashers_are_config_errors(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    from sail.local import load_file

    path = tmp_path / name
    path.write_bytes(text.encode("latin-1" if "latin1" in name else "utf-8"))
    try:
        _, errors = load_file(path)
    except sail.ConfigError as exc:  # the file as a whole
        message = str(exc)
    else:  # one entry: named, the others kept (the next test)
        assert len(errors) == 1, errors
        [message] = errors.values()
    assert str(path) in message and reason in message


def test_a_local_file_with_one_bad_entry_keeps_the_good_ones(tmp_path: Path) -> None:
    from sail.local import load_file

    good = [testing.eds_cluster("a"), testing.eds_cluster("b")]
    entries = [good[0], {"@type": 5, "name": "typo"}, "not an object",
               {"@type": CLUSTER_URL, "name": "c", "lb_policy": "NOPE"},
               {"@type": CLUSTER_URL, "name": "d", "connect_timeout": 1e400}, good[1]]
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(entries).replace("Infinity", "1e400"))
    resources, errors = load_file(path)
    assert sorted(resources[CLUSTER_URL]) == ["a", "b"]
    assert sorted(errors) == [("", "[2]"), ("", "typo"), (CLUSTER_URL, "c"), (CLUSTER_URL, "d")]
    assert "[1].@type: expected a string" in errors[("", "typo")]
    assert "[2]: expected an object" in errors[("", "[2]")]
    assert "[3]" in errors[(CLUSTER_URL, "c")] and "lb_policy" in errors[(CLUSTER_URL, "c")]
    assert "connect_timeout: inf is not a finite number" in errors[(CLUSTER_URL, "d")]


def test_a_reload_with_a_bad_entry_keeps_the_others_and_reports_it(tmp_path: Path) -> None:
    listener = testing.api_listener("svc", routes=testing.route_config(
        "svc", [testing.route("svc")]))
    others = [testing.eds_cluster("svc"), testing.load_assignment("svc", [("127.0.0.1", 1)])]
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps([listener, *others]))
    with sail.Mesh.local(path, poll_interval=0) as mesh:
        assert mesh.is_mesh_host("svc", "svc")
        moved = testing.api_listener("svc", routes=testing.route_config(
            "svc", [testing.route("new")]))
        path.write_text(json.dumps([moved, *others, testing.eds_cluster("new"),
                                    {"@type": 5, "name": "typo"}]))
        mesh._source.config.reload()
        assert set(mesh.snapshot.clusters) == {"new"}  # the good entries were taken
        [nack] = mesh.status().nacks
        assert nack.name == "typo" and "@type: expected a string" in nack.reason


def test_bootstrap_crashers_are_bootstrap_errors() -> None:
    from sail.bootstrap import parse_bootstrap

    with pytest.raises(sail.BootstrapError, match="nested too deeply"):
        parse_bootstrap("[" * 1100, source="b.json")
    server = {"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}
    deep = json.dumps({"xds_servers": [server], "node": {"metadata": _nested(600)}})
    with pytest.raises(sail.BootstrapError, match=r"b\.json: node\.metadata: nested"):
        parse_bootstrap(deep, source="b.json")


@pytest.mark.parametrize("text", ["[" * 1000, "a: !!timestamp 2020-02-30\n", "!!bool x\n"])
def test_istio_yaml_crashers_are_istio_errors(text: str) -> None:
    from sail.registry.istio.errors import IstioConfigError
    from sail.registry.istio.parse import load_documents

    with pytest.raises(IstioConfigError, match=r"^mesh\.yaml: invalid YAML"):
        load_documents(text, "mesh.yaml")


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_fault_typed_struct_with_non_finite_number_is_invalid(number: float) -> None:
    from google.protobuf import any_pb2, struct_pb2
    from xds.type.v3 import typed_struct_pb2

    from sail.xds.codec.decode_fault import decode_fault_config
    from sail.xds.codec.extensions import FAULT
    from sail.xds.codec.validation import Invalid

    value = struct_pb2.Struct()
    value["x"] = number
    config = any_pb2.Any()
    config.Pack(typed_struct_pb2.TypedStruct(type_url=FAULT, value=value))
    with pytest.raises(Invalid, match="not an HTTPFault"):
        decode_fault_config(config)


def _alias_bomb(levels: int) -> str:
    """A local-mode YAML file of ~500 bytes whose anchors and aliases expand to 10**levels
    values (a "billion laughs")."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    body = "\n".join("        " + line for line in lines)
    return (f'- "@type": {CLUSTER_URL}\n  name: c\n  metadata:\n    filter_metadata:\n'
            f"      x:\n{body}\n")


def test_local_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    from sail.local import load_file

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))  # 10**9 values, were they expanded
    with pytest.raises(sail.ConfigError, match="its YAML aliases expand") as info:
        load_file(path)
    assert str(path) in str(info.value)
