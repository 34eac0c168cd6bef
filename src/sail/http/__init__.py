"""HTTP in the mesh: httpx clients and ASGI servers.

* `Mesh.client()` / `Mesh.async_client()` - `httpx` clients whose requests to mesh hosts
  are routed, balanced, retried and timed out by sail (`sail.http.transport`).
* `@mesh.service(...)` - an ASGI app made a mesh workload, with the request context and the
  caller's deadline (`sail.http.server`).

sail's own failures of a request raise the error classes of `sail.http.errors`, exported
here: each is both an `httpx` exception (so an existing `except httpx.HTTPError` keeps
working) and the matching `sail.errors` class. `UnknownServiceError`, `NoRouteError`,
`NoHealthyUpstreamError` and `UpstreamOverflowError` are `httpx.ConnectError`s (nothing was
sent); `DeadlineExceededError` is an `httpx.TimeoutException`.
"""

from __future__ import annotations

from sail.http import errors as _errors
from sail.http.errors import *  # noqa: F403  (every error class of sail.http.errors)

__all__ = [name for name in _errors.__all__ if name.endswith("Error")]
