"""The identity a workload holds now, kept current by one background thread.

A `WorkloadIdentity` has one source:

* `Enrollment` (the mesh CA, `sail registry --trust-domain`): the first certificate with a
  join token, then renewals at half-life with the certificate as the credential; or
* `FileWatcherProvider` (the bootstrap's `certificate_providers`): files written by
  `sail cert`, SPIRE or Istio's agent, read again every `refresh_interval`.

Its thread (`sail-identity`) gets the first credentials, then keeps them current; a failure
keeps the current ones (until they expire, they still serve), is logged, and is tried again
with a backoff (0.5 s doubling to 30 s): the thread never dies silently. `current` is one
attribute read, for the request path; `identity` is the public view (`sail.Identity`). In
a forked child the thread starts again (`os.register_at_fork`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Protocol

from sail.errors import SailError
from sail.security.enroll import Enrollment
from sail.security.providers import Credentials, FileWatcherProvider
from sail.status import Identity

__all__ = ["WorkloadIdentity"]


class _Listener(Protocol):
    def refresh(self) -> None: ...


log = logging.getLogger("sail.security")

_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0


class WorkloadIdentity:
    """Keeps a workload's credentials current from one source (see the module docstring).

    **Parameters**

    * `source` - an `Enrollment` or a `FileWatcherProvider`.
    """

    def __init__(self, source: Enrollment | FileWatcherProvider) -> None:
        self._source = source
        self.current: Credentials | None = None
        self.last_error = ""
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._listeners: weakref.WeakSet[_Listener] = weakref.WeakSet()
        self._start()
        _live.add(self)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sail-identity", daemon=True)
        self._thread.start()

    @property
    def identity(self) -> Identity | None:
        creds = self.current
        if creds is None or creds.identity is None or creds.not_after is None:
            return None
        where = ("mesh CA" if isinstance(self._source, Enrollment)
                 else str(self._source.certificate_file))
        return Identity(str(creds.identity), creds.not_after, where)

    def wait(self, timeout: float | None = None) -> Identity | None:
        """Wait (at most `timeout` seconds) for the first credentials; the identity then,
        `None` if there is none yet (`last_error` says why)."""
        self._ready.wait(timeout)
        return self.identity

    def subscribe(self, listener: _Listener) -> None:
        """Call `listener.refresh()` on this thread after each change of `current` (held
        weakly: a listener nobody else holds is dropped)."""
        self._listeners.add(listener)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            before = self.current
            try:
                self._refresh()
                if self.current is not before:
                    self._notify()
            except (SailError, OSError) as exc:
                failures += 1
                self.last_error = str(exc)
                loud = failures == 1 or failures % 20 == 0
                log.log(logging.WARNING if loud else logging.DEBUG,
                        "sail identity: %s; %s", exc,
                        "keeping the current certificate" if self.current else "no certificate yet")
                delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** (failures - 1))
            except Exception:  # never die silently: log, back off, go on
                failures += 1
                log.exception("sail identity: unexpected error; trying again")
                delay = _RETRY_MAX
            else:
                failures = 0
                self.last_error = ""
                self._ready.set()
                delay = self._next_delay()
            self._stop.wait(delay)

    def _refresh(self) -> None:
        source = self._source
        if isinstance(source, FileWatcherProvider):
            if source.refresh():
                log.info("sail identity: %s from %s", source.current and source.current.identity,
                         source.certificate_file)
            self.current = source.current
            return
        source.obtain()
        assert source.chain is not None
        leaf, *rest = source.chain
        self.current = Credentials(
            chain_pem="".join([leaf, *rest[:-1]]).encode() if rest else leaf.encode(),
            key_pem=source.key_pem,
            roots={"": rest[-1].encode()} if rest else {},
            identity=source.identity,
            not_after=_not_after(leaf),
        )
        log.info("sail identity: %s from the mesh CA, renewing in %.0f s", source.identity,
                 source.renew_at() - time.time())

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener.refresh()
            except Exception:  # one listener's failure must not stop the others
                log.exception("sail identity: a TLS context failed to take the new certificate")

    def _next_delay(self) -> float:
        source = self._source
        if isinstance(source, FileWatcherProvider):
            return source.refresh_interval
        return max(0.0, source.renew_at() - time.time())


_live: weakref.WeakSet[WorkloadIdentity] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child inherits no threads: each identity's thread starts again there (the
    child keeps the parent's key and certificate, and renews them itself)."""
    for keeper in list(_live):
        if not keeper._stop.is_set():
            keeper._start()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _not_after(pem: str) -> float:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc.timestamp()
