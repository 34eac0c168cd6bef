"""sail: a proxyless service mesh for Python.

```python
import sail

mesh = sail.Mesh.from_bootstrap()          # or sail.Mesh.local("mesh.yaml")
with mesh.client() as http:                # an httpx.Client
    r = http.get("http://reviews/reviews/1")   # routed, balanced, retried by the mesh
    r.extensions["sail"]                   # a CallInfo: the attempts it took
mesh.status()                              # a MeshStatus: connection, versions, NACKs
```
"""

from __future__ import annotations

from sail._version import __version__ as __version__
from sail.bootstrap import Bootstrap, load_bootstrap, parse_bootstrap
from sail.context import Peer, RequestContext, current_request, operation
from sail.errors import (
    BootstrapError,
    ConfigError,
    DeadlineExceeded,
    NoCredentials,
    NoHealthyUpstream,
    NoRoute,
    PeerIdentityMismatch,
    RejectedService,
    RequestError,
    ResourceError,
    SailError,
    UnknownService,
    UnsupportedRequest,
    UpstreamOverflow,
    XdsError,
)
from sail.mesh import Mesh
from sail.model import MeshSnapshot
from sail.registration import InProcessRegistrar, Registrar, Workload
from sail.resilience.call import Attempt, CallInfo
from sail.resilience.events import AttemptObserver
from sail.status import Identity, MeshStatus, Nack

__all__ = [
    "Attempt",
    "AttemptObserver",
    "Bootstrap",
    "BootstrapError",
    "CallInfo",
    "ConfigError",
    "DeadlineExceeded",
    "Identity",
    "InProcessRegistrar",
    "Mesh",
    "MeshSnapshot",
    "MeshStatus",
    "Nack",
    "NoCredentials",
    "NoHealthyUpstream",
    "NoRoute",
    "Peer",
    "PeerIdentityMismatch",
    "Registrar",
    "RejectedService",
    "RequestContext",
    "RequestError",
    "ResourceError",
    "SailError",
    "UnknownService",
    "UnsupportedRequest",
    "UpstreamOverflow",
    "Workload",
    "XdsError",
    "current_request",
    "load_bootstrap",
    "operation",
    "parse_bootstrap",
]
