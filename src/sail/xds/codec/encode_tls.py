"""`UpstreamTls` / `DownstreamTls` → a `TransportSocket` named `envoy.transport_sockets.tls`,
with certificate provider instances in the current fields (gRFC A29), which
`sail.xds.codec.decode_tls` reads back to the same model object."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from sail.model.tls import CertificateProviderRef, DownstreamTls, SanType, UpstreamTls
from sail.xds.codec.encode_route import encode_string_matcher
from sail.xds.codec.transport_socket import TLS_NAME

__all__ = ["encode_downstream_tls", "encode_upstream_tls"]

_SAN_ENUM = {
    SanType.DNS: common_pb2.SubjectAltNameMatcher.DNS,
    SanType.URI: common_pb2.SubjectAltNameMatcher.URI,
    SanType.EMAIL: common_pb2.SubjectAltNameMatcher.EMAIL,
    SanType.IP_ADDRESS: common_pb2.SubjectAltNameMatcher.IP_ADDRESS,
}


def encode_upstream_tls(tls: UpstreamTls) -> Any:
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = context.common_tls_context
    if tls.identity is not None:
        common.tls_certificate_provider_instance.CopyFrom(_instance(tls.identity))
    validation = common.validation_context
    validation.ca_certificate_provider_instance.CopyFrom(_instance(tls.roots))
    for san in tls.san_matchers:
        if san.san_type is SanType.ANY:
            validation.match_subject_alt_names.append(encode_string_matcher(san.matcher))
        else:
            validation.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
                san_type=_SAN_ENUM[san.san_type], matcher=encode_string_matcher(san.matcher)
            ))
    return _socket(context)


def encode_downstream_tls(tls: DownstreamTls) -> Any:
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    common.tls_certificate_provider_instance.CopyFrom(_instance(tls.identity))
    if tls.roots is not None:
        common.validation_context.ca_certificate_provider_instance.CopyFrom(
            _instance(tls.roots)
        )
    if tls.require_client_certificate:
        context.require_client_certificate.value = True
    return _socket(context)


def _instance(ref: CertificateProviderRef) -> Any:
    return common_pb2.CertificateProviderPluginInstance(
        instance_name=ref.instance, certificate_name=ref.certificate
    )


def _socket(context: Any) -> Any:
    socket = base_pb2.TransportSocket(name=TLS_NAME)
    socket.typed_config.Pack(context)
    return socket
