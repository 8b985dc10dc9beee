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
  groups are a picture of where the time goes; the process total comes from outside).

Nothing is measured per event: the snapshot is built from counters when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path

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


def write(path: Path, account: CpuAccount) -> None:
    snapshot = {"pid": os.getpid(), "functions": account.snapshot(), "threads": thread_cpu()}
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(snapshot), encoding="utf-8")
    partial.replace(path)


async def publish(path: Path, account: CpuAccount, stop: asyncio.Event) -> None:
    """Write ``path`` now, on every ``SIGUSR1``, and once more when ``stop`` is set."""

    def write_now() -> None:
        try:
            write(path, account)
        except OSError as exc:
            logger.warning("cannot write CPU stats to %s: %r", path, exc)

    loop = asyncio.get_running_loop()
    write_now()
    loop.add_signal_handler(signal.SIGUSR1, write_now)
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        write_now()
