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
  blob checkpoints and leases) and ``other``. Threads that ended are not counted (the
  groups are a picture of where the time goes; the process total comes from outside);
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


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread group of the live threads of this process (Linux ``/proc``; empty elsewhere)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    groups: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            fields = stat[stat.rindex(")") + 2:].split()
            seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
            group = thread_group(names.get(int(tid), ""))
            groups[group] = groups.get(group, 0.0) + seconds
    return groups


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
