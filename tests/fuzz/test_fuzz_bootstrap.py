"""The bootstrap on hostile input: `parse_bootstrap` returns a `Bootstrap` or raises exactly
`BootstrapError` naming the source, for any text, bytes or decoded JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sail.bootstrap import parse_bootstrap
from sail.errors import BootstrapError
from tests.fuzz.mutate import expect_only, fuzz_settings, hostile_strings, mutated_trees

SERVER = {"server_uri": "registry.mesh:15010", "channel_creds": [{"type": "insecure"}]}
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
        SERVER,
    ],
    "node": {
        "id": "sidecar~10.0.0.1~reviews-v2~default.svc.cluster.local",
        "cluster": "reviews",
        "locality": {"region": "eu-west1", "zone": "eu-west1-b", "sub_zone": "rack7"},
        "metadata": {"labels": {"version": "v2"}, "ports": [9080, 9443]},
    },
    "certificate_providers": {
        "default": {"plugin_name": "file_watcher", "config": {"refresh_interval": "60s"}}
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
_SEEDS = st.sampled_from([FULL, {"xds_servers": [SERVER]}])
_KEYS = st.one_of(
    hostile_strings,
    st.sampled_from(["xds_servers", "node", "authorities", "certificate_providers", "config",
                     "server_uri", "channel_creds", "type", "server_features", "metadata",
                     "locality", "id", "plugin_name", "xds_servers"]),
)


@st.composite
def _texts(draw: st.DrawFn) -> str | bytes:
    text = json.dumps(draw(mutated_trees(_SEEDS, keys=_KEYS)), allow_nan=True)
    damage = draw(st.sampled_from(["none", "none", "cut", "bytes", "deep"]))
    if damage == "cut":
        return text[: draw(st.integers(0, len(text)))]
    if damage == "bytes":
        data = text.encode()
        where = draw(st.integers(0, len(data)))
        return data[:where] + draw(st.binary(min_size=1, max_size=4)) + data[where:]
    if damage == "deep":
        return text[:-1] + ', "x": ' + "[" * draw(st.sampled_from([63, 64, 65, 1100])) + "}"
    return text


@fuzz_settings(scale=1.5)
@given(_texts())
def test_bootstrap_text(text: str | bytes) -> None:
    expect_only(BootstrapError, lambda: parse_bootstrap(text, source="fuzz.json"))


@fuzz_settings(scale=0.5)
@given(mutated_trees(_SEEDS, keys=_KEYS))
def test_bootstrap_mapping(data: Any) -> None:
    """A decoded bootstrap (as `Mesh.from_bootstrap` takes a dict) is checked the same way."""
    expect_only(BootstrapError, lambda: parse_bootstrap(data, source="fuzz"))
