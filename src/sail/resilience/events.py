"""Attempt events: where per-attempt observers (tracing, metrics, access logs) plug into the
request path.

Every attempt of every call through the mesh, HTTP or gRPC, sync or async, hedged or
not, starts in `Call.begin` and ends in `Call.end` (`sail.resilience.call`), so that is
where the events are raised, once, for every shell. An observer is a mesh's
(`Mesh.observe`); a call without one pays one `None` check per attempt and nothing else.

```python
class Timings:
    def attempt_started(self, call, endpoint, now):
        return now                      # the token: anything the observer wants back

    def attempt_ended(self, call, token, attempt, now):
        print(call.service, attempt.endpoint, attempt.outcome.reason, now - token)
```

`attempt_started` runs after the attempt passed the circuit breakers and the deadline
(an attempt refused there never starts: the call raises `UpstreamOverflow` or
`DeadlineExceeded`); its return value comes back to `attempt_ended` as `token` (a span, a
start time). `attempt_ended` gets the `Attempt` (endpoint, outcome) and runs before the
retry decision, so `call.attempts` already holds it and `len(call.attempts) - 1` is its
retry number. An attempt abandoned without an outcome (the caller cancelled, a hedge that
lost) ends with `Outcome(local=Local.CANCELLED)`. Observers run on the request path:
they must be quick and must not raise (an exception is logged and dropped, never the
call's).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sail.resilience.call import Attempt, Call

__all__ = ["AttemptObserver", "Observers"]

log = logging.getLogger("sail")


class AttemptObserver(Protocol):
    """Hears of every attempt's start and end (see the module docstring)."""

    def attempt_started(self, call: Call, endpoint: str, now: float) -> object: ...

    def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None: ...


class Observers:
    """Several observers as one; an observer's error is logged, never raised into a call."""

    __slots__ = ("_observers",)

    def __init__(self, observers: tuple[AttemptObserver, ...]) -> None:
        self._observers = observers

    def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
        tokens: list[object] = []
        for observer in self._observers:
            try:
                tokens.append(observer.attempt_started(call, endpoint, now))
            except Exception:
                log.exception("sail: attempt observer %r failed", observer)
                tokens.append(None)
        return tokens

    def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
        tokens = token if isinstance(token, list) else [None] * len(self._observers)
        for observer, each in zip(self._observers, tokens, strict=False):
            try:
                observer.attempt_ended(call, each, attempt, now)
            except Exception:
                log.exception("sail: attempt observer %r failed", observer)
