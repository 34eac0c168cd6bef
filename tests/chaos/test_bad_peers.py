"""Bad peers: an endpoint that accepts and never answers, one that answers garbage, one
that closes mid-body. Each must end in a clear error within the route's timeout, classified
so that retries and outlier detection see it. The peers are real sockets on loopback, each
served by a thread of this test that does exactly one bad thing."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sail
from sail import testing
from sail.dataplane import ClusterRuntime

pytestmark = pytest.mark.e2e

Behaviour = Callable[[socket.socket], None]


class Peer:
    """A listening socket on 127.0.0.1 whose every connection gets `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.open: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            self.behaviour(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.open:
            conn.close()


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def never_answers(conn: socket.socket) -> None:
    read_request(conn)
    time.sleep(10)  # holds the connection open, says nothing


def garbage(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HELLO, THIS IS NOT HTTP\r\n\r\n")
    conn.close()


def cut_body(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
    conn.close()


def cut_stream(conn: socket.socket) -> None:
    """A body of unknown length (chunked), cut off after its first chunk."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"a\r\n0123456789\r\n")
    conn.close()


def good(conn: socket.socket) -> None:
    while True:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


class Blackhole:
    """A port on 127.0.0.1 whose SYNs go unanswered: a listening socket that never
    accepts, its backlog filled, so the kernel drops new SYNs (as for a host that is gone
    from the network). `connect()` hangs until the caller's own timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        for _ in range(16):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", self.port))
            except TimeoutError:
                probe.close()
                return  # full: SYNs are dropped now
            self.held.append(probe)
        raise AssertionError("the backlog never filled")

    def close(self) -> None:
        for probe in self.held:
            probe.close()
        self.sock.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture
def peers() -> Iterator[Callable[[Behaviour], Peer]]:
    made: list[Peer] = []

    def make(behaviour: Behaviour) -> Peer:
        peer = Peer(behaviour)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def mesh_for(
    tmp_path: Path, ports: list[int], cluster: dict[str, Any] | None = None, **route: Any
) -> sail.Mesh:
    resources = [
        testing.api_listener("svc", routes=testing.route_config(
            "svc", [testing.route("svc", **route)])),
        testing.eds_cluster("svc", **(cluster or {})),
        testing.load_assignment("svc", [("127.0.0.1", p) for p in ports]),
    ]
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"resources": resources}))
    return sail.Mesh.local(path)


def cluster(mesh: sail.Mesh) -> ClusterRuntime:
    return mesh._dataplane.state.clusters["svc"]


def test_an_endpoint_that_never_answers_times_out_with_the_route(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    peer = peers(never_answers)
    with mesh_for(tmp_path, [peer.port], timeout="1s") as mesh, mesh.client() as client:
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException) as caught:
            client.get("http://svc/x")
        elapsed = time.monotonic() - start
    assert isinstance(caught.value, sail.DeadlineExceeded)
    assert "timeout" in str(caught.value)  # the attempt is named, with how it ended
    assert 0.9 <= elapsed < 6, elapsed  # the route's 1 s, not httpx's 5 s or a hang


def test_a_hung_endpoint_is_skipped_by_a_per_try_timeout_and_ejected(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    hung, ok = peers(never_answers), peers(good)
    retry = {"retry_on": "reset", "num_retries": 1, "per_try_timeout": "0.2s",
             "retry_host_predicate": testing.previous_hosts()}
    with mesh_for(tmp_path, [hung.port, ok.port], timeout="5s", retry_policy=retry) as mesh:
        with mesh.client() as client:
            replies = [client.get("http://svc/x") for _ in range(14)]
        assert [r.status_code for r in replies] == [200] * 14
        timed_out = [r for r in replies if r.extensions["sail"].retried]
        assert all(r.extensions["sail"].attempts[0].outcome.reason == "timeout"
                   for r in timed_out)
        # five timeouts in a row are five local-origin failures: failure accrual ejects
        assert len(timed_out) == 5
        assert cluster(mesh).ejected == {f"127.0.0.1:{hung.port}"}


def test_garbage_is_a_reset_retried_for_a_get_and_counted(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad, ok = peers(garbage), peers(good)
    with mesh_for(tmp_path, [bad.port, ok.port]) as mesh, mesh.client() as client:
        replies = [client.get("http://svc/x") for _ in range(12)]
        assert [r.status_code for r in replies] == [200] * 12
        retried = [r for r in replies if r.extensions["sail"].retried]
        assert retried and all(
            r.extensions["sail"].attempts[0].outcome.reason == "reset" for r in retried
        )
        assert cluster(mesh).ejected == {f"127.0.0.1:{bad.port}"}


def test_only_garbage_ends_in_the_protocol_error_naming_the_attempts(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad = peers(garbage)
    with mesh_for(tmp_path, [bad.port]) as mesh, mesh.client() as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            client.get("http://svc/x")
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "2 attempt(s)" in notes and "reset" in notes, notes
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            client.post("http://svc/x", content=b"not idempotent")
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "1 attempt(s)" in notes, notes  # a POST is never sent twice by default


def test_a_small_body_cut_off_is_a_reset_retried_on_another_endpoint(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad, ok = peers(cut_body), peers(good)
    with mesh_for(tmp_path, [bad.port, ok.port]) as mesh, mesh.client() as client:
        replies = [client.get("http://svc/x") for _ in range(4)]
        assert [r.status_code for r in replies] == [200] * 4
        assert [r.content for r in replies] == [b"ok"] * 4
        cut = [r.extensions["sail"].attempts[0] for r in replies if r.extensions["sail"].retried]
        assert cut and all(a.outcome.reason == "reset" for a in cut)
        assert cluster(mesh).limits.active == 0
        # a POST is not sent twice: its cut-off (or the reset of the closed connection,
        # when the peer closes with the request unread) reaches the caller
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)) as caught:
            for _ in range(4):
                client.post("http://svc/x", content=b"once")
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "1 attempt(s)" in notes, notes


def test_a_small_body_cut_off_everywhere_is_an_error_naming_the_attempts(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad = peers(cut_body)
    with mesh_for(tmp_path, [bad.port]) as mesh, mesh.client() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)) as caught:
            client.get("http://svc/x")
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "2 attempt(s)" in notes and "reset" in notes, notes
        assert cluster(mesh).limits.active == 0  # the attempts' counters were given back


def test_a_streamed_body_cut_off_is_a_local_origin_failure_and_ejects_by_default(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad = peers(cut_stream)
    with mesh_for(tmp_path, [bad.port]) as mesh, mesh.client() as client:
        for _ in range(4):
            with pytest.raises(httpx.RemoteProtocolError):
                client.get("http://svc/x")
        assert cluster(mesh).ejected == frozenset()  # the headers said 200 each time
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("http://svc/x")
        # the fifth cut-off body in a row is the default accrual's fifth failure
        assert cluster(mesh).ejected == {f"127.0.0.1:{bad.port}"}
        assert cluster(mesh).limits.active == 0


def test_a_streamed_body_cut_off_under_the_async_client_counts_too(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad = peers(cut_stream)

    async def five(mesh: sail.Mesh) -> None:
        async with mesh.async_client() as client:
            for _ in range(5):
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get("http://svc/x")

    with mesh_for(tmp_path, [bad.port]) as mesh:
        asyncio.run(five(mesh))
        assert cluster(mesh).ejected == {f"127.0.0.1:{bad.port}"}
        assert cluster(mesh).limits.active == 0


def test_the_async_client_retries_a_small_body_cut_off(
    peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    bad, ok = peers(cut_body), peers(good)

    async def four(mesh: sail.Mesh) -> list[httpx.Response]:
        async with mesh.async_client() as client:
            return [await client.get("http://svc/x") for _ in range(4)]

    with mesh_for(tmp_path, [bad.port, ok.port]) as mesh:
        replies = asyncio.run(four(mesh))
    assert [(r.status_code, r.content) for r in replies] == [(200, b"ok")] * 4
    assert any(r.extensions["sail"].retried for r in replies)


def test_an_endpoint_that_drops_syns_fails_at_the_default_connect_timeout(
    blackhole: Blackhole, tmp_path: Path
) -> None:
    # The route's 3 s deadline is under httpx's own 5 s connect timeout: without the
    # cluster's 1 s default both attempts would wait and the call end at its deadline.
    with mesh_for(tmp_path, [blackhole.port], timeout="3s") as mesh, mesh.client() as client:
        with pytest.raises(httpx.ConnectTimeout) as caught:
            client.get("http://svc/x")
    assert not isinstance(caught.value, sail.DeadlineExceeded)
    notes = getattr(caught.value, "__notes__", [])
    assert any("after 2 attempt(s)" in n for n in notes), notes  # connect failures retry


def test_a_cluster_connect_timeout_moves_a_call_to_a_live_endpoint(
    blackhole: Blackhole, peers: Callable[[Behaviour], Peer], tmp_path: Path
) -> None:
    ok = peers(good)
    ports = [blackhole.port, ok.port]
    with mesh_for(tmp_path, ports, {"connect_timeout": "0.2s"}, timeout="3s") as mesh:
        with mesh.client() as client:
            replies = [client.get("http://svc/x") for _ in range(4)]
    assert [r.status_code for r in replies] == [200] * 4
    firsts = [r.extensions["sail"].attempts[0] for r in replies if r.extensions["sail"].retried]
    assert firsts and all(a.outcome.reason == "connect-failure" for a in firsts)
