"""The one mapping from sail's errors to grpc's (`sail.grpc._errors.mesh_error`)."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

import sail
from sail.errors import (
    DeadlineExceeded,
    NoHealthyUpstream,
    NoRoute,
    RequestError,
    UnknownService,
    UpstreamOverflow,
)
from sail.grpc import AioMeshRpcError, MeshRpcError
from sail.grpc._errors import StatusError, http_to_grpc, mesh_error
from tests.unit.grpc.grpc_helpers import unavailable


@pytest.mark.parametrize(("error", "code"), [
    (DeadlineExceeded("the deadline passed"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnknownService("service 'x': no listener"), grpc.StatusCode.UNAVAILABLE),
    (NoRoute("no route"), grpc.StatusCode.UNAVAILABLE),
    (NoHealthyUpstream("no endpoint"), grpc.StatusCode.UNAVAILABLE),
    (UpstreamOverflow("max_requests"), grpc.StatusCode.UNAVAILABLE),
    (StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "abort"),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
])
@pytest.mark.parametrize("kind", [MeshRpcError, AioMeshRpcError])
def test_sail_errors_become_mesh_rpc_errors(
    error: RequestError, code: grpc.StatusCode, kind: type[MeshRpcError]
) -> None:
    mapped = mesh_error(error, kind)
    assert type(mapped) is kind
    assert isinstance(mapped, grpc.RpcError) and isinstance(mapped, sail.SailError)
    assert mapped.code() is code
    assert mapped.details() == str(error)
    assert mapped.__cause__ is error
    if kind is AioMeshRpcError:
        assert isinstance(mapped, grpc.aio.AioRpcError)


def test_an_attempts_own_error_passes_as_it_is() -> None:
    error = unavailable()
    assert mesh_error(error, MeshRpcError) is error
    mapped = mesh_error(NoRoute("x"), MeshRpcError)
    assert mesh_error(mapped, AioMeshRpcError) is mapped  # never mapped twice


def test_http_statuses_of_routes_that_answer_themselves() -> None:
    assert http_to_grpc(404) is grpc.StatusCode.UNIMPLEMENTED
    assert http_to_grpc(503) is grpc.StatusCode.UNAVAILABLE
    assert http_to_grpc(418) is grpc.StatusCode.UNKNOWN
