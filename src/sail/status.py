"""What `Mesh.status()` returns: where the mesh's config source stands, as values.

```python
status = mesh.status()
status.connected          # the ADS stream is up (local mode: always True)
status.versions           # {type URL: version accepted}
for nack in status.nacks:  # each resource refused, and why
    print(nack.type_name, nack.name, nack.version, nack.reason)
```

and `Mesh.identity` returns an `Identity` (the workload's SPIFFE ID and its certificate's
expiry). A leaf module (it imports nothing of sail), so the wire (`sail.xds`), the mesh and
the public face can all use it.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import attrs

__all__ = ["MeshStatus", "Nack"]


@attrs.frozen
class Nack:
    """One resource the mesh refused: over ADS, a resource named in a NACK's
    `error_detail`; in local mode, one that failed to decode in the file.

    * `type_url` - the resource type, e.g.
      `type.googleapis.com/envoy.config.listener.v3.Listener`.
    * `name` - the resource name (`resources[i]` when the name could not be read).
    * `reason` - what was wrong, naming the field (the NACK's `error_detail` for it).
    * `version` - the `version_info` of the response refused (`""` in local mode).

    A Nack lasts until a good version of that resource arrives, the server deletes it,
    or the mesh stops subscribing to it.
    """

    type_url: str
    name: str
    reason: str
    version: str = ""

    @property
    def type_name(self) -> str:
        """The short type name: `Listener`, `RouteConfiguration`, `Cluster`..."""
        return self.type_url.rsplit(".", 1)[-1]


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class MeshStatus:
    """Where a mesh's config source stands, at one moment (`Mesh.status()`).

    * `connected` - over xDS, whether the ADS stream is up now (`False` before the mesh's
      first use starts it, and while it reconnects); in local mode always `True`.
    * `server` - the xDS server the stream is on, or was last on (`None` before the first
      connection, and in local mode).
    * `last_error` - why the stream last ended or could not connect (`""` if it never
      did); in local mode, why the file could not be used at its last reload (`""` when
      it could).
    * `versions` - per resource type URL, the version accepted last (over xDS, the
      response's `version_info`; in local mode, the number of the load of the file in
      force, for each type the file holds).
    * `nacks` - every resource refused and not since replaced by a good version, by type
      URL then name. The mesh serves the last good version of each (if it had one).
    """

    connected: bool
    server: str | None
    last_error: str
    versions: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    nacks: tuple[Nack, ...] = ()


@attrs.frozen
class Identity:
    """The certificate a workload holds now (`Mesh.identity`).

    **Parameters**

    * `spiffe_id` - `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    * `not_after` - when the certificate expires (Unix seconds).
    * `source` - where it came from: `"mesh CA"` or the provider's certificate file.
    """

    spiffe_id: str
    not_after: float
    source: str
