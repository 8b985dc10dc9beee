"""``RefreshedFigures``: an observable gauge's figures, read on a thread of their own, never in the collection.

The SDK calls a gauge's callback inside the collection (a Prometheus scrape, the
OTLP or Azure Monitor periodic reader), which holds every other instrument of the
process until the callback returns. A reading of Event Hubs or of the audit ledger
can take as long as its SDK retries (about 12 s against an unreachable Event Hubs
namespace), longer than Prometheus' 10 s ``scrape_timeout``: every metric of the
pod would vanish exactly while a dependency is down. So the reading runs on a
daemon thread every ``period`` seconds, and the callback only takes the last
figures, under a lock that no reading holds.

A figure is exported only while it is younger than ``keep_periods`` periods
(measured from the end of its reading): a reading that hangs or keeps failing
makes the gauge report nothing rather than an old figure forever, and a failed
reading reports nothing at once (no point is better than a false 0). The thread
starts when the gauge is registered (:meth:`RefreshedFigures.start`), so the
first collection finds figures, and ends when no collection has asked for them
for ``idle_after`` seconds (a reader shut down); the next collection starts it again.
Its owner ends it for good with :meth:`RefreshedFigures.stop` (``bootstrap.reset``:
the clients it reads with are closed, a reading would only fail).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

KEEP_PERIODS = 3
IDLE_AFTER = 600.0
"""Seconds without a collection after which the thread stops: far above any export interval (Azure Monitor: 60 s)."""
THREAD_PREFIX = "sluice-figures-"


def daemon_thread(run: Callable[[], None], name: str) -> None:
    threading.Thread(target=run, name=name, daemon=True).start()


class RefreshedFigures:
    """Key -> figure (partition -> count) from ``read``, read every ``period`` seconds on a daemon thread.

    ``read`` may block and raise, and must read each time it is called: its figures are
    dated when it returns, so a cached answer would pass for a reading of now (and
    outlive the ``keep_periods`` limit by the cache's age). ``failed`` is told about
    each exception (it must not raise). :meth:`latest` never waits for a reading. ``spawn`` starts the
    reading loop (a daemon thread; a test that steps with :meth:`refresh` starts none).
    """

    def __init__(self, read: Callable[[], Mapping[str, int]], *, name: str, period: float,
                 failed: Callable[[BaseException], None], keep_periods: int = KEEP_PERIODS,
                 idle_after: float = IDLE_AFTER, monotonic: Callable[[], float] = time.monotonic,
                 spawn: Callable[[Callable[[], None], str], None] = daemon_thread) -> None:
        self._read = read
        self._name = name
        self._period = period
        self._failed = failed
        self._keep = keep_periods * period
        self._idle_after = max(idle_after, self._keep)
        self._monotonic = monotonic
        self._spawn = spawn
        self._lock = threading.Lock()
        self._figures: tuple[float, dict[str, int]] | None = None  # (end of the reading, figures)
        self._asked_at = monotonic()
        self._running = False
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start reading, unless the thread runs already or :meth:`stop` ended it."""
        with self._lock:
            start = not self._running and not self._stopped.is_set()
            self._running = self._running or start
        if start:
            self._spawn(self._run, f"{THREAD_PREFIX}{self._name}")

    def stop(self) -> None:
        """End the reading loop (after the reading under way, if any) and never start it again."""
        self._stopped.set()

    def latest(self) -> dict[str, int]:
        """The last reading's figures when it ended less than ``keep_periods`` periods ago, else none."""
        now = self._monotonic()
        with self._lock:
            self._asked_at = now
            figures = self._figures
        self.start()
        if figures is None or now - figures[0] >= self._keep:
            return {}
        return dict(figures[1])

    def refresh(self) -> None:
        """One reading, now, on the calling thread (the thread's loop; a test's deterministic step)."""
        try:
            figures: dict[str, int] | None = dict(self._read())
        except Exception as exc:
            self._failed(exc)
            figures = None
        with self._lock:
            self._figures = None if figures is None else (self._monotonic(), figures)

    def _run(self) -> None:
        while not self._stopped.is_set():
            started = self._monotonic()
            self.refresh()
            with self._lock:
                if self._monotonic() - self._asked_at >= self._idle_after:
                    self._running = False
                    logger.info("%s: no collection for %.0f s, reading stopped", self._name, self._idle_after)
                    return
            self._stopped.wait(max(0.0, self._period - (self._monotonic() - started)))
        with self._lock:
            self._running = False
