"""Transport sockets: sail accepts plaintext (`raw_buffer`) only, and refuses the rest.

A Cluster's `transport_socket` (and each of its `transport_socket_matches`) says how to
connect to its endpoints; a server Listener filter chain's says how to accept connections.
sail does not do TLS in either direction yet, so a TLS socket (`UpstreamTlsContext`,
`DownstreamTlsContext`, or any other type) cannot be honoured: accepting it would send or
serve in plaintext what the control plane asked to protect, so it is a NACK naming the
field. What passes is a socket that *is* plaintext: one whose `typed_config` is a
`RawBuffer` (plain or in a `TypedStruct`), or that has no `typed_config` and is named
`envoy.transport_sockets.raw_buffer` (Envoy picks the socket by config type, else by name).

Importing this module registers the TLS and raw-buffer protos in the default descriptor pool,
so a local-mode file naming them in Envoy's JSON parses, and gets this module's clear reason
rather than "unknown type".
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 (registers TLS)

from sail.xds.codec.extensions import configured_type, type_url_of
from sail.xds.codec.validation import Invalid, at

__all__ = ["RAW_BUFFER", "RAW_BUFFER_NAME", "check_plaintext"]

RAW_BUFFER = type_url_of(raw_buffer_pb2.RawBuffer)
RAW_BUFFER_NAME = "envoy.transport_sockets.raw_buffer"


def check_plaintext(socket: Any, field: str, why: str) -> None:
    """Raise `Invalid` at `field` unless the `TransportSocket` `socket` is plaintext.

    `why` says what sail cannot do and what would happen instead (it ends the reason)."""
    with at(field):
        if socket.HasField("typed_config"):
            with at("typed_config"):
                type_url, _ = configured_type(socket.typed_config)
            if type_url == RAW_BUFFER:
                return
            what = type_url.rsplit("/", 1)[-1] or "an empty typed_config"
        elif socket.name == RAW_BUFFER_NAME:
            return
        else:
            what = f"{socket.name!r}" if socket.name else "a socket with neither name nor config"
        raise Invalid(
            "", f"{what}: {why}; refused rather than ignored (only raw_buffer is accepted)"
        )
