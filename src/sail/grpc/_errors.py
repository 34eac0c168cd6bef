"""sail's own gRPC failures, and the one mapping that turns them into grpc errors.

The flows (`sail.grpc._flow`) fail a call with one of sail's errors or with the attempt's
own `grpc.RpcError`, never with a grpc error of sail's making. Each channel hands a
failure to its caller through `mesh_error`, once, in its shell (`MeshRpcError` for the
sync channel, `AioMeshRpcError` for the aio one), as httpx maps httpcore's errors in one
place:

```
sail error                                   status of the MeshRpcError
-------------------------------------------  ------------------------------------------
StatusError (a fault abort, a route's         its `status`
  direct response, not a method path,
  a call cancelled during a back-off)
DeadlineExceeded                             DEADLINE_EXCEEDED
any other RequestError (UnknownService,      UNAVAILABLE
  NoRoute, NoHealthyUpstream,
  UpstreamOverflow)
```
"""

from __future__ import annotations

from typing import Any

import grpc

from sail.errors import DeadlineExceeded, RequestError, SailError

__all__ = ["MeshRpcError", "StatusError", "http_to_grpc", "mesh_error"]


class StatusError(RequestError):
    """sail answers a gRPC call itself with `status` (a `grpc.StatusCode`): an injected
    abort, a route's direct response, a method that is not `/package.Service/Method`, a
    call cancelled while sail held it. The message names the service and the reason."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status


class MeshRpcError(SailError, grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A gRPC call that sail failed itself, before or between attempts: no route, no
    endpoint, a circuit breaker, the deadline, an injected fault. It is a `grpc.RpcError`
    and a `grpc.Call` (`code()`, `details()`), as grpcio's own errors are, so code that
    handles those handles it; `details()` names the service and the reason. Its
    `__cause__` is the sail error it stands for (see the module docstring)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return f"{self._code.name}: {self._details}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback: Any) -> bool:
        return False

    # grpc.Future: a call that has failed
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> MeshRpcError:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


def mesh_error(error: BaseException, kind: type[MeshRpcError]) -> BaseException:
    """What a channel's caller gets for a flow's failure `error`: one of sail's errors as a
    `kind` (`MeshRpcError` or its aio twin) with the status of the module docstring's
    table and `error` as its cause; anything else (an attempt's own `grpc.RpcError`) as it
    is. The only place a `MeshRpcError` is made."""
    if not isinstance(error, SailError) or isinstance(error, MeshRpcError):
        return error
    if isinstance(error, StatusError):
        code = error.status
    elif isinstance(error, DeadlineExceeded):
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        code = grpc.StatusCode.UNAVAILABLE
    mapped = kind(code, str(error))
    mapped.__cause__ = error
    return mapped


def http_to_grpc(status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP status a route answers with itself (a direct response, a
    fault abort), as Envoy and gRPC map them (gRPC's http-grpc-status-mapping.md)."""
    return _HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)


_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
