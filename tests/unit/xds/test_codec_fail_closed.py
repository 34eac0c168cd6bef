"""Fail closed: config sail does not enforce is NACKed naming the field, never accepted and
ignored. Each test here fails if the codec silently accepts such a config.

The messages are built with the xds-protos classes themselves, as a control plane sends them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2 as wrr_pb2,
)
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from xds.type.v3 import typed_struct_pb2

from sail.errors import ResourceError
from sail.model import HttpFilter, LbPolicy, RouteAction
from sail.registration import Workload
from sail.registry.envoy_listener import outbound_listener
from sail.registry.server_listener import server_listeners
from sail.xds.codec import (
    decode_cluster,
    decode_listener,
    decode_route_configuration,
    encode_listener,
    parse_resource,
)
from sail.xds.codec.extensions import FAULT, RBAC, ROUTER, ROUTER_NAME, type_url_of
from tests.unit.xds.strategies import registered_policies


def packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def nack(decode: Any, message: Any) -> str:
    with pytest.raises(ResourceError) as info:
        decode(message)
    return info.value.reason


# -- HTTP filters: RBAC and other server-only filters on a client listener ---------------


def http_filter(name: str, config: Any, **fields: Any) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=packed(config), **fields)


ROUTER_FILTER = http_filter(ROUTER_NAME, router_pb2.Router())
RBAC_FILTER = http_filter("envoy.filters.http.rbac", rbac_pb2.RBAC())


def hcm(*filters: hcm_pb2.HttpFilter) -> hcm_pb2.HttpConnectionManager:
    out = hcm_pb2.HttpConnectionManager(stat_prefix="x")
    out.rds.config_source.ads.SetInParent()
    out.rds.route_config_name = "routes"
    out.http_filters.extend([*filters, ROUTER_FILTER])
    return out


def client_listener(*filters: hcm_pb2.HttpFilter) -> listener_pb2.Listener:
    out = listener_pb2.Listener(name="reviews:9080")
    out.api_listener.api_listener.Pack(hcm(*filters))
    return out


def chain(*filters: hcm_pb2.HttpFilter, socket: Any = None) -> Any:
    out = listener_components_pb2.FilterChain()
    out.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(
        hcm(*filters)
    )
    if socket is not None:
        out.transport_socket.CopyFrom(socket)
    return out


def server_listener(*chains: Any, default: Any = None) -> listener_pb2.Listener:
    out = listener_pb2.Listener(name="grpc/server?xds.resource.listening_address=0.0.0.0:1")
    out.address.socket_address.address = "0.0.0.0"
    out.address.socket_address.port_value = 1
    out.filter_chains.extend(chains)
    if default is not None:
        out.default_filter_chain.CopyFrom(default)
    return out


def test_rbac_on_a_client_listener_is_nacked_naming_the_filter() -> None:
    reason = nack(decode_listener, client_listener(RBAC_FILTER))
    assert reason.startswith(
        "api_listener.api_listener.http_filters[0].typed_config: filter "
        "'envoy.filters.http.rbac' (envoy.extensions.filters.http.rbac.v3.RBAC) is server-only"
    )
    assert "gRFC A41" in reason and "refused rather than ignored" in reason


def test_rbac_on_a_client_listener_is_nacked_even_disabled() -> None:
    disabled = http_filter("authz", rbac_pb2.RBAC(), disabled=True)
    assert "filter 'authz'" in nack(decode_listener, client_listener(disabled))


def test_rbac_in_a_typed_struct_on_a_client_listener_is_nacked() -> None:
    struct = typed_struct_pb2.TypedStruct(type_url=RBAC, value=struct_pb2.Struct())
    reason = nack(decode_listener, client_listener(http_filter("authz", struct)))
    assert "filter 'authz' (envoy.extensions.filters.http.rbac.v3.RBAC) is server-only" in reason


def test_cors_on_a_client_listener_is_nacked() -> None:
    reason = nack(decode_listener, client_listener(http_filter("cors", cors_pb2.Cors())))
    assert "filter 'cors' (envoy.extensions.filters.http.cors.v3.Cors) is server-only" in reason


def test_an_optional_server_only_filter_is_skipped_by_a_client() -> None:
    optional = http_filter("authz", rbac_pb2.RBAC(), is_optional=True)
    listener = decode_listener(client_listener(optional))
    assert listener.hcm.http_filters == (HttpFilter(ROUTER_NAME, ROUTER),)


def test_rbac_on_a_server_listener_is_still_decoded() -> None:
    """The xDS-enabled server refuses to serve with it (sail.grpc.xds_server)."""
    listener = decode_listener(server_listener(chain(RBAC_FILTER)))
    assert listener.hcm.http_filters == (
        HttpFilter("envoy.filters.http.rbac", RBAC),
        HttpFilter(ROUTER_NAME, ROUTER),
    )


# -- transport sockets: server filter chains --------------------------------------------


def provider(name: str) -> common_pb2.CertificateProviderPluginInstance:
    return common_pb2.CertificateProviderPluginInstance(instance_name=name)


def mtls_context() -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_certificate_provider_instance=provider("default"),
        validation_context=common_pb2.CertificateValidationContext(
            ca_certificate_provider_instance=provider("ROOTCA")
        ),
    )


def socket(config: Any, name: str = "envoy.transport_sockets.tls") -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=name, typed_config=packed(config))


DOWNSTREAM_MTLS = socket(
    tls_pb2.DownstreamTlsContext(
        common_tls_context=mtls_context(),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
)
RAW_BUFFER = socket(raw_buffer_pb2.RawBuffer(), "envoy.transport_sockets.raw_buffer")


def test_a_server_chain_naming_unknown_providers_is_nacked() -> None:
    reason = nack(decode_listener, server_listener(chain(socket=DOWNSTREAM_MTLS)))
    assert reason == (
        "filter_chains[0].transport_socket.typed_config.common_tls_context."
        "tls_certificate_provider_instance.instance_name: unrecognized certificate provider "
        "instance 'default' (the bootstrap's certificate_providers: none)"
    )


def test_a_server_chain_with_known_providers_decodes_to_its_tls() -> None:
    listener = decode_listener(server_listener(chain(socket=DOWNSTREAM_MTLS)),
                               {"default", "ROOTCA"})
    (only,) = listener.chains()
    assert only.tls is not None and only.tls.require_client_certificate
    assert (only.tls.identity.instance, only.tls.roots and only.tls.roots.instance) == (
        "default", "ROOTCA")


def test_a_tls_chain_after_a_plaintext_one_and_a_tls_default_chain_keep_their_place() -> None:
    plain = chain()
    plain.filter_chain_match.source_type = listener_components_pb2.FilterChainMatch.EXTERNAL
    tls = server_listener(plain, chain(socket=DOWNSTREAM_MTLS))
    assert nack(decode_listener, tls).startswith("filter_chains[1].transport_socket.")
    default = server_listener(plain, default=chain(socket=DOWNSTREAM_MTLS))
    assert nack(decode_listener, default).startswith("default_filter_chain.transport_socket.")
    decoded = decode_listener(default, {"default", "ROOTCA"})
    assert decoded.default_filter_chain is not None
    assert decoded.default_filter_chain.tls is not None
    assert decoded.filter_chains[0].tls is None


def test_a_tls_socket_named_but_without_config_is_nacked() -> None:
    named = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    reason = nack(decode_listener, server_listener(chain(socket=named)))
    assert reason.startswith(
        "filter_chains[0].transport_socket: 'envoy.transport_sockets.tls': not supported "
        "(raw_buffer, or DownstreamTlsContext with certificate provider instances)"
    )


def test_plaintext_server_chains_are_accepted() -> None:
    by_name = base_pb2.TransportSocket(name="envoy.transport_sockets.raw_buffer")
    listener = decode_listener(server_listener(chain(socket=RAW_BUFFER)))
    assert listener.address == ("0.0.0.0", 1)
    assert decode_listener(server_listener(chain(socket=by_name))).address == ("0.0.0.0", 1)


def test_nothing_the_registry_serves_as_listeners_is_nacked() -> None:
    workloads = [Workload("reviews", "10.0.0.7", 9080), Workload("ratings", "::1", 9090)]
    for listener in [*server_listeners(workloads), outbound_listener("127.0.0.1", 15001)]:
        assert decode_listener(encode_listener(listener)) == listener


# -- transport sockets: clusters --------------------------------------------------------


def eds_cluster(**fields: Any) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(name="outbound|9080||reviews", type=cluster_pb2.Cluster.EDS, **fields)
    out.eds_cluster_config.eds_config.ads.SetInParent()
    return out


UPSTREAM_MTLS = socket(tls_pb2.UpstreamTlsContext(common_tls_context=mtls_context(), sni="x"))


def test_a_cluster_with_upstream_tls_naming_unknown_providers_is_nacked() -> None:
    """A bootstrap without the instances the context names: gRPC's NACK (A29)."""
    reason = nack(decode_cluster, eds_cluster(transport_socket=UPSTREAM_MTLS))
    assert reason == (
        "transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance."
        "instance_name: unrecognized certificate provider instance 'default' (the "
        "bootstrap's certificate_providers: none)"
    )


def test_upstream_tls_in_a_typed_struct_or_by_name_is_nacked() -> None:
    struct = typed_struct_pb2.TypedStruct(
        type_url=type_url_of(tls_pb2.UpstreamTlsContext), value=struct_pb2.Struct()
    )
    assert nack(decode_cluster, eds_cluster(transport_socket=socket(struct))) == (
        "transport_socket.typed_config: give a TLS context as a typed Any, not in a "
        "TypedStruct"
    )
    named = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    assert nack(decode_cluster, eds_cluster(transport_socket=named)).startswith(
        "transport_socket: 'envoy.transport_sockets.tls': not supported (raw_buffer, or "
        "UpstreamTlsContext with certificate provider instances)"
    )


def test_transport_socket_matches_with_tls_are_nacked() -> None:
    match = cluster_pb2.Cluster.TransportSocketMatch
    cluster = eds_cluster(
        transport_socket_matches=[
            match(name="plain", transport_socket=RAW_BUFFER),
            match(name="mtls", transport_socket=UPSTREAM_MTLS),
        ]
    )
    assert nack(decode_cluster, cluster).startswith(
        "transport_socket_matches[1].transport_socket: "
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext: sail does not choose"
    )


def test_transport_socket_matcher_is_nacked() -> None:
    cluster = eds_cluster()
    cluster.transport_socket_matcher.SetInParent()
    assert nack(decode_cluster, cluster).startswith("transport_socket_matcher: is not supported")


@pytest.fixture
def _policies() -> Iterator[None]:
    with registered_policies("round_robin", "weighted_round_robin"):
        yield


@pytest.mark.usefixtures("_policies")
def test_plaintext_clusters_are_accepted() -> None:
    cluster = decode_cluster(eds_cluster(transport_socket=RAW_BUFFER))
    assert cluster.name == "outbound|9080||reviews"


def test_a_local_mode_file_with_upstream_tls_is_refused_with_the_reason() -> None:
    """Envoy's JSON naming the TLS context parses (its proto is registered) and then gets
    the fail-closed reason, not an unknown-type error."""
    data = {
        "name": "c",
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": type_url_of(tls_pb2.UpstreamTlsContext),
                "common_tls_context": {},
            },
        },
    }
    reason = nack(decode_cluster, parse_resource("Cluster", data))
    assert reason.startswith(
        "transport_socket.typed_config.common_tls_context: no CA certificate provider"
    )


# -- typed_per_filter_config (gRFC A39) -------------------------------------------------


def route_config(
    route_extra: dict[str, Any] | None = None,
    vhost_extra: dict[str, Any] | None = None,
    config_extra: dict[str, Any] | None = None,
    weighted: dict[str, Any] | None = None,
) -> route_pb2.RouteConfiguration:
    action = route_components_pb2.RouteAction(cluster="c")
    if weighted is not None:
        action = route_components_pb2.RouteAction(
            weighted_clusters=route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name="c", weight=wrappers_pb2.UInt32Value(value=1), **weighted
                    )
                ]
            )
        )
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"), route=action, **(route_extra or {})
    )
    vhost = route_components_pb2.VirtualHost(
        name="vh", domains=["*"], routes=[route], **(vhost_extra or {})
    )
    return route_pb2.RouteConfiguration(name="r", virtual_hosts=[vhost], **(config_extra or {}))


def per_filter(name: str, config: Any) -> dict[str, Any]:
    return {"typed_per_filter_config": {name: packed(config)}}


RBAC_PER_ROUTE = rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC())
NOT_APPLIED = (
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute: sail does not apply this filter's "
    "per-route config, so it is refused rather than ignored (wrap it in "
    "envoy.config.route.v3.FilterConfig with is_optional: true to have it skipped)"
)


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ("route", "virtual_hosts[0].routes[0].typed_per_filter_config[authz]"),
        ("vhost", "virtual_hosts[0].typed_per_filter_config[authz]"),
        ("config", "typed_per_filter_config[authz]"),
        (
            "weighted",
            "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]"
            ".typed_per_filter_config[authz]",
        ),
    ],
)
def test_rbac_per_route_is_nacked_at_every_level(where: str, path: str) -> None:
    config = route_config(**{f"{where}_extra" if where != "weighted" else where: per_filter(
        "authz", RBAC_PER_ROUTE)})
    assert nack(decode_route_configuration, config) == f"{path}: {NOT_APPLIED}"


def test_a_cors_policy_per_route_is_nacked() -> None:
    config = route_config(vhost_extra=per_filter("cors", cors_pb2.CorsPolicy()))
    assert nack(decode_route_configuration, config).startswith(
        "virtual_hosts[0].typed_per_filter_config[cors]: "
        "envoy.extensions.filters.http.cors.v3.CorsPolicy: sail does not apply"
    )


def test_a_filter_config_wrapper_of_an_unknown_type_is_nacked_unless_optional() -> None:
    required = route_components_pb2.FilterConfig(config=packed(RBAC_PER_ROUTE))
    config = route_config(route_extra=per_filter("authz", required))
    assert nack(decode_route_configuration, config) == (
        f"virtual_hosts[0].routes[0].typed_per_filter_config[authz].config: {NOT_APPLIED}"
    )
    optional = route_components_pb2.FilterConfig(config=packed(RBAC_PER_ROUTE), is_optional=True)
    decoded = decode_route_configuration(route_config(route_extra=per_filter("authz", optional)))
    assert decoded.virtual_hosts[0].routes[0].typed_per_filter_config == ()


def test_an_empty_filter_config_is_nacked_unless_optional_or_disabled() -> None:
    empty = route_config(route_extra=per_filter("f", route_components_pb2.FilterConfig()))
    assert nack(decode_route_configuration, empty) == (
        "virtual_hosts[0].routes[0].typed_per_filter_config[f].config: "
        "is required unless disabled is true"
    )
    for wrapper, kept in (
        (route_components_pb2.FilterConfig(is_optional=True), ()),
        (route_components_pb2.FilterConfig(disabled=True), (("f", None),)),
    ):
        decoded = decode_route_configuration(route_config(route_extra=per_filter("f", wrapper)))
        assert decoded.virtual_hosts[0].routes[0].typed_per_filter_config == kept


def test_a_fault_per_route_config_is_still_decoded() -> None:
    fault = fault_pb2.HTTPFault()
    fault.abort.http_status = 503
    fault.abort.percentage.numerator = 100
    decoded = decode_route_configuration(route_config(route_extra=per_filter("fault", fault)))
    route = decoded.virtual_hosts[0].routes[0]
    assert isinstance(route.action, RouteAction)
    ((name, policy),) = route.typed_per_filter_config
    assert name == "fault" and policy is not None and policy.abort is not None
    assert policy.abort.http_status == 503
    assert FAULT.endswith("HTTPFault")


# -- client-side weighted round robin ---------------------------------------------------


def wrr_cluster(config: Any) -> cluster_pb2.Cluster:
    cluster = eds_cluster()
    cluster.load_balancing_policy.policies.add().typed_extension_config.CopyFrom(
        extension_pb2.TypedExtensionConfig(name="wrr", typed_config=packed(config))
    )
    return cluster


SECOND = duration_pb2.Duration(seconds=1)
WRR_PATH = "load_balancing_policy.policies[0].typed_extension_config.typed_config"
ORCA_OPTIONS = [
    ("enable_oob_load_report", {"enable_oob_load_report": wrappers_pb2.BoolValue(value=True)}),
    ("oob_reporting_period", {"oob_reporting_period": SECOND}),
    ("blackout_period", {"blackout_period": SECOND}),
    ("weight_expiration_period", {"weight_expiration_period": SECOND}),
    ("weight_update_period", {"weight_update_period": SECOND}),
    ("error_utilization_penalty", {"error_utilization_penalty": wrappers_pb2.FloatValue(value=1)}),
    ("metric_names_for_computing_utilization", {"metric_names_for_computing_utilization": ["x"]}),
]


@pytest.mark.usefixtures("_policies")
@pytest.mark.parametrize(("field", "fields"), ORCA_OPTIONS, ids=[f for f, _ in ORCA_OPTIONS])
def test_weighted_round_robin_options_needing_load_reports_are_nacked(
    field: str, fields: dict[str, Any]
) -> None:
    config = wrr_pb2.ClientSideWeightedRoundRobin(**fields)
    reason = nack(decode_cluster, wrr_cluster(config))
    assert reason.startswith(f"{WRR_PATH}.{field}: is not supported: sail's weighted_round_robin")
    assert "ORCA" in reason and "refused rather than ignored" in reason


@pytest.mark.usefixtures("_policies")
def test_weighted_round_robin_options_in_a_typed_struct_are_nacked() -> None:
    value = struct_pb2.Struct()
    value.update({"blackout_period": "10s"})
    struct = typed_struct_pb2.TypedStruct(
        type_url=type_url_of(wrr_pb2.ClientSideWeightedRoundRobin), value=value
    )
    assert nack(decode_cluster, wrr_cluster(struct)).startswith(f"{WRR_PATH}.blackout_period: ")


@pytest.mark.usefixtures("_policies")
def test_weighted_round_robin_without_load_report_options_is_accepted() -> None:
    plain = decode_cluster(wrr_cluster(wrr_pb2.ClientSideWeightedRoundRobin()))
    assert plain.lb_policy == LbPolicy("weighted_round_robin")
    off = wrr_pb2.ClientSideWeightedRoundRobin(
        enable_oob_load_report=wrappers_pb2.BoolValue(value=False)
    )
    assert decode_cluster(wrr_cluster(off)).lb_policy == LbPolicy("weighted_round_robin")
    slow = wrr_pb2.ClientSideWeightedRoundRobin()
    slow.slow_start_config.slow_start_window.seconds = 30
    assert decode_cluster(wrr_cluster(slow)).lb_policy == LbPolicy(
        "weighted_round_robin", (("slow_start_config", (("slow_start_window", 30.0),)),)
    )


# -- routes: require_tls, metadata_match ------------------------------------------------


@pytest.mark.parametrize("level", ["EXTERNAL_ONLY", "ALL"])
def test_a_virtual_host_requiring_tls_is_nacked(level: str) -> None:
    config = route_config(
        vhost_extra={"require_tls": route_components_pb2.VirtualHost.TlsRequirementType.Value(
            level)}
    )
    assert nack(decode_route_configuration, config) == (
        f"virtual_hosts[0].require_tls: {level}: sail does not do TLS yet, so these requests "
        "would go in plaintext; refused rather than ignored (only NONE is accepted)"
    )


def test_subset_metadata_match_is_nacked_on_routes_and_weighted_clusters() -> None:
    subset = base_pb2.Metadata()
    subset.filter_metadata["envoy.lb"].update({"version": "v2"})
    route = route_config()
    route.virtual_hosts[0].routes[0].route.metadata_match.CopyFrom(subset)
    assert nack(decode_route_configuration, route).startswith(
        "virtual_hosts[0].routes[0].route.metadata_match: subset load balancing is not supported"
    )
    weighted = route_config(weighted={"metadata_match": subset})
    assert nack(decode_route_configuration, weighted).startswith(
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].metadata_match: "
    )
