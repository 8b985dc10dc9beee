"""An observable gauge's figures read on a thread of their own: the collection never waits, old figures expire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shared.adapters.refreshed_figures import RefreshedFigures


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_latest_never_waits_for_a_reading_that_hangs() -> None:
    """A reading that does not answer (an unreachable namespace, retried by its SDK) holds its own thread only: the
    collection that asks for the figures gets none at once, then the reading's figures once it has answered."""
    release = threading.Event()

    def read() -> dict[str, int]:
        release.wait(10)
        return {"0": 7}

    figures = RefreshedFigures(read, name="test-hang", period=0.05, failed=lambda exc: None)
    began = time.monotonic()
    assert figures.latest() == {}
    assert figures.latest() == {}
    assert time.monotonic() - began < 0.5
    release.set()
    assert eventually(lambda: figures.latest() == {"0": 7})
    figures.stop()


def test_stop_ends_the_reading_thread_and_no_collection_starts_it_again() -> None:
    """The owner's clients are closing (``bootstrap.reset``): the thread ends at once between readings, instead of
    failing every period until its idle stop ten minutes later, and a later collection does not bring it back."""
    reads = [0]

    def read() -> dict[str, int]:
        reads[0] += 1
        return {"0": reads[0]}

    figures = RefreshedFigures(read, name="test-stop", period=60.0, failed=lambda exc: None)
    figures.start()
    assert eventually(lambda: reads[0] == 1)
    thread = next(t for t in threading.enumerate() if t.name.endswith("test-stop"))
    figures.stop()
    thread.join(timeout=2)  # the loop waits 60 s between readings: only stop() ends it this soon
    assert not thread.is_alive()
    assert figures.latest() == {"0": 1}
    assert not any(t.name.endswith("test-stop") for t in threading.enumerate())
    assert reads[0] == 1


def stepped(_run: Callable[[], None], _name: str) -> None:
    """No reading loop: the test reads with ``refresh``."""


def test_figures_older_than_the_kept_periods_are_not_reported() -> None:
    """A reading that stops answering leaves the last figures for ``keep_periods`` periods, then none, rather than
    reporting a stale figure forever."""
    now = [100.0]
    figures = RefreshedFigures(lambda: {"0": 3}, name="test-age", period=5.0, keep_periods=3,
                               failed=lambda exc: None, monotonic=lambda: now[0], spawn=stepped)
    figures.refresh()
    now[0] = 114.9
    assert figures.latest() == {"0": 3}
    now[0] = 115.0
    assert figures.latest() == {}


def test_a_failed_reading_reports_nothing_and_is_told() -> None:
    """No point is better than a false one: a failed reading drops the previous figures at once."""
    answers: list[dict[str, int] | Exception] = [{"0": 3}, RuntimeError("Event Hubs down")]
    failures: list[BaseException] = []

    def read() -> dict[str, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    now = [0.0]
    figures = RefreshedFigures(read, name="test-fail", period=5.0, failed=failures.append, monotonic=lambda: now[0],
                               spawn=stepped)
    figures.refresh()
    assert figures.latest() == {"0": 3}
    figures.refresh()
    assert figures.latest() == {}
    assert [str(f) for f in failures] == ["Event Hubs down"]


def test_the_audit_gauge_never_waits_for_an_audit_that_hangs() -> None:
    """``sluice.audit.missing`` reads the hub, the checkpoints and the ledger: an audit that does not answer holds
    its own thread, never the collection (the scrape of every other instrument of the ingest pod)."""
    from types import SimpleNamespace

    from shared.adapters.audit_metrics import AuditGauge

    release = threading.Event()

    def audit(window: int) -> SimpleNamespace:
        release.wait(10)
        return SimpleNamespace(partitions=[SimpleNamespace(partition="0", missing=2)])

    gauge = AuditGauge(SimpleNamespace(audit=audit), window=10, max_age=0.05)  # type: ignore[arg-type]
    began = time.monotonic()
    assert list(gauge(None)) == []
    assert time.monotonic() - began < 0.5
    release.set()
    assert eventually(lambda: gauge.missing() == {"0": 2})
    gauge.stop()
