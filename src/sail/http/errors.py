"""sail's request errors as httpx exceptions, so `except httpx.HTTPError` keeps working.

Each class subclasses both an httpx exception and the matching `sail.errors` class:

```
httpx.ConnectError
├── UnknownServiceError     (also sail.errors.UnknownService)
├── NoRouteError            (also sail.errors.NoRoute)
└── NoHealthyUpstreamError  (also sail.errors.NoHealthyUpstream)
```

They are all connect errors: in each case nothing was sent to any server.
"""

from __future__ import annotations

import httpx

from sail.errors import NoHealthyUpstream, NoRoute, RequestError, UnknownService

__all__ = ["NoHealthyUpstreamError", "NoRouteError", "UnknownServiceError", "to_httpx"]


class UnknownServiceError(httpx.ConnectError, UnknownService):
    pass


class NoRouteError(httpx.ConnectError, NoRoute):
    pass


class NoHealthyUpstreamError(httpx.ConnectError, NoHealthyUpstream):
    pass


_MAP: dict[type[RequestError], type[httpx.ConnectError]] = {
    UnknownService: UnknownServiceError,
    NoRoute: NoRouteError,
    NoHealthyUpstream: NoHealthyUpstreamError,
}


def to_httpx(exc: RequestError, request: httpx.Request) -> httpx.ConnectError:
    """The one place sail's request errors become httpx exceptions."""
    for kind, mapped in _MAP.items():
        if isinstance(exc, kind):
            return mapped(str(exc), request=request)
    return httpx.ConnectError(str(exc), request=request)
