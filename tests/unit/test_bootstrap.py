from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from sail.bootstrap import (
    Authority,
    Bootstrap,
    ChannelCreds,
    XdsServer,
    load_bootstrap,
    parse_bootstrap,
)
from sail.errors import BootstrapError
from sail.model import Locality

if TYPE_CHECKING:
    from pathlib import Path

SERVER = {"server_uri": "registry.mesh:15010", "channel_creds": [{"type": "insecure"}]}
MINIMAL: dict[str, Any] = {"xds_servers": [SERVER]}

FULL: dict[str, Any] = {
    "xds_servers": [
        {
            "server_uri": "xds.primary:443",
            "channel_creds": [
                {"type": "google_default"},
                {"type": "tls", "config": {"ca_certificate_file": "/certs/ca.pem"}},
                {"type": "insecure"},
            ],
            "server_features": ["xds_v3", "ignore_resource_deletion"],
        },
        {"server_uri": "xds.fallback:15010", "channel_creds": [{"type": "insecure"}]},
    ],
    "node": {
        "id": "sidecar~10.0.0.1~reviews-v2~default.svc.cluster.local",
        "cluster": "reviews",
        "locality": {"region": "eu-west1", "zone": "eu-west1-b", "sub_zone": "rack7"},
        "metadata": {"labels": {"version": "v2"}, "ports": [9080, 9443]},
    },
    "certificate_providers": {
        "default": {
            "plugin_name": "file_watcher",
            "config": {"certificate_file": "/certs/cert.pem", "private_key_file": "/certs/key.pem",
                       "refresh_interval": "60s"},
        }
    },
    "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
    "client_default_listener_resource_name_template": (
        "xdstp://mesh.example/envoy.config.listener.v3.Listener/%s"
    ),
    "authorities": {
        "mesh.example": {},
        "other.example": {
            "client_listener_resource_name_template": "xdstp://other.example/listeners/%s",
            "xds_servers": [{"server_uri": "xds.other:443", "channel_creds": [{"type": "tls"}]}],
        },
    },
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**MINIMAL, **changes}


def server(**changes: Any) -> dict[str, Any]:
    return with_(xds_servers=[{**SERVER, **changes}])


def error_of(data: Any, source: str = "/tmp/b.json") -> str:
    with pytest.raises(BootstrapError) as info:
        parse_bootstrap(json.dumps(data) if not isinstance(data, str) else data, source=source)
    return str(info.value)


# -- valid input -----------------------------------------------------------------------------


def test_full_example() -> None:
    b = parse_bootstrap(json.dumps(FULL), source="/etc/sail/bootstrap.json")

    primary, fallback = b.xds_servers
    assert primary.server_uri == "xds.primary:443"
    assert [c.type for c in primary.channel_creds] == ["google_default", "tls", "insecure"]
    assert primary.creds == ChannelCreds("tls", {"ca_certificate_file": "/certs/ca.pem"})
    assert not primary.insecure
    assert primary.ignore_resource_deletion
    assert primary.server_features == {"xds_v3", "ignore_resource_deletion"}
    assert fallback.insecure and not fallback.ignore_resource_deletion

    assert b.node.id.startswith("sidecar~")
    assert b.node.cluster == "reviews"
    assert b.node.locality == Locality("eu-west1", "eu-west1-b", "rack7")
    assert b.node.metadata["labels"]["version"] == "v2"
    assert b.node.metadata["ports"] == (9080, 9443)

    provider = b.certificate_providers["default"]
    assert provider.plugin_name == "file_watcher"
    assert provider.config["refresh_interval"] == "60s"

    assert b.server_listener_resource_name_template is not None
    assert b.authorities["mesh.example"] == Authority(
        "xdstp://mesh.example/envoy.config.listener.v3.Listener/%s", ()
    )
    assert b.authorities["other.example"].xds_servers[0].server_uri == "xds.other:443"
    assert b.source == "/etc/sail/bootstrap.json"


def test_minimal_example_defaults() -> None:
    b = parse_bootstrap(json.dumps(MINIMAL))
    assert b.xds_servers == (XdsServer("registry.mesh:15010", (ChannelCreds("insecure"),)),)
    assert b.node.id == ""
    assert b.node.cluster == ""
    assert b.node.locality == Locality()
    assert b.node.metadata == {}
    assert b.certificate_providers == {}
    assert b.authorities == {}
    assert b.server_listener_resource_name_template is None
    assert b.client_default_listener_resource_name_template == "%s"
    assert b.source == "<inline>"


def test_accepts_bytes_and_mappings() -> None:
    assert parse_bootstrap(json.dumps(MINIMAL).encode()) == parse_bootstrap(MINIMAL)


def test_unknown_fields_are_ignored() -> None:
    data = {
        **MINIMAL,
        "future_field": {"anything": [1, 2]},
        "node": {"id": "n1", "user_agent_name": "x", "locality": {"planet": "earth"}},
        "xds_servers": [{**SERVER, "ttl": 3, "channel_creds": [{"type": "insecure", "x": 1}]}],
    }
    b = parse_bootstrap(data)
    assert b.node.id == "n1"
    assert b.xds_servers[0].creds.type == "insecure"


def test_first_supported_creds_wins() -> None:
    b = parse_bootstrap(server(channel_creds=[{"type": "xds"}, {"type": "insecure"}]))
    assert b.xds_servers[0].insecure


def test_parsed_config_is_read_only() -> None:
    b = parse_bootstrap(FULL)
    with pytest.raises(TypeError):
        b.node.metadata["labels"]["version"] = "v3"
    with pytest.raises(TypeError):
        b.authorities["x"] = b.authorities["mesh.example"]  # type: ignore[index]


def test_authority_without_servers_falls_back_to_top_level() -> None:
    b = parse_bootstrap(FULL)
    mesh = "xdstp://mesh.example/envoy.config.listener.v3.Listener/reviews"
    other = "xdstp://other.example/listeners/reviews"
    assert b.servers_for(mesh) == b.xds_servers
    assert b.servers_for(other) == b.authorities["other.example"].xds_servers
    assert b.servers_for("reviews") == b.xds_servers
    with pytest.raises(BootstrapError, match=r"/b\.json: authorities: .*'nowhere'"):
        parse_bootstrap(FULL, source="/b.json").servers_for("xdstp://nowhere/x")


# -- listener names --------------------------------------------------------------------------


def test_listener_name_default_template_is_identity() -> None:
    b = parse_bootstrap(MINIMAL)
    assert b.listener_name("reviews.default:9080") == "reviews.default:9080"
    assert b.listener_name("xds:///reviews") == "reviews"
    assert b.listener_name("xds:reviews") == "reviews"


def test_listener_name_plain_template_is_not_encoded() -> None:
    b = parse_bootstrap(with_(client_default_listener_resource_name_template="mesh/%s/%s"))
    assert b.listener_name("a b") == "mesh/a b/a b"


def test_listener_name_xdstp_template_percent_encodes() -> None:
    b = parse_bootstrap(FULL)
    prefix = "xdstp://mesh.example/envoy.config.listener.v3.Listener/"
    assert b.listener_name("reviews:9080") == prefix + "reviews:9080"
    # '/' and the RFC 3986 path characters stay; everything else is percent-encoded.
    assert b.listener_name("ns/svc@x!$&'()*+,;=") == prefix + "ns/svc@x!$&'()*+,;="
    assert b.listener_name("a b?c#d%e") == prefix + "a%20b%3Fc%23d%25e"
    assert b.listener_name("é") == prefix + "%C3%A9"
    # The URI path is decoded first, then re-encoded: the name grpcio's C-core resolver builds.
    assert b.listener_name("xds:///ns/a%20b@c:80,%5Bx%5D") == prefix + "ns/a%20b@c:80,%5Bx%5D"


def test_listener_name_with_target_authority() -> None:
    b = parse_bootstrap(FULL)
    assert (
        b.listener_name("xds://other.example/reviews") == "xdstp://other.example/listeners/reviews"
    )
    assert b.listener_name("xds://mesh.example/a%20b") == (
        "xdstp://mesh.example/envoy.config.listener.v3.Listener/a%20b"
    )


def test_listener_name_unknown_authority() -> None:
    b = parse_bootstrap(FULL, source="/etc/b.json")
    with pytest.raises(BootstrapError, match=r"^/etc/b\.json: authorities: .*'nowhere'"):
        b.listener_name("xds://nowhere/reviews")


def test_server_listener_name() -> None:
    assert parse_bootstrap(FULL).server_listener_name("0.0.0.0:8080") == (
        "grpc/server?xds.resource.listening_address=0.0.0.0:8080"
    )
    tpl = "xdstp://mesh.example/envoy.config.listener.v3.Listener/grpc/server/%s"
    b = parse_bootstrap(with_(server_listener_resource_name_template=tpl))
    assert b.server_listener_name("[::]:8080") == tpl.replace("%s", "%5B::%5D:8080")
    with pytest.raises(BootstrapError, match="server_listener_resource_name_template"):
        parse_bootstrap(MINIMAL).server_listener_name("0.0.0.0:8080")


def test_authority_template_must_start_with_its_name() -> None:
    bad = {"a.example": {"client_listener_resource_name_template": "xdstp://b.example/l/%s"}}
    msg = error_of(with_(authorities=bad))
    assert msg.startswith("/tmp/b.json: authorities['a.example']")
    assert "client_listener_resource_name_template: must start with 'xdstp://a.example/'" in msg


def test_empty_authority_name_is_allowed() -> None:
    b = parse_bootstrap(with_(authorities={"": {}}))
    assert b.authorities[""].client_listener_resource_name_template == (
        "xdstp:///envoy.config.listener.v3.Listener/%s"
    )


# -- to_json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [MINIMAL, FULL], ids=["minimal", "full"])
def test_to_json_round_trips(data: dict[str, Any]) -> None:
    original = parse_bootstrap(data, source="/etc/b.json")
    dumped = original.to_json()
    again = parse_bootstrap(json.dumps(dumped))
    assert again == original
    assert again.to_json() == dumped


def test_to_json_is_plain_json_in_grpc_form() -> None:
    dumped = parse_bootstrap(FULL).to_json()
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["node"]["metadata"] == FULL["node"]["metadata"]
    assert "server_listener_resource_name_template" not in parse_bootstrap(MINIMAL).to_json()


def test_to_json_of_hand_built_bootstrap() -> None:
    b = Bootstrap(xds_servers=(XdsServer("localhost:1", (ChannelCreds("insecure"),)),))
    assert parse_bootstrap(b.to_json()) == b


def test_xds_server_needs_supported_creds_when_built_by_hand() -> None:
    with pytest.raises(ValueError, match="google_default"):
        XdsServer("localhost:1", (ChannelCreds("google_default"),))


# -- errors ----------------------------------------------------------------------------------


def test_invalid_json_names_source_line_and_column() -> None:
    msg = error_of('{\n  "xds_servers": [\n    oops\n  ]\n}')
    assert msg.startswith("/tmp/b.json: invalid JSON at line 3 column 5: ")


def test_top_level_must_be_an_object() -> None:
    assert error_of([1, 2]).startswith("/tmp/b.json: expected a JSON object at the top level")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "xds_servers: missing required field"),
        (with_(xds_servers=[]), "xds_servers: must list at least one server"),
        (with_(xds_servers={"a": 1}), 'xds_servers: expected an array, got {"a": 1}'),
        (with_(xds_servers=["x"]), 'xds_servers[0]: expected an object, got "x"'),
        (server(server_uri=None), "xds_servers[0].server_uri: expected a string, got null"),
        (
            with_(xds_servers=[{"channel_creds": [{"type": "insecure"}]}]),
            "xds_servers[0].server_uri: missing required field",
        ),
        (server(server_uri=""), "xds_servers[0].server_uri: must not be empty"),
        (server(server_uri="  "), "xds_servers[0].server_uri: must not be empty"),
        (
            with_(xds_servers=[{"server_uri": "x:1"}]),
            "xds_servers[0].channel_creds: missing required field",
        ),
        (server(channel_creds=[{}]), "xds_servers[0].channel_creds[0].type: missing required"),
        (
            server(channel_creds=[{"type": "tls", "config": []}]),
            "xds_servers[0].channel_creds[0].config: expected an object, got []",
        ),
        (server(server_features=["a", 7]), "xds_servers[0].server_features[1]: expected a string"),
        (with_(node=[]), "node: expected an object, got []"),
        (with_(node={"id": 3}), "node.id: expected a string, got 3"),
        (with_(node={"cluster": True}), "node.cluster: expected a string, got true"),
        (with_(node={"locality": {"zone": 1}}), "node.locality.zone: expected a string, got 1"),
        (with_(node={"metadata": "x"}), 'node.metadata: expected an object, got "x"'),
        (
            with_(certificate_providers={"default": {"config": {}}}),
            "certificate_providers['default'].plugin_name: missing required field",
        ),
        (
            with_(certificate_providers={"default": "file_watcher"}),
            "certificate_providers['default']: expected an object",
        ),
        (with_(authorities={"a": 1}), "authorities['a']: expected an object, got 1"),
        (
            with_(authorities={"a": {"xds_servers": [{"server_uri": ""}]}}),
            "authorities['a'].xds_servers[0].server_uri: must not be empty",
        ),
        (
            with_(client_default_listener_resource_name_template=5),
            "client_default_listener_resource_name_template: expected a string, got 5",
        ),
        (
            with_(server_listener_resource_name_template=["%s"]),
            "server_listener_resource_name_template: expected a string",
        ),
    ],
)
def test_error_names_source_and_field(data: dict[str, Any], expected: str) -> None:
    assert error_of(data).startswith(f"/tmp/b.json: {expected}")


def test_no_supported_channel_creds_lists_the_types_seen() -> None:
    msg = error_of(server(channel_creds=[{"type": "google_default"}, {"type": "xds"}]))
    assert msg.startswith("/tmp/b.json: xds_servers[0].channel_creds: no supported type")
    assert "'google_default', 'xds'" in msg
    assert "'insecure' and 'tls'" in msg
    assert "(saw none)" in error_of(server(channel_creds=[]))


# -- load_bootstrap --------------------------------------------------------------------------

ENV_VARS = ("SAIL_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def write(tmp_path: Path, name: str, node_id: str) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(with_(node={"id": node_id})))
    return str(path)


def test_load_explicit_path_beats_environment(tmp_path: Path, clean_env: Any) -> None:
    clean_env.setenv("SAIL_BOOTSTRAP", write(tmp_path, "env.json", "env"))
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps(with_(node={"id": "explicit"})))
    b = load_bootstrap(explicit)
    assert b.node.id == "explicit"
    assert b.source == str(explicit)


def test_load_from_each_env_var(tmp_path: Path, clean_env: Any) -> None:
    for var in ENV_VARS[:2]:
        path = write(tmp_path, f"{var}.json", var)
        b = load_bootstrap(environ={var: path})
        assert (b.node.id, b.source) == (var, path)
    b = load_bootstrap(environ={"GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(with_(node={"id": "j"}))})
    assert (b.node.id, b.source) == ("j", "$GRPC_XDS_BOOTSTRAP_CONFIG")


def test_load_precedence_order(tmp_path: Path, clean_env: Any) -> None:
    env = {
        "SAIL_BOOTSTRAP": write(tmp_path, "sail.json", "sail"),
        "GRPC_XDS_BOOTSTRAP": write(tmp_path, "grpc.json", "grpc"),
        "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(with_(node={"id": "inline"})),
    }
    assert load_bootstrap(environ=env).node.id == "sail"
    assert load_bootstrap(environ={**env, "SAIL_BOOTSTRAP": ""}).node.id == "grpc"
    del env["SAIL_BOOTSTRAP"], env["GRPC_XDS_BOOTSTRAP"]
    assert load_bootstrap(environ=env).node.id == "inline"


def test_load_reads_os_environ_by_default(tmp_path: Path, clean_env: Any) -> None:
    clean_env.setenv("GRPC_XDS_BOOTSTRAP", write(tmp_path, "b.json", "from-os"))
    assert load_bootstrap().node.id == "from-os"


def test_load_nothing_found_names_the_variables(clean_env: Any) -> None:
    with pytest.raises(BootstrapError) as info:
        load_bootstrap()
    for var in ENV_VARS:
        assert f"${var}" in str(info.value)


def test_load_missing_file_names_path_and_variable(tmp_path: Path, clean_env: Any) -> None:
    missing = str(tmp_path / "nope.json")
    with pytest.raises(BootstrapError, match=r"nope\.json: cannot read bootstrap file"):
        load_bootstrap(missing)
    with pytest.raises(BootstrapError) as info:
        load_bootstrap(environ={"GRPC_XDS_BOOTSTRAP": missing})
    assert str(info.value).startswith(f"{missing} (from $GRPC_XDS_BOOTSTRAP): cannot read")


def test_load_directory_is_unreadable(tmp_path: Path, clean_env: Any) -> None:
    with pytest.raises(
        BootstrapError, match=f"^{re.escape(str(tmp_path))}: cannot read bootstrap file"
    ):
        load_bootstrap(tmp_path)


def test_load_errors_name_the_file_or_variable(tmp_path: Path, clean_env: Any) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"xds_servers": []}))
    with pytest.raises(BootstrapError, match=f"^{re.escape(str(bad))}: xds_servers: must list"):
        load_bootstrap(environ={"SAIL_BOOTSTRAP": str(bad)})
    with pytest.raises(BootstrapError, match=r"^\$GRPC_XDS_BOOTSTRAP_CONFIG: invalid JSON"):
        load_bootstrap(environ={"GRPC_XDS_BOOTSTRAP_CONFIG": "{"})
