"""Host names and cluster names, as the translation spells them.

* **Short names.** A registered workload's service is a short name (`reviews`). Istio
  objects may also name it in Kubernetes' long form, `reviews.<namespace>.svc.cluster.local`
  (or `reviews.svc.cluster.local`): both reduce to `reviews`. Namespaces are not kept apart:
  `reviews.prod.svc.cluster.local` and `reviews.test.svc.cluster.local` are the same service.
  Other names (`api.example.com`, ServiceEntry hosts) are kept as written.
* **Cluster names** follow Istio: `outbound|<port>|<subset>|<host>`, the subset empty for
  the whole service (`outbound|9080||reviews`, `outbound|9080|v2|reviews`).
"""

from __future__ import annotations

__all__ = ["CLUSTER_SUFFIX", "cluster_name", "short_host"]

CLUSTER_SUFFIX = ".svc.cluster.local"


def short_host(host: str) -> str:
    """`reviews.default.svc.cluster.local` → `reviews`; any other host unchanged."""
    if host.endswith(CLUSTER_SUFFIX):
        return host[: -len(CLUSTER_SUFFIX)].split(".", 1)[0]
    return host


def cluster_name(port: int, host: str, subset: str = "") -> str:
    """Istio's name for the cluster of `host` on `port` (and `subset`)."""
    return f"outbound|{port}|{subset}|{host}"
