"""What the gRPC flow tests share: a local-mode mesh, a fake clock, a recording attempt
observer, fake attempt failures, and a look at the cluster's counters. No grpcio server
and no socket: the flows are driven by hand, as a shell would drive them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

import sail
from sail import testing
from sail.dataplane import ClusterRuntime
from sail.grpc._core import ChannelCore
from sail.grpc._flow import Action, Send, Sleep, StreamFlow, UnaryFlow
from sail.grpc._replay import Replay
from sail.grpc._route import check_method
from sail.resilience.call import Attempt, Call

SERVICE = "svc:50051"
METHOD = "/pkg.Svc/Get"
ENDPOINTS = [("10.0.0.1", 50051), ("10.0.0.2", 50051), ("10.0.0.3", 50051)]
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
PREVIOUS_HOSTS = testing.previous_hosts()
RETRY = {
    "retry_on": "unavailable",
    "num_retries": 2,
    "retry_host_predicate": PREVIOUS_HOSTS,
    "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
}


class Clock:
    """The flows' `monotonic()`: reads `now`, which only the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Observer:
    """An attempt observer that checks that each attempt ends exactly once, and records
    `(event, endpoint, reason)`."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}
        self.events: list[tuple[str, str, str]] = []
        self.next = 0

    def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
        self.next += 1
        self.open[self.next] = endpoint
        self.events.append(("start", endpoint, ""))
        return self.next

    def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
        assert isinstance(token, int)
        assert self.open.pop(token) == attempt.endpoint, "ended twice, or the wrong attempt"
        self.events.append(("end", attempt.endpoint, attempt.outcome.reason))

    @property
    def reasons(self) -> list[str]:
        return [reason for event, _, reason in self.events if event == "end"]


class RpcFailure(grpc.RpcError):  # type: ignore[misc]
    """An attempt's failure as grpcio reports it: a `grpc.RpcError` with a status."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def unavailable(details: str = "the server says no") -> RpcFailure:
    return RpcFailure(grpc.StatusCode.UNAVAILABLE, details)


def connect_failure() -> RpcFailure:
    return RpcFailure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")


def write_mesh(
    path: Path,
    *,
    route: Mapping[str, Any] | None = None,
    cluster: Mapping[str, Any] | None = None,
    http_filters: Sequence[Mapping[str, Any]] = (),
    endpoints: Sequence[tuple[str, int]] = ENDPOINTS,
) -> sail.Mesh:
    """A local-mode mesh with service `SERVICE`: one route (`route`: its action's fields)
    to cluster `svc` of `endpoints` (`cluster`: the cluster's fields)."""
    routes = testing.route_config(SERVICE, [testing.route("svc", **(route or {}))])
    listener = testing.api_listener(SERVICE, routes=routes)
    if http_filters:
        hcm = listener["api_listener"]["api_listener"]
        hcm["http_filters"] = [*http_filters, *hcm["http_filters"]]
    resources = [
        listener,
        testing.eds_cluster("svc", **(cluster or {})),
        testing.load_assignment("svc", list(endpoints)),
    ]
    path.write_text(json.dumps({"resources": resources}))
    return sail.Mesh.local(path, poll_interval=0)


def core_of(mesh: sail.Mesh, target: str = SERVICE) -> ChannelCore:
    """The channel side the flows see (no grpcio channel is opened by a flow)."""
    return ChannelCore(mesh._seam, target)


def unary(
    core: ChannelCore, *, method: str = METHOD, timeout: float | None = None,
    metadata: Any = None, replay: Replay | None = None,
) -> UnaryFlow:
    return UnaryFlow(core, method, check_method(core.service, method), metadata, timeout,
                     replay)


def stream(
    core: ChannelCore, *, method: str = METHOD, timeout: float | None = None,
    replay: Replay | None = None,
) -> StreamFlow:
    return StreamFlow(core, method, check_method(core.service, method), None, timeout,
                      replay)


def cluster(mesh: sail.Mesh) -> ClusterRuntime:
    return mesh._dataplane.state.clusters["svc"]


def hosts_active(mesh: sail.Mesh) -> dict[str, int]:
    stats = cluster(mesh).hosts._hosts
    return {key: stats[key].active for key in list(stats) if stats[key].active}


def assert_clean(mesh: sail.Mesh) -> None:
    """Every counter back to zero: requests, retries and each endpoint's in-flight count."""
    limits = cluster(mesh).limits
    assert limits.active == 0, limits.active
    assert limits.retries == 0, limits.retries
    assert hosts_active(mesh) == {}


def fixed_jitter(flow: UnaryFlow | StreamFlow, value: float = 0.5) -> None:
    """Make the flow's back-offs `value` of their interval (they are random otherwise)."""
    assert flow.call is not None
    flow.call.rand = lambda: value


def sent(action: Action) -> Send:
    assert isinstance(action, Send), action
    return action


def slept(action: Action) -> Sleep:
    assert isinstance(action, Sleep), action
    return action
