"""A workload's certificate from the mesh CA: its key, its first certificate, its renewals.

```python
enrollment = Enrollment(ask)                 # ask(csr_pem, current_chain) -> chain
enrollment.obtain()                          # the first: ask(csr, None), with a join token
write_files(Path("/var/run/sail"), enrollment)
time.sleep(enrollment.renew_at() - time.time())
enrollment.obtain()                          # a renewal: ask(csr, current chain)
```

The key is EC P-256, made here and never sent anywhere. A renewal keeps it (the CA renews a
certificate only for its own key: the CSR's signature is the proof of possession, see
`CertificateAuthority.renew`), so that the key file never changes after the first write
and a reader of the files never sees a certificate with a key that is not its own.

Rotation is Istio's: at half the certificate's life, with a jitter of 1 % of the life
either way so that a fleet started together does not renew together.

`write_files` writes what Istio's agent writes, for gRPC's `file_watcher` provider, Envoy
and anything else that reads files: `cert-chain.pem` (the certificate, then any
intermediates), `key.pem` (mode 0600), `root-cert.pem` (the root the chain ends in), each
replaced atomically.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sail.errors import CertificateRefused
from sail.security.ca import spiffe_id_of
from sail.security.spiffe import SpiffeId

__all__ = ["Ask", "Enrollment", "write_files"]

Ask = Callable[[str, Sequence[str] | None], list[str]]
"""`(csr_pem, current_chain or None) -> chain, leaf first`: one call to the CA."""

ROTATION_JITTER = 0.01


class Enrollment:
    """One workload key and its current certificate (see the module docstring).

    **Parameters**

    * `ask` - calls the CA (`sail.registry.remote.create_certificate` bound to a registry
      and a join token, say).
    * `rand` - `[0, 1)` draws for the rotation jitter.
    """

    def __init__(self, ask: Ask, *, rand: Callable[[], float] = random.random) -> None:
        self._ask = ask
        self._rand = rand
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.chain: list[str] | None = None
        self.obtained_at = 0.0
        self._csr = (
            x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
        )

    def obtain(self) -> list[str]:
        """Ask for a certificate (the first, or a renewal of the current one) and keep it.
        Raises what `ask` raises; the current certificate stays if it fails."""
        chain = self._ask(self._csr, self.chain)
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if leaf.public_key().public_bytes(der, spki) != \
                self.key.public_key().public_bytes(der, spki):
            raise CertificateRefused("the CA answered with a certificate for another key")
        self.chain = chain
        self.obtained_at = time.time()
        return chain

    @property
    def identity(self) -> SpiffeId | None:
        """The SPIFFE ID of the current certificate."""
        return spiffe_id_of(self._leaf()) if self.chain else None

    def renew_at(self) -> float:
        """When to renew (Unix seconds): half-way through the certificate's life from when
        it was obtained, give or take 1 % of it. (Not from its `notBefore`: CAs backdate
        that for skewed clocks, sail's by a minute, which would make a short life look
        half spent on arrival.)"""
        leaf = self._leaf()
        start = self.obtained_at
        life = max(0.0, leaf.not_valid_after_utc.timestamp() - start)
        share = 0.5 + ROTATION_JITTER * (2 * self._rand() - 1)
        return start + life * share

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def _leaf(self) -> x509.Certificate:
        if not self.chain:
            raise RuntimeError("no certificate yet: call obtain()")
        return x509.load_pem_x509_certificate(self.chain[0].encode())


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_files(directory: Path, enrollment: Enrollment) -> None:
    """Write `root-cert.pem`, `key.pem` (0600) and then `cert-chain.pem` into `directory`
    (made 0700 if missing), each replaced atomically; the key only when it is not there
    yet (it never changes)."""
    if not enrollment.chain:
        raise RuntimeError("no certificate yet: call obtain()")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    *certs, root = enrollment.chain if len(enrollment.chain) > 1 else (*enrollment.chain, "")
    # The root and the key before the chain: a reader that waits for `cert-chain.pem` finds
    # the others already there.
    if root:
        _replace(directory / "root-cert.pem", root.encode(), 0o644)
    key_path = directory / "key.pem"
    if not key_path.exists() or key_path.read_bytes() != enrollment.key_pem:
        _replace(key_path, enrollment.key_pem, 0o600)
    _replace(directory / "cert-chain.pem", "".join(certs).encode(), 0o644)
