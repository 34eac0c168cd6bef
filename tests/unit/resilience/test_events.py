"""Attempt events (`sail.resilience.events`): what `Call` tells a mesh's observers."""

from __future__ import annotations

import logging

import pytest

from sail.model import RetryPolicy
from sail.resilience.call import Attempt, Call
from sail.resilience.classify import Local, Outcome
from sail.resilience.events import Observers
from sail.resilience.limits import ClusterLimits

RETRY = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2, per_try_timeout=0.1)


class Recorder:
    def __init__(self, token: object = "counter") -> None:
        self.token = token
        self.n = 0
        self.events: list[tuple[str, object, str, str]] = []

    def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
        self.n += 1
        token = self.n if self.token == "counter" else self.token
        self.events.append(("start", token, endpoint, call.service))
        return token

    def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
        self.events.append(("end", token, attempt.endpoint, attempt.outcome.reason))


def new_call(observer: object) -> Call:
    return Call(RETRY, ClusterLimits("c"), None, observer=observer, service="svc")  # type: ignore[arg-type]


def test_each_attempt_ends_with_its_own_token() -> None:
    recorder = Recorder()
    call = new_call(recorder)
    call.begin(0.0, None, "a:1")
    assert call.end("a:1", Outcome(503), 0.1) is not None
    call.release()
    call.begin(0.2, None, "b:1")
    assert call.end("b:1", Outcome(200), 0.3) is None
    assert recorder.events == [
        ("start", 1, "a:1", "svc"), ("end", 1, "a:1", "503"),
        ("start", 2, "b:1", "svc"), ("end", 2, "b:1", "200"),
    ]
    assert call.cluster == "c"


@pytest.mark.parametrize("token", ["counter", None])
def test_overlapping_attempts_end_with_the_token_they_were_given(token: object) -> None:
    """A hedge: the first attempt is still out when the second starts; each end names its
    own token, even when the observer's tokens are None."""
    recorder = Recorder(token)
    call = new_call(recorder)
    call.begin(0.0, None, "a:1")
    first = call.token
    assert call.hedge(0.1)
    call.begin(0.1, None, "b:1")
    second = call.token
    call.end("b:1", Outcome(200), 0.2, second)
    call.abandon("a:1", 0.2, first)
    ends = [e for e in recorder.events if e[0] == "end"]
    assert ends == [("end", second, "b:1", "200"), ("end", first, "a:1", Local.CANCELLED.value)]


def test_no_observer_no_events() -> None:
    call = new_call(None)
    call.begin(0.0, None, "a:1")
    call.abandon("a:1", 0.1)  # nothing to tell
    assert call.token is None


def test_observers_fan_out_and_one_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def attempt_started(self, call: Call, endpoint: str, now: float) -> object:
            raise RuntimeError("boom")

        def attempt_ended(self, call: Call, token: object, attempt: Attempt, now: float) -> None:
            raise RuntimeError("boom")

    good = Recorder()
    call = new_call(Observers((Broken(), good)))
    with caplog.at_level(logging.ERROR, logger="sail"):
        call.begin(0.0, None, "a:1")
        call.end("a:1", Outcome(200), 0.1)
    assert good.events == [("start", 1, "a:1", "svc"), ("end", 1, "a:1", "200")]
    assert sum("attempt observer" in r.getMessage() for r in caplog.records) == 2
