"""Sync status: which client runs which config version, as `istioctl proxy-status` shows it,
and the same through Envoy's Client Status Discovery Service (CSDS).

A client's state, per type it subscribes to, from what it last said on its stream:

* **NACKED** - its last answer for some type was a NACK (the reason is the NACK's message);
* **STALE** - it has not yet ACKed the version last sent to it for some type;
* **SYNCED** - it ACKed everything sent to it.

Its *version* is the newest registry-wide version it has ACKed (each type's version is the
registry version of that type's last change, so a SYNCED client's version is the
registry's current version).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from sail.xds.server import AdsServer, StreamView

__all__ = ["ClientSync", "CsdsServer", "sync_status"]

SYNCED, STALE, NACKED = "SYNCED", "STALE", "NACKED"


@attrs.frozen
class ClientSync:
    """One row of `sail status`."""

    node_id: str
    service: str
    peer: str
    version: str
    state: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


def _row(view: StreamView) -> ClientSync:
    node = view.node
    state, reason = SYNCED, ""
    acked: list[int] = []
    for type_url, sent in sorted(view.sent.items()):
        last = view.last.get(type_url)
        short = type_url.rsplit(".", 1)[-1]
        if last is not None and last.nacked:
            state, reason = NACKED, f"{short}: {last.error}"
        elif (last is None or last.version != sent) and state == SYNCED:
            state, reason = STALE, f"{short}: version {sent} sent, not ACKed yet"
        if last is not None and last.version.isdigit():
            acked.append(int(last.version))
    return ClientSync(
        node_id=node.id if node is not None else "",
        service=node.cluster if node is not None else "",
        peer=view.peer,
        version=str(max(acked)) if acked else "-",
        state=state,
        reason=reason,
    )


def sync_status(ads: AdsServer) -> list[ClientSync]:
    """One row per connected client, sorted by node id."""
    return sorted((_row(v) for v in ads.streams()), key=lambda r: (r.node_id, r.peer))


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
