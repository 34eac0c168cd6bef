"""The two HTTP shells over real upstreams: what they add around the one exchange (the
refusal of `https://`, attempt events, shadow copies drained on close), sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

import sail
import sail.http
from sail import testing
from sail.resilience.call import Attempt, Call
from tests.e2e.test_resilience import RETRY_5XX, Upstreams, flaky, routes, upstreams

__all__ = ["flaky", "upstreams"]  # the fixtures, used by name

MODES = ["sync", "async"]


@contextlib.contextmanager
def run_mesh(
    workdir: Path, route_config: Mapping[str, Any], endpoints: list[tuple[str, int]],
    clusters: Mapping[str, list[tuple[str, int]]] | None = None,
) -> Iterator[sail.Mesh]:
    """A local mesh of service `svc` over `endpoints`, plus more `clusters` by name."""
    resources = [
        testing.api_listener("svc", routes=route_config),
        testing.eds_cluster("svc"),
        testing.load_assignment("svc", endpoints),
    ]
    for name, eps in (clusters or {}).items():
        resources += [testing.eds_cluster(name), testing.load_assignment(name, eps)]
    path = workdir / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    with sail.Mesh.local(path, poll_interval=0) as mesh:
        yield mesh


def get(mesh: sail.Mesh, mode: str, url: str, n: int = 1) -> list[httpx.Response]:
    """`n` GETs of `url` through a client of `mesh` that is closed right after."""
    if mode == "sync":
        with mesh.client() as client:
            return [client.get(url) for _ in range(n)]

    async def run() -> list[httpx.Response]:
        async with mesh.async_client() as client:
            return [await client.get(url) for _ in range(n)]

    return asyncio.run(run())


class Recorder:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[tuple[str, str]] = []

    def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
        self.started.append(endpoint)
        return len(self.started)

    def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
        assert token == len(self.ended) + 1  # each attempt's own token, in order
        self.ended.append((attempt.endpoint, attempt.outcome.reason))


@pytest.mark.parametrize("mode", MODES)
def test_https_to_a_mesh_host_is_refused_and_nothing_is_sent(
    flaky: Upstreams, tmp_path: Path, mode: str
) -> None:
    with run_mesh(tmp_path, routes(), flaky.endpoints("a")) as mesh:
        with pytest.raises(sail.http.UnsupportedRequestError, match="never downgrades"):
            get(mesh, mode, "https://svc/x")
        assert flaky.requests("a") == 0
        assert get(mesh, mode, "http://svc/x")[0].status_code == 200


@pytest.mark.parametrize("mode", MODES)
def test_observers_hear_every_attempt_of_a_retried_call(
    flaky: Upstreams, tmp_path: Path, mode: str
) -> None:
    flaky.mode("a", "status", status=503)
    with run_mesh(tmp_path, routes(retry_policy=RETRY_5XX), flaky.endpoints("a", "b")) as mesh:
        recorder = Recorder()
        mesh.observe(recorder)
        replies = get(mesh, mode, "http://svc/x", n=4)
    assert [r.status_code for r in replies] == [200] * 4
    made = [(a.endpoint, a.outcome.reason) for r in replies for a in r.extensions["sail"].attempts]
    assert recorder.ended == made
    assert recorder.started == [endpoint for endpoint, _ in made]
    assert (f"127.0.0.1:{flaky.ports['a']}", "503") in made  # some calls were retried


def test_an_observer_that_raises_never_fails_the_call(flaky: Upstreams, tmp_path: Path) -> None:
    class Broken:
        def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
            raise RuntimeError("observer bug")

        def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
            raise RuntimeError("observer bug")

    with run_mesh(tmp_path, routes(), flaky.endpoints("a")) as mesh:
        recorder = Recorder()
        mesh.observe(Broken())
        mesh.observe(recorder)
        assert get(mesh, "sync", "http://svc/x")[0].status_code == 200
        assert len(recorder.ended) == 1


@pytest.mark.parametrize("mode", MODES)
def test_closing_a_client_right_after_mirrored_requests_keeps_the_copies(
    flaky: Upstreams, tmp_path: Path, mode: str
) -> None:
    route: dict[str, Any] = routes()
    route["virtual_hosts"][0]["routes"][0]["route"]["request_mirror_policies"] = [
        {"cluster": "shadow"}
    ]
    flaky.mode("c", "slow", delay=0.2)  # copies still in flight when the client closes
    shadow = {"shadow": flaky.endpoints("c")}
    with run_mesh(tmp_path, route, flaky.endpoints("a"), shadow) as mesh:
        get(mesh, mode, "http://svc/m", n=10)
        deadline = time.monotonic() + 5
        while flaky.requests("c") < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert flaky.requests("a") == flaky.requests("c") == 10
