"""Join tokens: what a workload presents for its first certificate.

`sail token create --namespace default --service-account reviews` prints one; the workload
gives it to the registry (`$SAIL_JOIN_TOKEN`) with its first certificate signing request,
and the registry signs that CSR for the identity the token names and for no other. Later
certificates are granted against the current one.

A token is `sailjt1.<payload>.<mac>`: the payload is base64url JSON (`sub`, the SPIFFE ID
it grants; `exp`, its expiry in Unix seconds; `jti`, a random id for logs), the MAC an
HMAC-SHA256 of `sailjt1.<payload>` under a secret the registry keeps in its store (replicas
sharing a store share it). A token may be used until it expires, by every replica of the
workload it was made for; to take one back, rotate the secret (every unexpired token then
fails). Verification is constant-time and says which rule failed (`TokenError`), never the
token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time

from sail.errors import InvalidSpiffeId, TokenError
from sail.security.spiffe import SpiffeId

__all__ = ["DEFAULT_TOKEN_LIFETIME", "issue_token", "new_secret", "verify_token"]

DEFAULT_TOKEN_LIFETIME = 24 * 3600.0
_PREFIX = "sailjt1"
_MAX_LENGTH = 4096


def new_secret() -> bytes:
    """A fresh 256-bit token secret."""
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    padded = (text + "=" * (-len(text) % 4)).encode()
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, f"{_PREFIX}.{body}".encode(), hashlib.sha256).digest()


def issue_token(
    secret: bytes, identity: SpiffeId, *, lifetime: float = DEFAULT_TOKEN_LIFETIME,
    now: float | None = None,
) -> str:
    """A token granting `identity` for `lifetime` seconds."""
    if not lifetime > 0:
        raise TokenError(f"a token's lifetime must be positive, got {lifetime!r}")
    issued = time.time() if now is None else now
    payload = {"sub": str(identity), "exp": int(issued + lifetime), "jti": secrets.token_hex(8)}
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{_PREFIX}.{body}.{_b64(_mac(secret, body))}"


def verify_token(secret: bytes, token: object, *, now: float | None = None) -> SpiffeId:
    """The identity `token` grants, if this registry made it and it has not expired;
    `TokenError` naming the rule otherwise."""
    if not isinstance(token, str) or not token:
        raise TokenError("no join token")
    if len(token) > _MAX_LENGTH:
        raise TokenError(f"a join token is at most {_MAX_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise TokenError(f"not a join token (expected {_PREFIX}.<payload>.<mac>)")
    _, body, mac = parts
    try:
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        raise TokenError("the join token's MAC is not base64url") from None
    if not hmac.compare_digest(given, _mac(secret, body)):
        raise TokenError("the join token was not made by this registry (its MAC does not "
                         "verify), or the token secret was rotated")
    try:
        payload = json.loads(_unb64(body))
        subject, expiry = payload["sub"], payload["exp"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise TokenError("the join token's payload is unreadable") from None
    if not isinstance(expiry, int | float) or not isinstance(subject, str):
        raise TokenError("the join token's payload is unreadable")
    if (time.time() if now is None else now) >= expiry:
        raise TokenError("the join token has expired")
    try:
        return SpiffeId.parse(subject)
    except InvalidSpiffeId as exc:
        raise TokenError(f"the join token grants no valid identity: {exc}") from None
