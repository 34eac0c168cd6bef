"""HTTP in the mesh: httpx clients and ASGI servers.

* `Mesh.client()` / `Mesh.async_client()` - `httpx` clients whose requests to mesh hosts
  are routed, balanced, retried and timed out by sail (`sail.http.transport`).
* `@mesh.service(...)` - an ASGI app made a mesh workload, with the request context and the
  caller's deadline (`sail.http.server`).

sail's own failures of a request raise one of these, each both an `httpx` exception (so an
existing `except httpx.HTTPError` keeps working) and the matching `sail.errors` class
(`sail.http.errors`):

```
httpx.ConnectError
├── UnknownServiceError     (also sail.UnknownService)     no listener for the host
├── NoRouteError            (also sail.NoRoute)            no virtual host or route matched
├── NoHealthyUpstreamError  (also sail.NoHealthyUpstream)  no endpoint can take the call
└── UpstreamOverflowError   (also sail.UpstreamOverflow)   a circuit breaker is full
httpx.TimeoutException
└── DeadlineExceededError   (also sail.DeadlineExceeded)   the deadline passed
```
"""

from __future__ import annotations

from sail.http.errors import (
    DeadlineExceededError,
    NoHealthyUpstreamError,
    NoRouteError,
    UnknownServiceError,
    UpstreamOverflowError,
)

__all__ = [
    "DeadlineExceededError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "UnknownServiceError",
    "UpstreamOverflowError",
]
