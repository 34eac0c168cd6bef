"""Sync status: which client runs which config version, as `istioctl proxy-status` shows it
(the same through Envoy's Client Status Discovery Service is `sail.xds.csds`).

A client's state, per type it subscribes to, from what it last said on its stream:

* **NACKED** - its last answer for some type was a NACK (the reason is the NACK's message);
* **STALE** - it has not yet ACKed the version last sent to it for some type;
* **SYNCED** - it ACKed everything sent to it.

Its *version* is the newest registry-wide version it has ACKed (each type's version is the
registry version of that type's last change, so a SYNCED client's version is the
registry's current version).
"""

from __future__ import annotations

import attrs

from sail.xds.server import AdsServer, StreamView

__all__ = ["ClientSync", "sync_status"]

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
