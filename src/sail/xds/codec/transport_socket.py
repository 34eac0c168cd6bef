"""Transport sockets: plaintext (`raw_buffer`), or TLS from certificate providers (gRFC A29).

A Cluster's `transport_socket` says how to connect to its endpoints; a server Listener
filter chain's says how to accept connections. What sail takes:

* plaintext: a socket whose `typed_config` is a `RawBuffer` (plain or in a `TypedStruct`),
  or that has no `typed_config` and is named `envoy.transport_sockets.raw_buffer` (Envoy
  picks the socket by config type, else by name); also no socket at all;
* TLS: an `UpstreamTlsContext` on a cluster, a `DownstreamTlsContext` on a filter chain,
  decoded with A29's rules (`sail.xds.codec.decode_tls`).

Anything else (another socket type, TLS given by name only or in a `TypedStruct`, the
wrong context for the side) is a NACK naming the field: accepting it would send or serve
in plaintext what the control plane asked to protect.

Importing this module registers the TLS and raw-buffer protos in the default descriptor pool,
so a local-mode file naming them in Envoy's JSON parses.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

from sail.model.tls import DownstreamTls, UpstreamTls
from sail.xds.codec.decode_tls import (
    DOWNSTREAM_TLS,
    UPSTREAM_TLS,
    decode_downstream_tls,
    decode_upstream_tls,
)
from sail.xds.codec.extensions import configured_type, type_url_of
from sail.xds.codec.validation import Invalid, at

__all__ = [
    "RAW_BUFFER", "RAW_BUFFER_NAME", "TLS_NAME", "check_plaintext", "downstream_socket",
    "upstream_socket",
]

RAW_BUFFER = type_url_of(raw_buffer_pb2.RawBuffer)
RAW_BUFFER_NAME = "envoy.transport_sockets.raw_buffer"
TLS_NAME = "envoy.transport_sockets.tls"


def upstream_socket(socket: Any, field: str, providers: Collection[str]) -> UpstreamTls | None:
    """A cluster's `TransportSocket` at `field`: `None` for plaintext, else its TLS."""
    with at(field):
        if _plaintext(socket, UPSTREAM_TLS):
            return None
        with at("typed_config"):
            return decode_upstream_tls(socket.typed_config, providers)


def downstream_socket(
    socket: Any, field: str, providers: Collection[str]
) -> DownstreamTls | None:
    """A server filter chain's `TransportSocket` at `field`: `None` for plaintext."""
    with at(field):
        if _plaintext(socket, DOWNSTREAM_TLS):
            return None
        with at("typed_config"):
            return decode_downstream_tls(socket.typed_config, providers)


def check_plaintext(socket: Any, field: str, why: str) -> None:
    """Raise `Invalid` at `field` unless the `TransportSocket` `socket` is plaintext.

    `why` says what sail cannot do there and what would happen instead (it ends the
    reason)."""
    with at(field):
        if not _plaintext(socket, ""):
            raise Invalid(
                "", f"{_what(socket)}: {why}; refused rather than ignored (only raw_buffer "
                "is accepted)"
            )


def _plaintext(socket: Any, tls_type: str) -> bool:
    """True for a plaintext socket, False for one of type `tls_type` (an `Any` to decode);
    raises `Invalid` for the rest."""
    if socket.HasField("typed_config"):
        with at("typed_config"):
            type_url, struct = configured_type(socket.typed_config)
        if type_url == RAW_BUFFER:
            return True
        if type_url == tls_type and tls_type:
            if struct is not None:
                raise Invalid("typed_config", "give a TLS context as a typed Any, not in a "
                              "TypedStruct")
            return False
    elif socket.name == RAW_BUFFER_NAME:
        return True
    if not tls_type:
        return False
    expected = tls_type.rsplit(".", 1)[-1]
    raise Invalid("", f"{_what(socket)}: not supported (raw_buffer, or {expected} with "
                  "certificate provider instances); refused rather than ignored")


def _what(socket: Any) -> str:
    if socket.HasField("typed_config"):
        return socket.typed_config.type_url.rsplit("/", 1)[-1] or "an empty typed_config"
    return f"{socket.name!r}" if socket.name else "a socket with neither name nor config"
