"""The request a server is handling, as every server integration (HTTP and gRPC) sees it.

Each served request runs with a `RequestContext` in a context variable:
`sail.current_request()` returns it from anywhere in the handler's call tree (sync or async),
and `@sail.operation("GetReview")` on a handler names the operation in it (metrics and
policies will key on it). The servers (`sail.http.server`, `sail.grpc.server`) set it.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from sail.registration import Workload
from sail.resilience.deadline import EXPECTED_TIMEOUT_HEADER, parse_timeout_ms

__all__ = ["Peer", "RequestContext", "current_request", "operation"]

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class Peer:
    """Who sent the request being served, as the connection it came on says.

    **Parameters**

    * `address` - the caller's `(host, port)`.
    * `mtls` - the connection is mutual TLS, the caller's certificate verified.
    * `spiffe_id` - the caller's SPIFFE ID (its certificate's one URI SAN), `None` for
      plaintext or a certificate without one.
    * `principal` - the caller's name as gRFC A41 and Envoy's RBAC read it: the URI SAN,
      else the first DNS SAN, else the subject; `""` for plaintext.
    """

    address: tuple[str, int] | None
    mtls: bool = False
    spiffe_id: str | None = None
    principal: str = ""


@attrs.define
class RequestContext:
    """What the mesh knows of the request being served.

    **Parameters**

    * `service` - the workload's service name.
    * `workload` - the workload serving it.
    * `method`, `path` - of the request (for gRPC: `POST` and `/pkg.Service/Method`).
    * `headers` - the request headers (gRPC: the invocation metadata without `-bin` keys),
      lower-cased names.
    * `operation` - set by `@sail.operation` when the handler runs (`None` before).
    * `deadline` - when the caller stops waiting, on `time.monotonic()`: from the request's
      `x-envoy-expected-rq-timeout-ms` (gRPC: the call's deadline, `grpc-timeout`), `None`
      without it. Calls this handler makes through the mesh inherit it
      (`sail.resilience.deadline`).
    * `peer` - the caller as its connection says (`Peer`: mTLS or not, SPIFFE ID), when
      the server knows it (`mesh.serve`), else `None`.
    """

    service: str
    workload: Workload
    method: str
    path: str
    headers: Mapping[str, str]
    operation: str | None = None
    deadline: float | None = None
    peer: Peer | None = None

    def time_left(self) -> float | None:
        """Seconds until `deadline` (negative once past), `None` without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()


def _deadline(headers: Mapping[str, str]) -> float | None:
    """The deadline an `x-envoy-expected-rq-timeout-ms` header sets, `None` without one."""
    timeout = parse_timeout_ms(headers.get(EXPECTED_TIMEOUT_HEADER))
    return None if timeout is None else time.monotonic() + timeout


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "sail_request", default=None
)


def current_request() -> RequestContext | None:
    """The `RequestContext` of the request this code serves, or `None` outside one."""
    return _current.get()


def operation(name: str) -> Callable[[F], F]:
    """Name the operation a handler implements, e.g. `@sail.operation("GetReview")`."""

    def decorate(handler: F) -> F:
        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = _current.get()
                if ctx is not None:
                    ctx.operation = name
                return await handler(*args, **kwargs)

            async_wrapper.__sail_operation__ = name  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = _current.get()
            if ctx is not None:
                ctx.operation = name
            return handler(*args, **kwargs)

        wrapper.__sail_operation__ = name  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
