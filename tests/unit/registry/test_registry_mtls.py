"""PeerAuthentication → server Listener chains, and DestinationRule `tls` plus auto-mTLS →
cluster TLS, as the registry translates them; everything it makes decodes (A29) with the
mesh's certificate provider `default`."""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
import pytest

from sail.model import HealthStatus, StringMatchKind
from sail.registration import Workload
from sail.registry.istio.errors import IstioConfigError
from sail.registry.istio.parse import load_documents
from sail.registry.istio.peer_authentication import PeerPolicies
from sail.registry.istio.security import MtlsMode
from sail.registry.server_listener import server_listeners
from sail.registry.translate import translate
from sail.registry.wire import BodyError, workload_from_json, workload_to_json
from sail.xds.codec.decode_cluster import decode_cluster
from sail.xds.codec.decode_listener import decode_listener
from sail.xds.codec.encode import encode_cluster, encode_listener

TD = "spiffe://example.org"
REVIEWS = Workload("reviews", "10.0.0.1", 9080, labels={"app": "reviews"},
                   identity=f"{TD}/ns/default/sa/reviews")
REVIEWS_PROD = Workload("reviews", "10.0.0.2", 9080, labels={"app": "reviews"},
                        identity=f"{TD}/ns/prod/sa/reviews")
ANONYMOUS = Workload("reviews", "10.0.0.3", 9080, labels={"app": "reviews"})


def peer(name: str, namespace: str, mode: str, selector: str = "") -> str:
    selected = f"  selector: {{matchLabels: {{{selector}}}}}\n" if selector else ""
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{selected}"
            f"  mtls: {{mode: {mode}}}\n---\n")


def policies(text: str) -> PeerPolicies:
    return PeerPolicies(load_documents(text, "mesh.yaml"))


def test_the_most_specific_policy_with_a_mode_wins() -> None:
    assert policies("").mode(REVIEWS) is MtlsMode.PERMISSIVE  # Istio's default
    mesh_wide = peer("default", "istio-system", "STRICT")
    assert policies(mesh_wide).mode(REVIEWS) is MtlsMode.STRICT
    namespace = mesh_wide + peer("ns", "prod", "DISABLE")
    assert policies(namespace).mode(REVIEWS_PROD) is MtlsMode.DISABLE
    assert policies(namespace).mode(REVIEWS) is MtlsMode.STRICT  # another namespace
    workload = namespace + peer("w", "prod", "PERMISSIVE", "app: reviews")
    assert policies(workload).mode(REVIEWS_PROD) is MtlsMode.PERMISSIVE
    unset = namespace + peer("w", "prod", "UNSET", "app: reviews")
    assert policies(unset).mode(REVIEWS_PROD) is MtlsMode.DISABLE  # UNSET inherits
    other_labels = namespace + peer("w", "prod", "PERMISSIVE", "app: ratings")
    assert policies(other_labels).mode(REVIEWS_PROD) is MtlsMode.DISABLE
    # a selector in the root namespace is not mesh-wide
    rooted = peer("w", "istio-system", "STRICT", "app: reviews")
    assert policies(rooted).mode(REVIEWS) is MtlsMode.PERMISSIVE


def test_port_level_mtls_decides_for_the_workload_port() -> None:
    """`portLevelMtls` keys on the workload's port; an UNSET port entry inherits the
    policy's `mtls`, which inherits the namespace's."""
    text = peer("ns", "default", "DISABLE") + (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: w, namespace: default}\nspec:\n"
        "  selector: {matchLabels: {app: reviews}}\n"
        "  portLevelMtls:\n    9080: {mode: STRICT}\n    '9090': {mode: UNSET}\n"
        "    9091: {mode: PERMISSIVE}\n"
    )
    on = {port: attrs.evolve(REVIEWS, port=port) for port in (9080, 9090, 9091, 7000)}
    modes = {port: policies(text).mode(w) for port, w in on.items()}
    assert modes == {9080: MtlsMode.STRICT, 9090: MtlsMode.DISABLE,
                     9091: MtlsMode.PERMISSIVE, 7000: MtlsMode.DISABLE}
    assert chains_of(on[9080], text) == [("mtls", True, False)]


@pytest.mark.parametrize(("spec", "error"), [
    ("  portLevelMtls: {9080: {mode: STRICT}}\n", "spec.portLevelMtls: needs a selector"),
    ("  selector: {matchLabels: {app: r}}\n  portLevelMtls: {0: {mode: STRICT}}\n",
     "spec.portLevelMtls[0]: 0 is not a port number"),
    ("  selector: {matchLabels: {app: r}}\n  portLevelMtls: {http: {mode: STRICT}}\n",
     "keys must be integers"),
])
def test_bad_port_level_mtls_is_refused_naming_the_field(spec: str, error: str) -> None:
    text = ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: w, namespace: default}\nspec:\n" + spec)
    with pytest.raises(IstioConfigError, match=re.escape(error)):
        load_documents(text, "mesh.yaml")


def chains_of(workload: Workload, text: str) -> list[tuple[str, bool, bool]]:
    (listener, *_) = server_listeners([workload], policies=policies(text))
    decoded = decode_listener(encode_listener(listener), {"default"})
    assert decoded == listener
    return [(c.name, c.tls is not None, c.match.tls) for c in decoded.chains()]


def test_server_listeners_carry_the_mode() -> None:
    assert chains_of(REVIEWS, peer("d", "default", "STRICT")) == [("mtls", True, False)]
    assert chains_of(REVIEWS, "") == [("mtls", True, True), ("plaintext", False, False)]
    assert chains_of(REVIEWS, peer("d", "default", "DISABLE")) == [("", False, False)]
    # no identity: nothing to serve TLS with under PERMISSIVE, and STRICT stays STRICT
    assert chains_of(ANONYMOUS, "") == [("", False, False)]
    assert chains_of(ANONYMOUS, peer("d", "default", "STRICT")) == [("mtls", True, False)]


def cluster_tls(workloads: Sequence[Workload], text: str = "") -> list[str] | None:
    resources = translate(load_documents(text, "mesh.yaml"),
                          [(w, HealthStatus.HEALTHY) for w in workloads])
    (cluster,) = [c for c in resources.clusters if c.name == "outbound|9080||reviews"]
    assert decode_cluster(encode_cluster(cluster), {"default"}) == cluster
    if cluster.tls is None:
        return None
    assert cluster.tls.identity is not None and cluster.tls.identity.instance == "default"
    assert all(m.matcher.kind is StringMatchKind.EXACT for m in cluster.tls.san_matchers)
    return [m.matcher.value for m in cluster.tls.san_matchers]


DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: MODE}
---
"""


def test_auto_mtls_when_every_workload_accepts_it() -> None:
    both = [REVIEWS, REVIEWS_PROD]
    assert cluster_tls(both) == sorted(w.identity for w in both)  # type: ignore[misc]
    assert cluster_tls([REVIEWS, ANONYMOUS]) is None  # one cannot: plaintext
    assert cluster_tls(both, peer("d", "prod", "DISABLE")) is None  # one does not accept
    assert cluster_tls(both, peer("d", "istio-system", "STRICT")) is not None


def test_a_grpc_workload_gets_mtls_under_strict_only() -> None:
    """A grpcio server serves one transport per port: under PERMISSIVE it serves
    plaintext, so the registry gives it no TLS chain and clients no mTLS to it (Istio's
    proxyless rule); under STRICT both sides are mTLS."""
    grpc_reviews = attrs.evolve(REVIEWS, permissive=False)
    assert chains_of(grpc_reviews, "") == [("", False, False)]
    assert cluster_tls([grpc_reviews]) is None
    strict = peer("d", "default", "STRICT")
    assert chains_of(grpc_reviews, strict) == [("mtls", True, False)]
    assert cluster_tls([grpc_reviews], strict) == [REVIEWS.identity]
    # on the wire
    body = workload_to_json(grpc_reviews)
    assert body["permissive"] is False
    assert workload_from_json(body, 10)[0] == grpc_reviews
    assert "permissive" not in workload_to_json(REVIEWS)
    with pytest.raises(BodyError, match="'permissive' must be true or false"):
        workload_from_json({**body, "permissive": "no"}, 10)


@pytest.mark.parametrize(("mode", "expected"), [("ISTIO_MUTUAL", True), ("DISABLE", False)])
def test_the_destination_rule_decides_over_auto_mtls(mode: str, expected: bool) -> None:
    tls = cluster_tls([REVIEWS, ANONYMOUS] if expected else [REVIEWS],
                      DR.replace("MODE", mode))
    assert (tls is not None) is expected
    if expected:
        assert tls == [REVIEWS.identity]  # the identities known for the service


@pytest.mark.parametrize(("spec", "error"), [
    ("  template: {serviceAccount: bookinfo-reviews}\n", None),
    ("  template: {serviceAccount: Bad_Name}\n", "spec.template.serviceAccount: 'Bad_Name' is not"),
    ("  template: {}\n", "spec.template.serviceAccount: is required"),
    ("  template: {serviceAccount: a, ports: {http: 80}}\n", "spec.template.ports: not supported"),
    ("  probe: {httpGet: {port: 80}}\n  template: {serviceAccount: a}\n", "spec.probe: not"),
])
def test_a_workload_group_names_its_service_account(spec: str, error: str | None) -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\n"
            "metadata: {name: reviews, namespace: default}\nspec:\n" + spec)
    if error is None:
        (group,) = load_documents(text, "group.yaml")
        assert group.spec.template.service_account == "bookinfo-reviews"  # type: ignore[union-attr]
        return
    with pytest.raises(IstioConfigError, match=re.escape(error)):
        load_documents(text, "group.yaml")
