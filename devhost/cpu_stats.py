"""Where the dev host's CPU goes, for benchmarks: ``DEVHOST_CPU_STATS_FILE=<path>``.

When the setting is present the dev host writes ``<path>`` (JSON) when it receives
``SIGUSR1`` (so a benchmark reads figures of the moment it asks, and nothing is spent
between two readings), and once more when it starts shutting down, with:

* ``functions``: per function, the CPU seconds of its invocations' own threads and the
  number of invocations (:class:`devhost.invocation.CpuAccount`), and for an Event Hubs
  trigger ``<function>:input``, the conversion of received events to its input (on the
  event loop, so also part of ``host-loop``);
* ``threads``: CPU seconds per thread group of this process, read from
  ``/proc/self/task/<tid>/stat``: ``host-loop`` (the event loop: Event Hubs receiving,
  conversion of events to function input, timers, HTTP), ``functions`` (the pool that runs
  sync functions), ``cassandra-io`` (the cassandra-driver's reactor thread: request
  encoding on flush, response decoding, callbacks), ``to-thread`` (``asyncio.to_thread``:
  blob checkpoints and leases) and ``other``. A thread that ended keeps in its group the
  CPU it had at the last reading that saw it alive (:class:`ThreadAccount`), so each
  group's figure only grows and the difference of two readings is what the group spent
  between them. What a thread spent after its last reading, and all of a thread that
  lived between two readings, is in no group (the process total comes from outside);
* ``gc``: per generation of the garbage collector, the collections, the seconds they
  took (a collection holds the GIL: every thread of the process waits it out), the
  objects they freed and how many took longer than 10 ms (:class:`CollectorAccount`).

Nothing is measured per event: the snapshot is built from counters when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from devhost.invocation import CpuAccount

logger = logging.getLogger(__name__)

SETTING = "DEVHOST_CPU_STATS_FILE"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_group(name: str) -> str:
    """The group a thread's name belongs to (see the module docstring)."""
    if name == "MainThread":
        return "host-loop"
    if name.startswith("function"):
        return "functions"
    if name in ("event_loop", "asyncore_cassandra_driver_event_loop"):
        return "cassandra-io"
    if name.startswith("asyncio_"):
        return "to-thread"
    return "other"


class ThreadAccount:
    """CPU seconds per thread group of this process (Linux ``/proc``; empty elsewhere), read when asked.

    Each reading remembers every live thread's group and CPU; a thread a later reading finds gone has that
    figure added to its group's ended total, which every figure of the group includes from then on. Threads are
    told apart by their id and start time, so an id the kernel reuses is another thread. Nothing runs between
    two readings (no per-thread hook), so the cost is one ``/proc`` read per live thread per reading. Figures
    are kept in the kernel's clock ticks (integers) and turned into seconds last, so a thread moving from the live
    to the ended figures never makes its group's seconds smaller by a rounding.
    """

    def __init__(self) -> None:
        self._live: dict[tuple[int, str], tuple[str, int]] = {}  # (tid, start time) -> group, CPU clock ticks
        self._ended: dict[str, int] = {}
        # Readings come from the event loop in the dev host; the lock keeps two from interleaving elsewhere
        # (re-entrant: a reading from a signal handler that interrupted one must not wait for it forever).
        self._lock = threading.RLock()

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return self._read()

    def _read(self) -> dict[str, float]:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        live: dict[tuple[int, str], tuple[str, int]] = {}
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:  # unreadable now (out of file descriptors): no thread is taken for ended, the last figures
            return self._figures()
        for tid in tids:
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile: its figure of the last reading moves to the ended ones below
            except OSError:  # unreadable, not gone: it keeps its figure of the last reading
                live.update((key, value) for key, value in self._live.items() if key[0] == int(tid))
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            key = (int(tid), fields[19])  # starttime
            name = names.get(int(tid))
            known = self._live.get(key)  # a thread gone from threading's list keeps the group it had
            group = known[0] if name is None and known is not None else thread_group(name or "")
            live[key] = (group, ticks)
        for key, (group, ticks) in self._live.items():
            if key not in live:
                self._ended[group] = self._ended.get(group, 0) + ticks
        self._live = live
        return self._figures()

    def _figures(self) -> dict[str, float]:
        ticks = dict(self._ended)
        for group, used in self._live.values():
            ticks[group] = ticks.get(group, 0) + used
        return {group: used / _TICKS for group, used in ticks.items()}


_THREADS = ThreadAccount()


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread group of this process, threads that ended included (:class:`ThreadAccount`)."""
    return _THREADS.snapshot()


class CollectorAccount:
    """The garbage collector's pauses, from ``gc.callbacks``: per generation, collections, seconds, objects freed
    and collections over :data:`LONG_PAUSE`; counters only (a benchmark subtracts two snapshots)."""

    LONG_PAUSE = 0.010

    def __init__(self) -> None:
        self._started = 0.0
        # Every key exists from the start: a callback (run by whatever thread allocates) never resizes a dict
        # that a snapshot may be reading, and takes no lock (a collection can start inside any locked section).
        self._figures = {str(generation): {"collections": 0, "seconds": 0.0, "collected": 0, "long": 0}
                         for generation in range(3)}

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        figures = self._figures[str(info["generation"])]
        figures["collections"] += 1
        figures["seconds"] += took
        figures["collected"] += info["collected"]
        figures["long"] += took > self.LONG_PAUSE

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {generation: dict(figures) for generation, figures in self._figures.items()}


def write(path: Path, account: CpuAccount, collector: CollectorAccount | None = None) -> None:
    snapshot = {"pid": os.getpid(), "functions": account.snapshot(), "threads": thread_cpu(),
                "gc": collector.snapshot() if collector is not None else {}}
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(snapshot), encoding="utf-8")
    partial.replace(path)


async def publish(path: Path, account: CpuAccount, stop: asyncio.Event) -> None:
    """Write ``path`` now, on every ``SIGUSR1``, and once more when ``stop`` is set."""

    collector = CollectorAccount()

    def write_now() -> None:
        try:
            write(path, account, collector)
        except OSError as exc:
            logger.warning("cannot write CPU stats to %s: %r", path, exc)

    loop = asyncio.get_running_loop()
    collector.install()
    write_now()
    loop.add_signal_handler(signal.SIGUSR1, write_now)
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        write_now()
        collector.uninstall()
