"""Envoy JSON (and YAML loaded into dicts) → protobuf: the shapes, and the errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sail.errors import ResourceError
from sail.xds.codec import decode_cluster, decode_listener, load_resources, parse_resource

T = "type.googleapis.com/"
CLUSTER = T + "envoy.config.cluster.v3.Cluster"
LISTENER = T + "envoy.config.listener.v3.Listener"
CLA = T + "envoy.config.endpoint.v3.ClusterLoadAssignment"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"

CLUSTER_JSON = {"name": "reviews", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}
LISTENER_JSON = {
    "name": "ingress",
    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
    "filter_chains": [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": "ingress",
                        "rds": {"config_source": {"ads": {}}, "route_config_name": "local"},
                        "http_filters": [
                            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
                        ],
                    },
                }
            ]
        }
    ],
}


def error(data: Any) -> ResourceError:
    with pytest.raises(ResourceError) as info:
        load_resources(data)
    return info.value


def test_list_of_typed_resources() -> None:
    cla = {"@type": CLA, "cluster_name": "reviews"}
    messages = load_resources([{"@type": CLUSTER, **CLUSTER_JSON}, cla])
    assert [m.DESCRIPTOR.name for m in messages] == ["Cluster", "ClusterLoadAssignment"]
    assert decode_cluster(messages[0]).name == "reviews"


def test_resources_mapping() -> None:
    (message,) = load_resources({"resources": [{"@type": LISTENER, **LISTENER_JSON}]})
    assert decode_listener(message).address == ("0.0.0.0", 10000)


def test_envoy_bootstrap_static_resources() -> None:
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "static_resources": {"listeners": [LISTENER_JSON], "clusters": [CLUSTER_JSON]},
    }
    listener, cluster = load_resources(bootstrap)
    assert decode_listener(listener).name == "ingress"
    assert decode_cluster(cluster).name == "reviews"


def test_yaml_documents_work_the_same() -> None:
    document = yaml.safe_load(
        f"""
        resources:
        - "@type": {CLUSTER}
          name: ratings
          type: EDS
          connect_timeout: 0.5s
          eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
        """
    )
    (message,) = load_resources(document)
    assert decode_cluster(message).connect_timeout == 0.5


def test_parse_resource_by_short_name_or_type_url() -> None:
    assert parse_resource("Cluster", CLUSTER_JSON) == parse_resource(CLUSTER, CLUSTER_JSON)


def test_unknown_resource_type_is_rejected() -> None:
    exc = error([{"@type": T + "envoy.config.core.v3.Node", "id": "n"}])
    assert exc.reason.startswith(
        f"[0]: @type: unsupported type '{T}envoy.config.core.v3.Node' (supported: "
    )


def test_unknown_type_inside_typed_config_is_rejected() -> None:
    listener = {
        "@type": LISTENER,
        "name": "x",
        "api_listener": {"api_listener": {"@type": T + "example.Nope"}},
    }
    exc = error([listener])
    assert exc.type_name == "Listener"
    assert exc.name == "x"
    assert "Can not find message descriptor by type_url: type.googleapis.com/example.Nope" in (
        exc.reason
    )
    assert exc.reason.startswith("[0]: ")


def test_missing_type_in_a_list_is_rejected() -> None:
    exc = error({"resources": [{"@type": CLUSTER, **CLUSTER_JSON}, CLUSTER_JSON]})
    assert str(exc) == "Resource 'reviews': resources[1].@type: is required"


def test_unknown_field_is_named() -> None:
    exc = error({"static_resources": {"clusters": [{**CLUSTER_JSON, "bogus": 1}]}})
    assert exc.reason == (
        'static_resources.clusters[0]: Message type "envoy.config.cluster.v3.Cluster" '
        'has no field named "bogus" at "Cluster".'
    )


def test_bad_value_is_named() -> None:
    exc = error([{"@type": CLUSTER, **CLUSTER_JSON, "connect_timeout": "soon"}])
    assert "connect_timeout" in exc.reason


def test_mismatched_type_is_rejected() -> None:
    with pytest.raises(ResourceError) as info:
        parse_resource("Listener", {"@type": CLUSTER, "name": "x"})
    assert info.value.reason == f"@type: '{CLUSTER}' is not {LISTENER}"


@pytest.mark.parametrize("document", [{"clusters": []}, "resources", 42])
def test_unrecognised_document_shape(document: Any) -> None:
    assert error(document).reason.startswith("expected a list of resources")
