"""PeerAuthentication → the mTLS mode of each workload, as Istio resolves it.

The most specific policy that sets a mode wins, and `UNSET` (or no `mtls`) inherits from
the next: a policy with a `selector` matching the workload's labels in the workload's
namespace (its `portLevelMtls` entry for the workload's port first, then its `mtls`),
then the namespace's policy without a selector, then the mesh-wide policy (no selector, in
the root namespace, `istio-system` as in Istio); with none, PERMISSIVE, Istio's default.
Where two policies of one level apply, the oldest wins in Istio; sail has no creation
times and takes the first by name, and `validate` refuses two namespace-wide (or
two mesh-wide) policies outright. A workload's namespace is its identity's
(`Workload.namespace`).

The mode becomes the filter chains of the workload's server Listener (`server_chains`):
STRICT one mTLS chain; PERMISSIVE an mTLS chain for TLS connections
(`transport_protocol: tls`) and a plaintext one, for a workload with an identity that
serves both on one port (`Workload.permissive`; one without an identity has nothing to
serve TLS with, a grpcio server serves plaintext, and clients do not choose mTLS to
either); DISABLE a plaintext chain. The certificate provider instance is `default`,
certificate and roots both, as Istio's proxyless bootstrap names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sail.model import (
    CertificateProviderRef,
    DownstreamTls,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
)
from sail.registration import Workload
from sail.registry.istio.model import IstioObject, PeerAuthentication
from sail.registry.istio.security import MtlsMode

__all__ = ["ROOT_NAMESPACE", "PeerPolicies", "server_chains"]

ROOT_NAMESPACE = "istio-system"
"""Where a PeerAuthentication without a selector applies to the whole mesh (Istio's
default root namespace)."""

MESH_PROVIDER = "default"
"""The certificate provider instance the registry's TLS config names, for the workload's
certificate and its roots (Istio's proxyless bootstrap writes `default`)."""

_SERVER_TLS = DownstreamTls(
    identity=CertificateProviderRef(MESH_PROVIDER, "default"),
    roots=CertificateProviderRef(MESH_PROVIDER, "ROOTCA"),
    require_client_certificate=True,
)


class PeerPolicies:
    """The PeerAuthentication objects of a config, indexed for `mode`."""

    def __init__(self, objects: Iterable[IstioObject], root: str = ROOT_NAMESPACE) -> None:
        self._root = root
        self._by_namespace: dict[str, list[PeerAuthentication]] = {}
        for obj in sorted(objects, key=lambda o: o.key):
            if isinstance(obj, PeerAuthentication):
                self._by_namespace.setdefault(obj.meta.namespace, []).append(obj)

    def __bool__(self) -> bool:
        return bool(self._by_namespace)

    def mode(self, workload: Workload) -> MtlsMode:
        """STRICT, PERMISSIVE or DISABLE for `workload` (never UNSET)."""
        namespace = workload.namespace
        local = self._by_namespace.get(namespace, [])
        levels = [
            [p for p in local if _selects(p, workload.labels)],
            [p for p in local if p.spec.selector is None],
            [p for p in self._by_namespace.get(self._root, []) if p.spec.selector is None],
        ]
        for policies in levels:
            for policy in policies[:1]:
                for mtls in (policy.spec.port_level_mtls.get(workload.port), policy.spec.mtls):
                    if mtls is not None and mtls.mode is not MtlsMode.UNSET:
                        return mtls.mode
        return MtlsMode.PERMISSIVE


def _selects(policy: PeerAuthentication, labels: Mapping[str, str]) -> bool:
    selector = policy.spec.selector
    if selector is None:
        return False
    return all(labels.get(k) == v for k, v in selector.match_labels.items())


def server_chains(
    hcm: HttpConnectionManager, mode: MtlsMode, workload: Workload
) -> Sequence[FilterChain]:
    """The filter chains of `workload`'s server Listener under `mode` (module docstring)."""
    if mode is MtlsMode.STRICT:
        return (FilterChain(hcm, name="mtls", tls=_SERVER_TLS),)
    plain = FilterChain(hcm, name="plaintext")
    if mode is MtlsMode.PERMISSIVE and workload.identity is not None and workload.permissive:
        tls_match = FilterChainMatch(never=True, tls=True)
        return (FilterChain(hcm, tls_match, "mtls", _SERVER_TLS), plain)
    return (plain,)
