"""Where a workload's certificate comes from: certificate provider instances (gRFC A29).

A bootstrap's `certificate_providers` names provider instances that xDS TLS config refers
to by name. sail implements gRPC's `file_watcher` plugin, so that certificates written by
SPIRE, Istio's agent, `sail cert` or any CA work:

```json
"certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
    "certificate_file": "/var/run/secrets/workload-spiffe-credentials/cert-chain.pem",
    "private_key_file": "/var/run/secrets/workload-spiffe-credentials/key.pem",
    "ca_certificate_file": "/var/run/secrets/workload-spiffe-credentials/root-cert.pem",
    "refresh_interval": "600s"}}}
```

The config's rules are gRPC's (A29): `certificate_file` and `private_key_file` both or
neither; at least one of them or `ca_certificate_file`; `refresh_interval` a JSON duration
(`"600s"`, default 600 s); A87's `spiffe_trust_bundle_map_file` (roots by trust domain, as
SPIFFE's bundle format writes them; when set, `ca_certificate_file` is ignored). Anything
else wrong is a `BootstrapError` naming the instance and field.

`FileWatcherProvider.load()` reads the files into a `Credentials`, checking that the key is
the leaf certificate's; `refresh()` reloads them when their contents changed and keeps the
last good credentials when the new ones do not load (a half-written rotation), as gRPC does.
Nothing here runs on the request path: a shell asks `current` (one attribute read).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sail.errors import BootstrapError, CertificateRefused, InvalidSpiffeId, SecurityError
from sail.security.ca import spiffe_id_of
from sail.security.spiffe import SpiffeId, check_trust_domain

__all__ = ["Credentials", "FileWatcherProvider", "file_watcher_from_config"]

log = logging.getLogger("sail.security.providers")

DEFAULT_REFRESH = 600.0
_KNOWN = frozenset({"certificate_file", "private_key_file", "ca_certificate_file",
                    "refresh_interval", "spiffe_trust_bundle_map_file"})
_DURATION = re.compile(r"^(\d{1,12})(?:\.(\d{1,9}))?s$")


@attrs.frozen
class Credentials:
    """One load of a provider: what a TLS context is made from.

    **Parameters**

    * `chain_pem` - the workload's certificate then its intermediates, PEM (`b""` when
      the instance provides roots only).
    * `key_pem` - its private key, PEM.
    * `roots` - trusted roots, PEM, by trust domain; `""` holds the roots that apply to
      every peer (`ca_certificate_file`).
    * `identity` - the SPIFFE ID of the certificate, `None` without one.
    * `not_after` - when the certificate expires (Unix seconds), `None` without one.
    """

    chain_pem: bytes
    key_pem: bytes = attrs.field(repr=False)
    roots: Mapping[str, bytes]
    identity: SpiffeId | None
    not_after: float | None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{what} {path}: {exc.strerror or exc}") from None


def _duration(value: object, where: str) -> float:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise BootstrapError(f"{where}: expected a JSON duration such as \"600s\", got {value!r}")
    seconds = float(value[:-1])
    if not math.isfinite(seconds) or seconds <= 0:
        raise BootstrapError(f"{where}: must be positive, got {value!r}")
    return seconds


def _same_key(key: object, cert: x509.Certificate) -> bool:
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _bundle_map(path: Path) -> dict[str, bytes]:
    """A87's SPIFFE trust bundle map: `{"trust_domains": {td: JWKS with x509-svid keys}}`;
    each key's `x5c` holds one DER certificate (base64, standard alphabet)."""
    import base64

    try:
        doc = json.loads(_read(path, "spiffe_trust_bundle_map_file"))
        domains = doc["trust_domains"]
        if not isinstance(domains, dict):
            raise TypeError("trust_domains is not an object")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise SecurityError(f"spiffe_trust_bundle_map_file {path}: unreadable: {exc}") from None
    roots: dict[str, bytes] = {}
    for domain, bundle in domains.items():
        try:
            check_trust_domain(domain)
            pems = []
            for key in bundle["keys"]:
                if key.get("use") != "x509-svid":
                    continue
                for der in key["x5c"]:
                    cert = x509.load_der_x509_certificate(base64.b64decode(der, validate=True))
                    pems.append(cert.public_bytes(serialization.Encoding.PEM))
        except (InvalidSpiffeId, ValueError, TypeError, KeyError, AttributeError) as exc:
            # A87: one bad entry invalidates the whole map.
            raise SecurityError(
                f"spiffe_trust_bundle_map_file {path}: trust domain {domain!r}: {exc}"
            ) from None
        roots[domain] = b"".join(pems)
    return roots


@attrs.define
class FileWatcherProvider:
    """gRPC's `file_watcher` certificate provider (see the module docstring).

    **Parameters**

    * `certificate_file`, `private_key_file` - the workload's chain and key, or `None`.
    * `ca_certificate_file` - roots for every peer, or `None`.
    * `spiffe_trust_bundle_map_file` - A87's roots by trust domain, or `None`.
    * `refresh_interval` - seconds between checks of the files.
    """

    certificate_file: Path | None = None
    private_key_file: Path | None = None
    ca_certificate_file: Path | None = None
    spiffe_trust_bundle_map_file: Path | None = None
    refresh_interval: float = DEFAULT_REFRESH
    current: Credentials | None = attrs.field(default=None, init=False)
    _seen: tuple[bytes, ...] = attrs.field(default=(), init=False, repr=False)

    def load(self) -> Credentials:
        """Read the files now: the credentials, or `SecurityError` naming the file and the
        fault (a missing file, a key that is not the certificate's, a leaf with no SPIFFE
        ID...). Does not change `current`."""
        chain_pem = key_pem = b""
        identity: SpiffeId | None = None
        not_after: float | None = None
        if self.certificate_file is not None and self.private_key_file is not None:
            chain_pem = _read(self.certificate_file, "certificate_file")
            key_pem = _read(self.private_key_file, "private_key_file")
            try:
                certs = x509.load_pem_x509_certificates(chain_pem)
            except ValueError as exc:
                raise SecurityError(
                    f"certificate_file {self.certificate_file}: not PEM certificates: {exc}"
                ) from None
            try:
                key = serialization.load_pem_private_key(key_pem, password=None)
            except (ValueError, TypeError) as exc:
                raise SecurityError(f"private_key_file {self.private_key_file}: not an "
                                    f"unencrypted PEM private key: {exc}") from None
            if not _same_key(key, certs[0]):
                raise SecurityError(
                    f"private_key_file {self.private_key_file}: not the key of the "
                    f"certificate in {self.certificate_file} (a rotation half done?)")
            if _is_ca(certs[0]):
                raise SecurityError(f"certificate_file {self.certificate_file}: its first "
                                    "certificate is a CA's (CA:TRUE), not a workload's")
            try:
                identity = spiffe_id_of(certs[0])
            except CertificateRefused as exc:
                raise SecurityError(f"certificate_file {self.certificate_file}: {exc}") \
                    from None
            not_after = certs[0].not_valid_after_utc.timestamp()
        roots: dict[str, bytes] = {}
        if self.spiffe_trust_bundle_map_file is not None:
            roots = _bundle_map(self.spiffe_trust_bundle_map_file)
        elif self.ca_certificate_file is not None:
            pem = _read(self.ca_certificate_file, "ca_certificate_file")
            try:
                if not x509.load_pem_x509_certificates(pem):
                    raise ValueError("no certificate")
            except ValueError as exc:
                raise SecurityError(
                    f"ca_certificate_file {self.ca_certificate_file}: not PEM: {exc}") from None
            roots[""] = pem
        return Credentials(chain_pem, key_pem, roots, identity, not_after)

    def refresh(self) -> bool:
        """Reload if the files changed since the last good load; True when `current` was
        replaced. A load that fails keeps the last good credentials (logged), except the
        first, which raises."""
        files = [f for f in (self.certificate_file, self.private_key_file,
                             self.ca_certificate_file, self.spiffe_trust_bundle_map_file)
                 if f is not None]
        try:
            seen = tuple(f.read_bytes() for f in files)
        except OSError as exc:
            if self.current is None:
                raise SecurityError(f"certificate provider: {exc}") from None
            log.warning("certificate provider: %s; keeping the current certificate", exc)
            return False
        if seen == self._seen and self.current is not None:
            return False
        try:
            loaded = self.load()
        except SecurityError as exc:
            if self.current is None:
                raise
            log.warning("certificate provider: %s; keeping the current certificate", exc)
            return False
        self.current, self._seen = loaded, seen
        return True


def file_watcher_from_config(name: str, config: Mapping[str, Any]) -> FileWatcherProvider:
    """A `file_watcher` instance from its bootstrap `config`, by gRPC's rules (the module
    docstring); `BootstrapError` naming `certificate_providers[name].config.<field>`."""
    at = f"certificate_providers[{name!r}].config"
    unknown = sorted(set(config) - _KNOWN)
    if unknown:
        # gRPC ignores unknown fields; a typo in a security setting should not pass.
        raise BootstrapError(f"{at}: unknown field(s) {', '.join(unknown)}")
    paths: dict[str, Path | None] = {}
    for field in ("certificate_file", "private_key_file", "ca_certificate_file",
                  "spiffe_trust_bundle_map_file"):
        value = config.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            raise BootstrapError(f"{at}.{field}: expected a file path")
        paths[field] = Path(value) if value else None
    if (paths["certificate_file"] is None) != (paths["private_key_file"] is None):
        raise BootstrapError(f"{at}: certificate_file and private_key_file go together")
    if all(p is None for p in paths.values()):
        raise BootstrapError(f"{at}: needs certificate_file and private_key_file, "
                             "ca_certificate_file, or spiffe_trust_bundle_map_file")
    refresh = config.get("refresh_interval")
    interval = DEFAULT_REFRESH if refresh is None else _duration(refresh, f"{at}.refresh_interval")
    if paths["spiffe_trust_bundle_map_file"] is not None:
        paths["ca_certificate_file"] = None  # A87: the map wins, the file is not read
    return FileWatcherProvider(
        paths["certificate_file"], paths["private_key_file"], paths["ca_certificate_file"],
        paths["spiffe_trust_bundle_map_file"], interval,
    )
