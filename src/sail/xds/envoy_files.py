"""Cluster TLS for Envoy nodes: certificate files in place of provider instances.

The registry writes a cluster's TLS as gRFC A29 says (certificate provider instances, which
sail and grpcio resolve through their bootstraps). Envoy has no such instances; it reads
certificates from files (or SDS). So to a node whose metadata has `SAIL_CERT_DIR` (the
directory `sail cert --out` keeps current: `cert-chain.pem`, `key.pem`, `root-cert.pem`, as
Istio's agent writes them), each cluster's instances become those files, watched by Envoy
(`watched_directory`: a rotation is picked up without a restart); the SAN matchers stay.
Other nodes get the clusters as they are (an Envoy without certificates NACKs a TLS
cluster rather than send plaintext: closed).
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2

from sail.xds.codec.transport_socket import TLS_NAME

__all__ = ["CERT_DIR_KEY", "envoy_file_tls"]

CERT_DIR_KEY = "SAIL_CERT_DIR"
"""The node metadata field naming the directory of an Envoy node's certificate files."""

_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_shaped: dict[tuple[int, str], tuple[any_pb2.Any, any_pb2.Any]] = {}  # (id, dir) -> (in, out)
_SHAPED_LIMIT = 4096


def envoy_file_tls(node: Any, type_url: str, resource: any_pb2.Any) -> any_pb2.Any:
    """`resource` as node `node` gets it: a Cluster with provider-instance TLS rewritten to
    the node's certificate files when its metadata names them (`SAIL_CERT_DIR`); anything
    else as it is. Each packed cluster is rewritten once per directory."""
    if type_url != _CLUSTER or node is None:
        return resource
    field = node.metadata.fields.get(CERT_DIR_KEY)
    if field is None or field.WhichOneof("kind") != "string_value" or not field.string_value:
        return resource
    directory = field.string_value.rstrip("/")
    key = (id(resource), directory)
    cached = _shaped.get(key)
    if cached is not None and cached[0] is resource:
        return cached[1]
    shaped = _with_files(resource, directory)
    if len(_shaped) >= _SHAPED_LIMIT:
        _shaped.clear()
    _shaped[key] = (resource, shaped)  # holding `resource` keeps its id from being reused
    return shaped


def _with_files(resource: any_pb2.Any, directory: str) -> any_pb2.Any:
    cluster = cluster_pb2.Cluster()
    resource.Unpack(cluster)
    socket = cluster.transport_socket
    if not cluster.HasField("transport_socket") or socket.name != TLS_NAME:
        return resource
    context = tls_pb2.UpstreamTlsContext()
    if not socket.typed_config.Unpack(context):
        return resource
    common = context.common_tls_context
    validation = common.validation_context
    if not (common.HasField("tls_certificate_provider_instance")
            or validation.HasField("ca_certificate_provider_instance")):
        return resource
    if common.HasField("tls_certificate_provider_instance"):
        common.ClearField("tls_certificate_provider_instance")
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = f"{directory}/cert-chain.pem"
        certificate.private_key.filename = f"{directory}/key.pem"
        certificate.watched_directory.path = directory
    if validation.HasField("ca_certificate_provider_instance"):
        validation.ClearField("ca_certificate_provider_instance")
        validation.trusted_ca.filename = f"{directory}/root-cert.pem"
        validation.watched_directory.path = directory
    socket.typed_config.Pack(context)
    shaped = any_pb2.Any()
    shaped.Pack(cluster)
    return shaped
