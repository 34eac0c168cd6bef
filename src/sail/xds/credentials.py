"""The credentials of a connection to an xDS server (the bootstrap's `channel_creds`).

`insecure` is plaintext. `tls` is gRFC A65's: the server is verified against
`ca_certificate_file` (unset: the system's roots) and, with `certificate_file` and
`private_key_file`, the client presents that certificate (mTLS). The files are read each
time a connection is made, so rotated files are used from the next connection; grpcio's
channels cannot change their certificate once made (grpc/grpc#41779), so a connection that
stays up keeps the certificate it was made with, as any TLS connection does (a certificate
is checked at the handshake only). `refresh_interval` is therefore not needed here.

Without `certificate_file`, a workload that holds a certificate of its own (a `Mesh` that
enrolled with a join token: `own`) presents that one when the server asks for a client
certificate (an mTLS registry), as Istio's agent does with its workload certificate; a
server that does not ask never sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from sail.bootstrap import ChannelCreds
from sail.errors import SecurityError

__all__ = ["OwnCertificate", "channel_credentials"]

OwnCertificate = Callable[[], "tuple[bytes, bytes] | None"]
"""The workload's own certificate chain and key now (PEM), `None` while it has none."""


def channel_credentials(
    creds: ChannelCreds, own: OwnCertificate | None = None
) -> grpc.ChannelCredentials | None:
    """grpc's credentials for `creds`: `None` for `insecure`; for `tls`, SSL credentials
    from its files, read now (or `own`'s certificate, without certificate files: the
    module docstring). `SecurityError` naming a file that cannot be read."""
    if creds.type == "insecure":
        return None
    config = creds.config
    root = _read(config.get("ca_certificate_file"))
    key = _read(config.get("private_key_file"))
    chain = _read(config.get("certificate_file"))
    if chain is None and own is not None:
        mine = own()
        if mine is not None:
            chain, key = mine
    return grpc.ssl_channel_credentials(root, key, chain)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"channel_creds tls: {path}: {exc.strerror or exc}") from None
