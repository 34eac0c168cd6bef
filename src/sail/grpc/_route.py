"""Routing one gRPC call: its route, cluster, first endpoint, deadline and fault decision.

A call is routed as Envoy and gRPC's xDS clients route it: the authority is the channel's
target, the path is the method (`/package.Service/Method`), the method is `POST`, and the
headers are the call's metadata (plus `content-type: application/grpc`; `-bin` entries are
not matched, as gRFC A28 says).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from sail.dataplane import start_call
from sail.grpc._errors import StatusError, http_to_grpc
from sail.grpc._tls import check_cluster
from sail.resilience.deadline import inherited_deadline

if TYPE_CHECKING:
    from sail.dataplane import Dataplane, DataplaneState, Target
    from sail.resilience.call import Call
    from sail.resilience.fault import FaultDecision

__all__ = ["Metadata", "MetadataHeaders", "check_method", "prepare", "target_name"]

Metadata = Sequence[tuple[str, "str | bytes"]]

_METHOD = re.compile(r"/[^/]+/[^/]+")


class MetadataHeaders:
    """A call's metadata as routing reads headers (`sail.routing.request.Headers`)."""

    __slots__ = ("_metadata",)

    def __init__(self, metadata: Metadata | None) -> None:
        self._metadata = metadata or ()

    def get(self, name: str, default: None = None, /) -> str | None:
        values = self.get_list(name)
        return ",".join(values) if values else None

    def get_list(self, name: str) -> list[str]:
        name = name.lower()
        values = [v for k, v in self._metadata if k.lower() == name and isinstance(v, str)]
        if not values and name == "content-type":
            return ["application/grpc"]
        return values


def target_name(target: str) -> tuple[str, str]:
    """`(host, listener name)` of a channel target: `ratings`, `ratings:9090`, or either
    after `xds:///` (so one target string serves grpcio's resolver and sail alike)."""
    name = target.removeprefix("xds:///")
    host = name
    if name.startswith("["):
        host = name[1:name.find("]")]
    elif name.count(":") == 1:
        host = name.partition(":")[0]
    return host, name


def check_method(service: str, method: str) -> StatusError | None:
    """The error of a call to `method` when it is not a gRPC method path."""
    if _METHOD.fullmatch(method):
        return None
    return StatusError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"service {service!r}: {method!r} is not a gRPC method path (/package.Service/Method)",
    )


def prepare(
    dataplane: Dataplane,
    state: DataplaneState,
    service: str,
    method: str,
    metadata: Metadata | None,
    timeout: float | None,
    now: float,
) -> tuple[Target, Call, Metadata | None, FaultDecision | None]:
    """Route one call at `now`: its target (route, cluster, first endpoint), its `Call`
    (policy, circuit breakers, deadline), the metadata to send (the route's header changes
    applied) and the fault filter's decision, if any applies. Raises sail's
    `RequestError`s: `NoRoute`, `NoHealthyUpstream`..., and `StatusError` for a route that
    answers itself (a direct response or a redirect)."""
    headers = MetadataHeaders(metadata) if metadata else _NO_METADATA
    target = dataplane.resolve(service, service, method, headers, "POST", state)
    cluster = target.cluster
    if cluster is None:  # a direct response or redirect: answered without an upstream
        action = target.route.route.action
        status = getattr(action, "status", 404)
        raise StatusError(
            http_to_grpc(status),
            f"service {service!r}: the route for {method!r} answers {status} itself",
        )
    if cluster.tls is not None:  # mTLS, or a reason it cannot be (never plaintext)
        check_cluster(service, cluster)
    plan = target.route.policy
    deadline = now + timeout if timeout is not None else None
    cap = plan.grpc_timeout
    if cap is None:
        runtime = state.services.get(service)
        hcm = runtime.hcm if runtime is not None else None
        cap = hcm.max_stream_duration if hcm is not None else None
    if cap:  # A31: max_stream_duration caps the caller's deadline; 0 is no cap
        deadline = now + cap if deadline is None else min(deadline, now + cap)
    inherited = inherited_deadline.get()
    if inherited is not None:
        deadline = inherited if deadline is None else min(deadline, inherited)
    call = start_call(target, deadline, dataplane.observer)
    if plan.headers is not None:
        metadata = _mutated(target, metadata)
    fault = None
    faults = target.faults
    # The filter decides only when some config applies (its own, or the route's): else
    # `decide` would say None.
    if faults is not None and (faults.policy is not None or plan.faults):
        fault = faults.decide(target.route, headers)
    return target, call, metadata, fault


_NO_METADATA = MetadataHeaders(None)  # immutable: shared by the calls without metadata


def _mutated(target: Target, metadata: Metadata | None) -> Metadata:
    """The route's request header changes applied to the call's metadata (binary entries
    are kept as they are)."""
    mutation = target.route.policy.headers
    assert mutation is not None
    items = list(metadata or ())
    text = [(k, v) for k, v in items if isinstance(v, str)]
    binary = [(k, v) for k, v in items if not isinstance(v, str)]
    return [*mutation.apply_request(text), *binary]
