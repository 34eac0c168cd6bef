"""The Istio API subset sail's registry reads: parsed strictly, validated, then translated.

```python
from sail.registry.istio import load_paths, validate
from sail.registry.translate import translate

objects = load_paths(["mesh/"])                       # IstioConfigError on any bad field
validate(objects, known_hosts={"reviews", "ratings"}) # checks across objects
resources = translate(objects, workloads)             # sail.model objects for xDS
```

| module | holds |
|---|---|
| `model` | the objects, by kind, and their `ObjectMeta` |
| `virtual_service`, ... | the specs, one module per kind, each listing the fields it supports |
| `parse` | YAML → objects (`load_documents`, `load_paths`) |
| `validate` | checks across objects; refusal of what cannot be translated yet |
| `schema` | the strict YAML reader the specs are declared for |
| `hosts`, `routes`, `clusters` | the pieces `sail.registry.translate` assembles |

Every error is an `IstioConfigError` (a `sail.errors.ConfigError`) naming the file, the
object and the field: `mesh.yaml: VirtualService default/reviews:
spec.http[0].route[1].destination.subsetx: unknown field (known: host, port, subset)`.
"""

from __future__ import annotations

from sail.registry.istio.errors import IstioConfigError
from sail.registry.istio.hosts import cluster_name, short_host
from sail.registry.istio.model import (
    KINDS,
    AuthorizationPolicy,
    DestinationRule,
    IstioObject,
    ObjectMeta,
    PeerAuthentication,
    ServiceEntry,
    VirtualService,
)
from sail.registry.istio.parse import load_documents, load_paths
from sail.registry.istio.validate import check_supported, validate

__all__ = [
    "KINDS",
    "AuthorizationPolicy",
    "DestinationRule",
    "IstioConfigError",
    "IstioObject",
    "ObjectMeta",
    "PeerAuthentication",
    "ServiceEntry",
    "VirtualService",
    "check_supported",
    "cluster_name",
    "load_documents",
    "load_paths",
    "short_host",
    "validate",
]
