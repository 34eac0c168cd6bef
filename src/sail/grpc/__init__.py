"""gRPC in the mesh: grpcio channels and servers, sync and `grpc.aio`.

* `Mesh.grpc_channel()` / `Mesh.aio_grpc_channel()` - drop-in channels that route, balance,
  retry and time out each call through the mesh (`sail.grpc.channel`, `sail.grpc.aio`).
* `Mesh.grpc_server()` / `Mesh.aio_grpc_server()` - servers that register as mesh
  workloads, serve the health service, carry the request context and the caller's deadline
  into handlers, and drain on stop (`sail.grpc.server`).
"""

from __future__ import annotations

from sail.grpc._core import MeshRpcError
from sail.grpc.aio import AioMeshChannel, AioMeshRpcError
from sail.grpc.channel import MeshChannel
from sail.grpc.server import AioMeshServer, MeshServer

__all__ = [
    "AioMeshChannel",
    "AioMeshRpcError",
    "AioMeshServer",
    "MeshChannel",
    "MeshRpcError",
    "MeshServer",
]
