"""`core.v3.Address` → `(host, port)`, for listeners and endpoints.

Only `socket_address` with a numeric `port_value` is supported: pipes, internal addresses and
`named_port` (resolved by Envoy's DNS-SRV machinery) have no meaning for a client library.
"""

from __future__ import annotations

from typing import Any

from sail.xds.codec.validation import Invalid, at

__all__ = ["decode_socket_address"]


def decode_socket_address(address: Any, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """`(address, port_value)` of an `Address`, raising `Invalid`.

    Endpoints need a real port (1-65535); a listener may bind port 0 (`allow_port_zero`).
    """
    which = address.WhichOneof("address")
    if which is None:
        raise Invalid("socket_address", "is required")
    if which != "socket_address":
        raise Invalid(which, "only socket_address is supported")
    with at("socket_address"):
        sa = address.socket_address
        if not sa.address:
            raise Invalid("address", "must not be empty")
        if sa.WhichOneof("port_specifier") == "named_port":
            raise Invalid("named_port", "is not supported; use port_value")
        low = 0 if allow_port_zero else 1
        if not low <= sa.port_value <= 65535:
            reason = "is required" if sa.port_value == 0 else f"{sa.port_value} is not a port"
            raise Invalid("port_value", f"{reason} ({low}-65535)")
        return str(sa.address), int(sa.port_value)
