"""gRFC A29 on clusters and server filter chains: what is read, from the current and the
deprecated fields, and every NACK A29 names (each naming its field)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2

from sail.errors import ResourceError
from sail.model import (
    CertificateProviderRef,
    DownstreamTls,
    SanMatcher,
    SanType,
    StringMatcher,
    StringMatchKind,
    UpstreamTls,
)
from sail.xds.codec.decode_tls import decode_downstream_tls, decode_upstream_tls
from sail.xds.codec.encode_tls import encode_downstream_tls, encode_upstream_tls
from sail.xds.codec.validation import Invalid

PROVIDERS = {"default", "roots"}
ID = "spiffe://example.org/ns/default/sa/reviews"


def packed(msg: Any) -> Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def instance(name: str = "default", cert: str = "") -> Any:
    return common_pb2.CertificateProviderPluginInstance(instance_name=name, certificate_name=cert)


def old_instance(name: str = "default", cert: str = "") -> Any:
    return tls_pb2.CommonTlsContext.CertificateProviderInstance(
        instance_name=name, certificate_name=cert
    )


def upstream(**common: Any) -> Any:
    return packed(tls_pb2.UpstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(**common)))


def validation(**fields: Any) -> common_pb2.CertificateValidationContext:
    fields.setdefault("ca_certificate_provider_instance", instance("roots", "ROOTCA"))
    return common_pb2.CertificateValidationContext(**fields)


def reason(decode: Callable[..., Any], config: Any) -> str:
    with pytest.raises(Invalid) as caught:
        decode(config, PROVIDERS)
    return str(caught.value)


def test_the_current_fields_decode() -> None:
    tls = decode_upstream_tls(upstream(
        tls_certificate_provider_instance=instance("default", "default"),
        validation_context=validation(
            match_subject_alt_names=[string_pb2.StringMatcher(exact=ID)],
            match_typed_subject_alt_names=[common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.DNS,
                matcher=string_pb2.StringMatcher(suffix=".svc"),
            )],
        ),
    ), PROVIDERS)
    assert tls == UpstreamTls(
        roots=CertificateProviderRef("roots", "ROOTCA"),
        identity=CertificateProviderRef("default", "default"),
        san_matchers=(
            SanMatcher(StringMatcher(StringMatchKind.EXACT, ID)),
            SanMatcher(StringMatcher(StringMatchKind.SUFFIX, ".svc"), SanType.DNS),
        ),
    )


def test_istios_proxyless_shape_with_the_deprecated_fields_decodes_the_same() -> None:
    """Istio's grpcgen: `tls_certificate_certificate_provider_instance` and the roots in
    `combined_validation_context.validation_context_certificate_provider_instance`, the SAN
    matchers in its `default_validation_context`."""
    config = upstream(
        tls_certificate_certificate_provider_instance=old_instance("default", "default"),
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_subject_alt_names=[string_pb2.StringMatcher(exact=ID)]
            ),
            validation_context_certificate_provider_instance=old_instance("roots", "ROOTCA"),
        ),
    )
    tls = decode_upstream_tls(config, PROVIDERS)
    assert tls.identity == CertificateProviderRef("default", "default")
    assert tls.roots == CertificateProviderRef("roots", "ROOTCA")
    assert tls.san_matchers == (SanMatcher(StringMatcher(StringMatchKind.EXACT, ID)),)


def test_the_current_name_wins_over_the_deprecated_one() -> None:
    tls = decode_upstream_tls(upstream(
        tls_certificate_provider_instance=instance("default"),
        tls_certificate_certificate_provider_instance=old_instance("roots"),
        validation_context=validation(),
    ), PROVIDERS)
    assert tls.identity == CertificateProviderRef("default")


def test_tls_without_a_client_certificate_decodes() -> None:
    tls = decode_upstream_tls(upstream(validation_context=validation()), PROVIDERS)
    assert tls.identity is None and tls.san_matchers == ()


@pytest.mark.parametrize(("common", "expected"), [
    ({}, "common_tls_context: no CA certificate provider instance"),
    ({"validation_context": common_pb2.CertificateValidationContext(
        match_subject_alt_names=[string_pb2.StringMatcher(exact=ID)])},
     "common_tls_context: no CA certificate provider instance"),
    ({"validation_context": validation(
        ca_certificate_provider_instance=instance("nope"))},
     "common_tls_context.validation_context.ca_certificate_provider_instance.instance_name: "
     "unrecognized certificate provider instance 'nope' (the bootstrap's "
     "certificate_providers: default, roots)"),
    ({"tls_certificate_provider_instance": instance("nope"),
      "validation_context": validation()},
     "common_tls_context.tls_certificate_provider_instance.instance_name: unrecognized"),
    ({"tls_certificates": [common_pb2.TlsCertificate()], "validation_context": validation()},
     "common_tls_context.tls_certificates: is not supported (A29)"),
    ({"tls_certificate_sds_secret_configs": [secret_pb2.SdsSecretConfig(name="x")],
      "validation_context": validation()},
     "common_tls_context.tls_certificate_sds_secret_configs: is not supported (A29)"),
    ({"validation_context_sds_secret_config": secret_pb2.SdsSecretConfig(name="x")},
     "common_tls_context.validation_context_sds_secret_config: is not supported (A29)"),
    ({"tls_params": common_pb2.TlsParameters(), "validation_context": validation()},
     "common_tls_context.tls_params: is not supported (A29)"),
    ({"custom_handshaker": extension_pb2.TypedExtensionConfig(name="x"),
      "validation_context": validation()},
     "common_tls_context.custom_handshaker: is not supported (A29)"),
    ({"validation_context": validation(verify_certificate_spki=["x"])},
     "common_tls_context.validation_context.verify_certificate_spki: is not supported"),
    ({"validation_context": validation(verify_certificate_hash=["x"])},
     "common_tls_context.validation_context.verify_certificate_hash: is not supported"),
    ({"validation_context": validation(crl=base_pb2.DataSource(inline_string="x"))},
     "common_tls_context.validation_context.crl: is not supported"),
    ({"validation_context": validation(
        custom_validator_config=extension_pb2.TypedExtensionConfig(name="x"))},
     "common_tls_context.validation_context.custom_validator_config: is not supported"),
    ({"validation_context": validation(
        system_root_certs=common_pb2.CertificateValidationContext.SystemRootCerts())},
     "common_tls_context.validation_context.system_root_certs: is not supported"),
    ({"validation_context": validation(match_typed_subject_alt_names=[
        common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.OTHER_NAME,
                                         matcher=string_pb2.StringMatcher(exact="x"))])},
     "common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type"),
    ({"validation_context": validation(match_subject_alt_names=[string_pb2.StringMatcher()])},
     "common_tls_context.validation_context.match_subject_alt_names[0]: one of exact"),
])
def test_a29_client_nacks(common: dict[str, Any], expected: str) -> None:
    assert reason(decode_upstream_tls, upstream(**common)).startswith(expected)


def test_require_signed_certificate_timestamp_is_nacked() -> None:
    v = validation()
    v.require_signed_certificate_timestamp.value = True
    assert reason(decode_upstream_tls, upstream(validation_context=v)).startswith(
        "common_tls_context.validation_context.require_signed_certificate_timestamp"
    )


def downstream(require: bool | None = True, **common: Any) -> Any:
    context = tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(**common))
    if require is not None:
        context.require_client_certificate.value = require
    return context


def test_a_server_chain_decodes() -> None:
    tls = decode_downstream_tls(packed(downstream(
        tls_certificate_provider_instance=instance("default"),
        validation_context=validation(),
    )), PROVIDERS)
    assert tls == DownstreamTls(CertificateProviderRef("default"),
                                CertificateProviderRef("roots", "ROOTCA"), True)


@pytest.mark.parametrize(("context", "expected"), [
    (downstream(validation_context=validation()),
     "common_tls_context: no certificate provider instance"),
    (downstream(tls_certificate_provider_instance=instance()),
     "require_client_certificate: needs a validation context"),
    (downstream(tls_certificate_provider_instance=instance(), validation_context=validation(
        match_subject_alt_names=[string_pb2.StringMatcher(exact=ID)])),
     "common_tls_context.validation_context: SAN matchers on a server are not supported"),
])
def test_a29_server_nacks(context: Any, expected: str) -> None:
    assert reason(decode_downstream_tls, packed(context)).startswith(expected)


def test_require_sni_and_strict_ocsp_stapling_are_nacked() -> None:
    sni = downstream(tls_certificate_provider_instance=instance(), validation_context=validation())
    sni.require_sni.value = True
    assert reason(decode_downstream_tls, packed(sni)).startswith("require_sni")
    ocsp = downstream(tls_certificate_provider_instance=instance(), validation_context=validation())
    ocsp.ocsp_staple_policy = tls_pb2.DownstreamTlsContext.STRICT_STAPLING
    assert reason(decode_downstream_tls, packed(ocsp)).startswith("ocsp_staple_policy")


def test_encoding_decodes_back_to_the_same() -> None:
    up = UpstreamTls(
        CertificateProviderRef("roots", "ROOTCA"), CertificateProviderRef("default"),
        (SanMatcher(StringMatcher(StringMatchKind.PREFIX, "spiffe://example.org/")),
         SanMatcher(StringMatcher(StringMatchKind.EXACT, "10.0.0.1"), SanType.IP_ADDRESS)),
        sni="reviews",
    )
    assert decode_upstream_tls(encode_upstream_tls(up).typed_config, PROVIDERS) == up
    down = DownstreamTls(CertificateProviderRef("default"), CertificateProviderRef("roots"), True)
    assert decode_downstream_tls(encode_downstream_tls(down).typed_config, PROVIDERS) == down


def test_a_cluster_names_what_it_refuses() -> None:
    from envoy.config.cluster.v3 import cluster_pb2

    from sail.xds.codec.decode_cluster import decode_cluster

    cluster = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.transport_socket.name = "envoy.transport_sockets.tls"
    cluster.transport_socket.typed_config.CopyFrom(upstream(validation_context=validation(
        ca_certificate_provider_instance=instance("nope"))))
    with pytest.raises(ResourceError, match=r"Cluster 'c': transport_socket\.typed_config\."):
        decode_cluster(cluster, PROVIDERS)
