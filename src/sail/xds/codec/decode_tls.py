"""`UpstreamTlsContext` and `DownstreamTlsContext` → `UpstreamTls` / `DownstreamTls`, with
gRFC A29's rules (as gRPC C-core's `xds_common_types_parser.cc` applies them).

Key material comes only from certificate provider instances named in the bootstrap:
`tls_certificate_provider_instance` for the certificate and
`validation_context.ca_certificate_provider_instance` for the roots, or the deprecated
`tls_certificate_certificate_provider_instance` and
`combined_validation_context.validation_context_certificate_provider_instance` that Istio's
proxyless generator still sends (both read; the current name wins). An instance the
bootstrap does not name is a NACK, as in gRPC.

Refused, naming the field (A29; accepting them would enforce less than the config says):
`tls_params`, `custom_handshaker`, `tls_certificates` and
`tls_certificate_sds_secret_configs` (key material inline or from SDS),
`validation_context_sds_secret_config`, `verify_certificate_spki`, `verify_certificate_hash`,
`require_signed_certificate_timestamp`, `crl`, `custom_validator_config`; on a client, no
root provider; on a server, no certificate provider, `require_client_certificate` without
a validation context, `require_sni`, an `ocsp_staple_policy` other than
`LENIENT_STAPLING`, and SAN matchers (gRPC does not match client SANs; authorization
policies do). sail also refuses `system_root_certs` (gRFC A82, not done yet) and the
`OTHER_NAME` SAN type. Ignored, as in gRPC: `trusted_ca`, `watched_directory`,
`alpn_protocols`, `allow_renegotiation`, `max_session_keys`, and
`allow_expired_certificate` and `trust_chain_verification` (ignoring them is stricter).

Unlike gRPC C-core, `match_typed_subject_alt_names` is read (each matcher against the SANs
of its type); with both lists, a SAN matching any entry of either passes.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from sail.model.tls import CertificateProviderRef, DownstreamTls, SanMatcher, SanType, UpstreamTls
from sail.xds.codec.decode_matchers import decode_string_matcher
from sail.xds.codec.extensions import type_url_of, unpack_into
from sail.xds.codec.validation import Invalid, at
from sail.xds.codec.wellknown import bool_value

__all__ = ["DOWNSTREAM_TLS", "UPSTREAM_TLS", "decode_downstream_tls", "decode_upstream_tls"]

UPSTREAM_TLS = type_url_of(tls_pb2.UpstreamTlsContext)
DOWNSTREAM_TLS = type_url_of(tls_pb2.DownstreamTlsContext)

_SAN_TYPES = {
    common_pb2.SubjectAltNameMatcher.DNS: SanType.DNS,
    common_pb2.SubjectAltNameMatcher.URI: SanType.URI,
    common_pb2.SubjectAltNameMatcher.EMAIL: SanType.EMAIL,
    common_pb2.SubjectAltNameMatcher.IP_ADDRESS: SanType.IP_ADDRESS,
}
_UNSUPPORTED_VALIDATION = (
    "verify_certificate_spki", "verify_certificate_hash", "crl", "custom_validator_config",
)


def decode_upstream_tls(config: Any, providers: Collection[str]) -> UpstreamTls:
    """An `Any` holding an `UpstreamTlsContext` (a Cluster's transport socket). `providers`
    are the bootstrap's certificate provider instance names."""
    msg = unpack_into(config, tls_pb2.UpstreamTlsContext())
    with at("common_tls_context"):
        identity, roots, sans = _common(msg.common_tls_context, providers)
        if roots is None:
            raise Invalid(
                "", "no CA certificate provider instance (validation_context."
                "ca_certificate_provider_instance): a client must verify the server"
            )
    return UpstreamTls(roots=roots, identity=identity, san_matchers=sans, sni=msg.sni)


def decode_downstream_tls(config: Any, providers: Collection[str]) -> DownstreamTls:
    """An `Any` holding a `DownstreamTlsContext` (a server filter chain's socket)."""
    msg = unpack_into(config, tls_pb2.DownstreamTlsContext())
    if bool_value(msg, "require_sni", False):
        raise Invalid("require_sni", "is not supported (A29)")
    if msg.ocsp_staple_policy != tls_pb2.DownstreamTlsContext.LENIENT_STAPLING:
        raise Invalid("ocsp_staple_policy", "only LENIENT_STAPLING is supported (A29)")
    with at("common_tls_context"):
        identity, roots, sans = _common(msg.common_tls_context, providers)
        if identity is None:
            raise Invalid(
                "", "no certificate provider instance (tls_certificate_provider_instance): "
                "a server must present a certificate"
            )
        if sans:
            raise Invalid(
                "validation_context",
                "SAN matchers on a server are not supported (A29): authorize callers with "
                "an AuthorizationPolicy",
            )
    require = bool_value(msg, "require_client_certificate", False)
    if require and roots is None:
        raise Invalid(
            "require_client_certificate",
            "needs a validation context with a CA certificate provider instance",
        )
    return DownstreamTls(identity=identity, roots=roots, require_client_certificate=require)


def _common(
    msg: Any, providers: Collection[str]
) -> tuple[CertificateProviderRef | None, CertificateProviderRef | None, tuple[SanMatcher, ...]]:
    for name in ("tls_params", "custom_handshaker"):
        if msg.HasField(name):
            raise Invalid(name, "is not supported (A29)")
    identity = None
    if msg.HasField("tls_certificate_provider_instance"):
        with at("tls_certificate_provider_instance"):
            identity = _instance(msg.tls_certificate_provider_instance, providers)
    elif msg.HasField("tls_certificate_certificate_provider_instance"):
        with at("tls_certificate_certificate_provider_instance"):
            identity = _instance(msg.tls_certificate_certificate_provider_instance, providers)
    else:
        for name in ("tls_certificates", "tls_certificate_sds_secret_configs"):
            if len(getattr(msg, name)):
                raise Invalid(
                    name, "is not supported (A29): name a certificate provider instance "
                    "in tls_certificate_provider_instance"
                )
    roots: CertificateProviderRef | None = None
    sans: tuple[SanMatcher, ...] = ()
    which = msg.WhichOneof("validation_context_type")
    if which == "combined_validation_context":
        combined = msg.combined_validation_context
        with at("combined_validation_context"):
            if combined.HasField("default_validation_context"):
                with at("default_validation_context"):
                    roots, sans = _validation(combined.default_validation_context, providers)
            if roots is None and combined.HasField(
                "validation_context_certificate_provider_instance"
            ):
                with at("validation_context_certificate_provider_instance"):
                    roots = _instance(
                        combined.validation_context_certificate_provider_instance, providers
                    )
    elif which == "validation_context":
        with at("validation_context"):
            roots, sans = _validation(msg.validation_context, providers)
    elif which is not None:
        raise Invalid(which, "is not supported (A29): name a certificate provider instance "
                      "in validation_context.ca_certificate_provider_instance")
    return identity, roots, sans


def _validation(
    msg: Any, providers: Collection[str]
) -> tuple[CertificateProviderRef | None, tuple[SanMatcher, ...]]:
    for name in _UNSUPPORTED_VALIDATION:
        if msg.HasField(name) if name in ("crl", "custom_validator_config") else len(
            getattr(msg, name)
        ):
            raise Invalid(name, "is not supported (A29)")
    if bool_value(msg, "require_signed_certificate_timestamp", False):
        raise Invalid("require_signed_certificate_timestamp", "is not supported (A29)")
    if msg.HasField("system_root_certs"):
        raise Invalid("system_root_certs", "is not supported: name a certificate provider "
                      "instance in ca_certificate_provider_instance")
    roots = None
    if msg.HasField("ca_certificate_provider_instance"):
        with at("ca_certificate_provider_instance"):
            roots = _instance(msg.ca_certificate_provider_instance, providers)
    sans: list[SanMatcher] = []
    for i, matcher in enumerate(msg.match_subject_alt_names):
        with at("match_subject_alt_names", i):
            sans.append(SanMatcher(decode_string_matcher(matcher)))
    for i, typed in enumerate(msg.match_typed_subject_alt_names):
        with at("match_typed_subject_alt_names", i):
            san_type = _SAN_TYPES.get(typed.san_type)
            if san_type is None:
                raise Invalid("san_type", f"{typed.san_type} is not supported (DNS, URI, "
                              "EMAIL or IP_ADDRESS)")
            with at("matcher"):
                sans.append(SanMatcher(decode_string_matcher(typed.matcher), san_type))
    return roots, tuple(sans)


def _instance(msg: Any, providers: Collection[str]) -> CertificateProviderRef:
    name = msg.instance_name
    if name not in providers:
        known = ", ".join(sorted(providers)) or "none"
        raise Invalid(
            "instance_name", f"unrecognized certificate provider instance {name!r} "
            f"(the bootstrap's certificate_providers: {known})"
        )
    return CertificateProviderRef(name, msg.certificate_name)
