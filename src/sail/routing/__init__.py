"""Routing: Envoy's host, path, header and query matching, compiled once, fast per request.

```python
router = Router.build(route_config)            # on each RDS update, off the request path
result = router.route("reviews:9080", "/reviews/1?x=1", request.headers, method="GET")
result.cluster, result.path, result.host       # where to send it, what path, which Host
result.policy.headers, result.policy.faults     # header mutations, fault configs (policy.py)
mirrors(result.route.action)                    # clusters to shadow to (mirror.py)
```

`Router.route` raises `sail.errors.NoRoute` when nothing matches. The modules, in the order a
request meets them: `domains` (virtual host), `request` (path split, query, pseudo-headers),
`table` (a virtual host's routes and their path index), `matchers` (route conditions),
`actions` and `rewrite` (cluster, path, Host), then what a matched route carries beyond
that: `policy` (`RoutePolicy`), `headers` (header mutations) and `mirror` (shadow copies).
Every rule follows Envoy; where Envoy 1.40 and its docs disagree, a real Envoy decided
(`tests/e2e/test_envoy_parity.py`).
"""

from __future__ import annotations

from sail.routing.domains import DomainIndex
from sail.routing.request import Headers
from sail.routing.router import Router, RouteResult

__all__ = ["DomainIndex", "Headers", "RouteResult", "Router"]
