"""BlockingHealth (the status page's dependency check): up, down, and connecting while a first check runs."""

from __future__ import annotations

import threading
import time

from shared.exceptions import DependencyUnavailable
from shared.services.health import BlockingHealth


def test_a_slow_first_check_is_connecting_then_a_slow_later_one_is_down() -> None:
    release = threading.Event()
    opened = {"cassandra": False}

    def slow() -> None:
        release.wait(5)
        opened["cassandra"] = True

    health = BlockingHealth({"redis": lambda: None, "cassandra": slow}, timeout=0.05,
                            opened={"redis": lambda: True, "cassandra": lambda: opened["cassandra"]})
    healthy, body = health()
    assert not healthy and body["status"] == "unavailable"
    assert body["dependencies"]["cassandra"] == {
        "status": "connecting", "error": "no answer within 0.05s; the first connection is still being made"}
    assert body["dependencies"]["redis"]["status"] == "up"
    release.set()  # the first check answers (late): the store has been reached once
    deadline = time.monotonic() + 5
    while health()[1]["dependencies"]["cassandra"]["status"] != "up":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.clear()
    healthy, body = health()
    assert not healthy and body["dependencies"]["cassandra"] == {"status": "down", "error": "no answer within 0.05s"}
    release.set()


def test_a_first_check_refused_in_time_is_down_with_its_reason() -> None:
    def refused() -> None:
        raise DependencyUnavailable("redis", "connection refused")

    healthy, body = BlockingHealth({"redis": refused}, timeout=1.0)()
    assert not healthy
    assert body["dependencies"]["redis"] == {"status": "down", "error": "redis unavailable: connection refused"}


def test_checks_that_answer_are_up_with_their_latency() -> None:
    healthy, body = BlockingHealth({"redis": lambda: None, "cassandra": lambda: time.sleep(0.01)}, timeout=1.0)()
    assert healthy and body["status"] == "ok"
    assert body["dependencies"]["cassandra"]["status"] == "up"
    assert body["dependencies"]["cassandra"]["latency_ms"] >= 10


def test_a_first_check_out_of_time_on_a_client_already_open_is_down() -> None:
    """The client was opened by other traffic before the store hung: no connect is under way, so it is down."""
    release = threading.Event()
    health = BlockingHealth({"cassandra": lambda: release.wait(5)}, timeout=0.05, opened={"cassandra": lambda: True})
    try:
        healthy, body = health()
    finally:
        release.set()
    assert not healthy and body["dependencies"]["cassandra"] == {"status": "down", "error": "no answer within 0.05s"}


def test_a_hung_check_does_not_make_a_healthy_dependency_report_down() -> None:
    """A blocking check goes on after its timeout (a Redis ping waits for its socket timeout, a first Cassandra
    connect reads the schema). On a shared pool of one thread per dependency, the next report's check of the hung
    dependency took the thread left free and the healthy one's check queued behind it past the deadline: both
    reported down. The hung one is still not answering; the other answers at once and is up."""
    release = threading.Event()
    health = BlockingHealth({"cassandra": lambda: release.wait(5), "redis": lambda: None}, timeout=0.3)
    try:
        _, first = health()
        _, second = health()  # the first cassandra check is still running
    finally:
        release.set()
    assert first["dependencies"]["redis"]["status"] == "up", first
    assert second["dependencies"]["redis"]["status"] == "up", second
    assert second["dependencies"]["cassandra"] == {"status": "down", "error": "no answer within 0.3s"}, second
