"""The credentials of a connection to an xDS server (the bootstrap's `channel_creds`).

`insecure` is plaintext. `tls` is gRFC A65's: the server is verified against
`ca_certificate_file` (unset: the system's roots) and, with `certificate_file` and
`private_key_file`, the client presents that certificate (mTLS). The files are read each
time a connection is made, so rotated files are used from the next connection; grpcio's
channels cannot change their certificate once made (grpc/grpc#41779), so a connection that
stays up keeps the certificate it was made with, as any TLS connection does (a certificate
is checked at the handshake only). `refresh_interval` is therefore not needed here.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from sail.bootstrap import ChannelCreds
from sail.errors import SecurityError

__all__ = ["channel_credentials"]


def channel_credentials(creds: ChannelCreds) -> grpc.ChannelCredentials | None:
    """grpc's credentials for `creds`: `None` for `insecure`; for `tls`, SSL credentials
    from its files, read now. `SecurityError` naming a file that cannot be read."""
    if creds.type == "insecure":
        return None
    config = creds.config
    values = [_read(config.get(field)) for field in
              ("ca_certificate_file", "private_key_file", "certificate_file")]
    return grpc.ssl_channel_credentials(*values)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"channel_creds tls: {path}: {exc.strerror or exc}") from None
