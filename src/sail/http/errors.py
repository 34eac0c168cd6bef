"""sail's request errors as httpx exceptions, so `except httpx.HTTPError` keeps working.

Each class subclasses both an httpx exception and the matching `sail.errors` class:

```
httpx.ConnectError
├── UnknownServiceError     (also sail.errors.UnknownService)
├── NoRouteError            (also sail.errors.NoRoute)
├── NoHealthyUpstreamError  (also sail.errors.NoHealthyUpstream)
├── UpstreamOverflowError   (also sail.errors.UpstreamOverflow)
├── NoCredentialsError      (also sail.errors.NoCredentials)
└── PeerIdentityMismatchError (also sail.errors.PeerIdentityMismatch)
httpx.TimeoutException
└── DeadlineExceededError   (also sail.errors.DeadlineExceeded)
httpx.UnsupportedProtocol
└── UnsupportedRequestError (also sail.errors.UnsupportedRequest)
```

The connect errors all mean that nothing was sent to any server.
"""

from __future__ import annotations

import httpx

from sail.errors import (
    DeadlineExceeded,
    NoCredentials,
    NoHealthyUpstream,
    NoRoute,
    PeerIdentityMismatch,
    RequestError,
    UnknownService,
    UnsupportedRequest,
    UpstreamOverflow,
)

__all__ = [
    "DeadlineExceededError",
    "NoCredentialsError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "PeerIdentityMismatchError",
    "UnknownServiceError",
    "UnsupportedRequestError",
    "UpstreamOverflowError",
    "to_httpx",
]


class UnknownServiceError(httpx.ConnectError, UnknownService):
    pass


class NoRouteError(httpx.ConnectError, NoRoute):
    pass


class NoHealthyUpstreamError(httpx.ConnectError, NoHealthyUpstream):
    pass


class UpstreamOverflowError(httpx.ConnectError, UpstreamOverflow):
    pass


class NoCredentialsError(httpx.ConnectError, NoCredentials):
    pass


class PeerIdentityMismatchError(httpx.ConnectError, PeerIdentityMismatch):
    """An endpoint presented a certificate of an identity the cluster does not accept;
    `expected`, `presented` and `endpoint` say which."""


class DeadlineExceededError(httpx.TimeoutException, DeadlineExceeded):
    pass


class UnsupportedRequestError(httpx.UnsupportedProtocol, UnsupportedRequest):
    pass


_MAP: dict[type[RequestError], type[httpx.TransportError]] = {
    UnknownService: UnknownServiceError,
    NoRoute: NoRouteError,
    NoHealthyUpstream: NoHealthyUpstreamError,
    UpstreamOverflow: UpstreamOverflowError,
    DeadlineExceeded: DeadlineExceededError,
    UnsupportedRequest: UnsupportedRequestError,
    NoCredentials: NoCredentialsError,
    PeerIdentityMismatch: PeerIdentityMismatchError,
}


def to_httpx(exc: RequestError, request: httpx.Request) -> httpx.TransportError:
    """The one place sail's request errors become httpx exceptions."""
    for kind, mapped in _MAP.items():
        if isinstance(exc, kind):
            error = mapped(str(exc), request=request)
            for name, value in vars(exc).items():  # what the error names (`expected`...)
                if not name.startswith("_"):
                    setattr(error, name, value)
            return error
    return httpx.ConnectError(str(exc), request=request)
