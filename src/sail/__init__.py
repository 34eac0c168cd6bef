"""sail: a proxyless service mesh for Python.

```python
import sail

mesh = sail.Mesh.from_bootstrap()          # or sail.Mesh.local("mesh.yaml")
with mesh.client() as http:                # an httpx.Client
    http.get("http://reviews/reviews/1")   # routed, balanced by the mesh
```
"""

from __future__ import annotations

from sail.bootstrap import Bootstrap, load_bootstrap, parse_bootstrap
from sail.errors import (
    BootstrapError,
    ConfigError,
    NoHealthyUpstream,
    NoRoute,
    RequestError,
    ResourceError,
    SailError,
    UnknownService,
    XdsError,
)
from sail.http.server import RequestContext, current_request, operation
from sail.mesh import Mesh
from sail.model import MeshSnapshot
from sail.registration import InProcessRegistrar, Registrar, Workload

__version__ = "0.1.0"

__all__ = [
    "Bootstrap",
    "BootstrapError",
    "ConfigError",
    "InProcessRegistrar",
    "Mesh",
    "MeshSnapshot",
    "NoHealthyUpstream",
    "NoRoute",
    "Registrar",
    "RequestContext",
    "RequestError",
    "ResourceError",
    "SailError",
    "UnknownService",
    "Workload",
    "XdsError",
    "current_request",
    "load_bootstrap",
    "operation",
    "parse_bootstrap",
]
