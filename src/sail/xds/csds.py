"""Envoy's Client Status Discovery Service (CSDS) over an `AdsServer`'s streams: what each
connected client subscribes to and which version of each type it ACKed or NACKed, as
`istioctl proxy-status` and Envoy's own tools read it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from sail.xds.server import AdsServer, StreamView

__all__ = ["CsdsServer"]


def _client_config(view: StreamView) -> Any:
    config = csds_pb2.ClientConfig()
    if view.node is not None:
        config.node.CopyFrom(view.node)
    for type_url, names in sorted(view.names.items()):
        last = view.last.get(type_url)
        entry = config.generic_xds_configs.add(type_url=type_url)
        entry.name = "*" if names is None else ",".join(sorted(names))
        if last is None:
            entry.client_status = config_dump_shared_pb2.REQUESTED
            continue
        entry.version_info = last.version
        if last.nacked:
            entry.client_status = config_dump_shared_pb2.NACKED
            entry.error_state.details = last.error
        else:
            entry.client_status = config_dump_shared_pb2.ACKED
    return config


class CsdsServer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """CSDS over the registry's streams: one `ClientConfig` per connected client, with a
    `GenericXdsConfig` per subscribed type (its names, ACKed version, ACKED/NACKED)."""

    def __init__(self, ads: AdsServer) -> None:
        self._ads = ads

    def add_to(self, server: Any) -> None:
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(self, server)

    def _response(self, request: Any) -> Any:
        wanted = {m.node_id.exact for m in request.node_matchers if m.node_id.exact}
        return csds_pb2.ClientStatusResponse(
            config=[
                _client_config(v)
                for v in self._ads.streams()
                if not wanted or (v.node is not None and v.node.id in wanted)
            ]
        )

    async def FetchClientStatus(self, request: Any, context: Any) -> Any:
        return self._response(request)

    async def StreamClientStatus(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            yield self._response(request)
