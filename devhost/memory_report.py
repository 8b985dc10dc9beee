"""Where the dev host's memory goes, on demand: ``kill -USR2 <pid>`` prints a memory report.

A report gives the process's resident size (and its peak), the blocks Python's allocator
holds, the objects the garbage collector tracks, and the containers (``dict``, ``list``,
``set``, ``deque``, ...) of at least :data:`MIN_ENTRIES` entries, each named by what holds
it: an attribute (``azure.eventhub._pyamqp.aio._receiver_async.ReceiverLink._received_delivery_tags``),
a global, or the variable of a running or suspended function (data in flight). From the
second report on, every figure shows its change since the previous one, and the
containers that are new or grew come first: a leak in a long run shows up as the one
container that grows by one entry per event, report after report.

That is how the SDK's delivery-tag leak was found (``docs/devhost.md``), with a one-off
script then.

Nothing is measured until a report is asked for. A report walks the objects the
collector tracks on the event loop, during which nothing else of the host runs: 0.5 s
for the dev host's 150,000 objects under ``sluice up --rate 500``, 1.2 s for 200,000
while a window was enriched (each report says how long it took).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import signal
import sys
import time
import types
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MIN_ENTRIES = 256
SHOWN = 10
CONTAINERS = (dict, list, set, frozenset, collections.deque, bytearray)
# Referrers that hold a container without naming it: another container, a closure's variable.
_UNNAMED = (list, tuple, set, frozenset, collections.deque, types.CellType)
# What runs code holds its variables in a frame: a running function's, a suspended generator's or coroutine's.
_FRAME_OF: dict[type, Callable[[Any], types.FrameType | None]] = {
    types.FrameType: lambda f: f, types.GeneratorType: lambda g: g.gi_frame,
    types.CoroutineType: lambda c: c.cr_frame, types.AsyncGeneratorType: lambda a: a.ag_frame}


@dataclass(frozen=True)
class Container:
    label: str  # the attribute that holds it, or what kind of object does
    kind: str  # its type's name
    entries: int
    grew: int | None  # None: not in the previous report (or below MIN_ENTRIES there)


@dataclass(frozen=True)
class Report:
    number: int
    seconds_since_previous: float | None
    resident_kib: int | None
    peak_resident_kib: int | None
    allocated_blocks: int
    blocks_grew: int | None
    tracked_objects: int
    objects_grew: int | None
    containers: list[Container]  # growing ones first (most growth first), then the largest
    types_grew: list[tuple[str, int, int]]  # (type, count now, growth), most growth first
    took: float  # seconds this report held the event loop

    def lines(self) -> list[str]:
        def change(value: int | None) -> str:
            return "" if value is None else f" ({value:+,})"

        resident = "unknown" if self.resident_kib is None else f"{self.resident_kib / 1024:.1f} MiB"
        peak = "" if self.peak_resident_kib is None else f" (peak {self.peak_resident_kib / 1024:.1f} MiB)"
        since = ("" if self.seconds_since_previous is None
                 else f", {self.seconds_since_previous:.0f} s after report {self.number - 1}")
        lines = [f"memory report {self.number} (pid {os.getpid()}{since}): resident {resident}{peak}; "
                 f"allocator blocks {self.allocated_blocks:,}{change(self.blocks_grew)}; "
                 f"objects the collector tracks {self.tracked_objects:,}{change(self.objects_grew)}; "
                 f"taken in {self.took:.2f} s",
                 f"  containers of at least {MIN_ENTRIES} entries (growing first):"]
        lines += [f"    {c.entries:>10,}{change(c.grew):<12} {c.kind:<17} {c.label}" for c in self.containers]
        if self.types_grew:
            lines.append("  object types that grew most: " + ", ".join(
                f"{name} {count:,} ({grew:+,})" for name, count, grew in self.types_grew))
        return lines


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _attributes(owner: object) -> Iterable[tuple[str, object]]:
    """An object's attributes from its ``__dict__`` and ``__slots__``, read without running its code: no
    ``__getattr__``, no properties."""
    with contextlib.suppress(AttributeError, TypeError):
        yield from dict(object.__getattribute__(owner, "__dict__")).items()
    for klass in type(owner).__mro__:
        for name in klass.__dict__.get("__slots__", ()):
            if isinstance(name, str) and name not in ("__dict__", "__weakref__"):
                with contextlib.suppress(AttributeError, TypeError):
                    yield name, object.__getattribute__(owner, name)


def _name_of(owner: object) -> str:
    """A module's name, a class's full name, or an instance's class's full name."""
    if isinstance(owner, types.ModuleType):
        return owner.__name__
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return _type_name(owner)


def _local_label(frame: types.FrameType, name: str) -> str:
    """A variable of code that is running or suspended (in flight, not kept), and where that code is."""
    return f"local {name} of {frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname} (line {frame.f_lineno})"


def _label_locals(frame: types.FrameType | None, containers: dict[int, Sized], labels: dict[int, str]) -> None:
    if frame is not None and frame.f_locals is not frame.f_globals:  # a module's code: its globals are named
        for name, value in dict(frame.f_locals).items():
            if id(value) in containers:
                labels.setdefault(id(value), _local_label(frame, name))


def _owner_label(owner: object, name: str) -> str:
    return f"{_name_of(owner)}.{name}"


def _labels(containers: dict[int, Sized]) -> dict[int, str]:
    """Name each container by what holds it: ``module.Class.attribute`` for an object's or a class's attribute
    (in its ``__dict__``, inline, or in a slot), ``module.name`` for a global, ``local name of module.function``
    for a variable of code that is running (in any thread) or suspended (a coroutine, a generator), and
    otherwise the key of the dict that holds it."""
    labels: dict[int, str] = {}
    local: dict[int, str] = {}  # second choice: a container a function holds may be an attribute too
    # What each thread is running holds its variables outside any object the collector sees.
    for top in sys._current_frames().values():
        frame: types.FrameType | None = top
        while frame is not None:
            if frame.f_code.co_filename != __file__:
                _label_locals(frame, containers, local)
            frame = frame.f_back
    holders: dict[int, tuple[dict[object, object], list[tuple[int, object]]]] = {}  # dict -> its containers, keys
    held_by: dict[int, set[str]] = {}  # last choice: what kinds of object hold it
    for referrer in gc.get_referrers(*containers.values()):
        if referrer is containers:
            continue
        for value in gc.get_referents(referrer):
            if id(value) in containers:
                held_by.setdefault(id(value), set()).add(_type_name(referrer))
        if isinstance(referrer, dict):
            held = [(id(value), key) for key, value in list(referrer.items()) if id(value) in containers]
            if held:
                holders[id(referrer)] = (referrer, held)
        elif type(referrer) in _FRAME_OF:
            _label_locals(_FRAME_OF[type(referrer)](referrer), containers, local)
        elif not isinstance(referrer, _UNNAMED):
            for name, value in _attributes(referrer):
                if id(value) in containers:
                    labels.setdefault(id(value), _owner_label(referrer, name))
            if isinstance(referrer, type | types.ModuleType):  # its own namespace
                what = "module" if isinstance(referrer, types.ModuleType) else "class"
                for value in gc.get_referents(referrer):
                    if isinstance(value, dict) and id(value) in containers:
                        labels.setdefault(id(value), f"namespace of {what} {_name_of(referrer)}")
    # A dict holding a container may be an object's __dict__ (once materialised), a class's or a module's.
    if holders:
        for owner in gc.get_referrers(*(namespace for namespace, _ in holders.values())):
            if isinstance(owner, type):  # its __dict__ is a proxy of the dict: compare by content
                held = [(container, key) for _, entries in holders.values() for container, key in entries
                        if isinstance(key, str) and id(owner.__dict__.get(key)) == container]
            else:
                try:
                    namespace = object.__getattribute__(owner, "__dict__")
                except (AttributeError, TypeError):
                    continue
                held = holders[id(namespace)][1] if id(namespace) in holders else []
            for container, key in held:
                labels.setdefault(container, _owner_label(owner, str(key)))
    for container, label in local.items():
        labels.setdefault(container, label)
    for _, entries in holders.values():
        for container, key in entries:
            labels.setdefault(container, f"value of key {key!r} of a dict")
    for container in containers:
        if container not in labels:
            kinds = held_by.get(container)
            labels[container] = (f"held by a {' and a '.join(sorted(kinds))}" if kinds else
                                 "held by nothing the collector sees (running code's stack, or a C extension's object)")
    return labels


class MemoryReports:
    """Successive reports of one process, each compared with the one before."""

    def __init__(self) -> None:
        self._number = 0
        self._at: float | None = None
        self._blocks: int | None = None
        self._objects: int | None = None
        self._sizes: dict[tuple[int, str], int] = {}
        self._types: collections.Counter[str] = collections.Counter()

    def take(self) -> Report:
        started = time.perf_counter()
        gc.collect()  # what is garbage is not a leak
        objects = gc.get_objects()
        counts = collections.Counter(_type_name(o) for o in objects)
        large: dict[int, Sized] = {id(o): o for o in objects if isinstance(o, CONTAINERS) and len(o) >= MIN_ENTRIES}
        # The collector does not track a dict of only atoms (say, ids to numbers): find those through what
        # refers to them.
        for first in range(0, len(objects), 1000):
            for value in gc.get_referents(*objects[first:first + 1000]):
                if type(value) is dict and len(value) >= MIN_ENTRIES and not gc.is_tracked(value):
                    large[id(value)] = value
        del objects
        for own in (self._sizes, self._types):  # the previous report's figures are not the host's memory
            large.pop(id(own), None)
        labels = _labels(large)
        kinds = {key: _type_name(value) for key, value in large.items()}
        sizes = {(key, labels[key]): len(value) for key, value in large.items()}
        large.clear()  # hold no container past this report
        first = self._number == 0
        containers = [Container(label, kinds[key], entries, None if first or (key, label) not in self._sizes
                                else entries - self._sizes[(key, label)])
                      for (key, label), entries in sizes.items()]
        growing = sorted((c for c in containers if (c.grew or 0) > 0 or (c.grew is None and not first)),
                         key=lambda c: (-(c.entries if c.grew is None else c.grew), c.label))[:SHOWN]
        largest = sorted((c for c in containers if c not in growing), key=lambda c: (-c.entries, c.label))
        blocks, tracked, now = sys.getallocatedblocks(), sum(counts.values()), time.monotonic()
        types_grew = [] if first else sorted(
            ((name, count, count - self._types[name]) for name, count in counts.items()
             if count > self._types[name]), key=lambda t: (-t[2], t[0]))[:SHOWN]
        self._number += 1
        report = Report(
            number=self._number, seconds_since_previous=None if self._at is None else now - self._at,
            resident_kib=_status_kib("VmRSS"), peak_resident_kib=_status_kib("VmHWM"),
            allocated_blocks=blocks, blocks_grew=None if self._blocks is None else blocks - self._blocks,
            tracked_objects=tracked, objects_grew=None if self._objects is None else tracked - self._objects,
            containers=growing + largest[:max(0, SHOWN - len(growing))], types_grew=types_grew,
            took=time.perf_counter() - started)
        self._at, self._blocks, self._objects, self._sizes, self._types = now, blocks, tracked, dict(sizes), counts
        return report


def install(loop: asyncio.AbstractEventLoop, write: Callable[[str], None],
            reports: MemoryReports | None = None) -> Callable[[], None]:
    """Write a report with ``write`` on every ``SIGUSR2`` (the dev host prints it: asked for, it is shown
    whatever the log level); returns the function that stops it."""
    reports = reports or MemoryReports()

    def report() -> None:
        try:
            write("\n".join(reports.take().lines()))
        except Exception:  # a diagnostic never takes the host down
            logger.exception("the memory report failed")

    loop.add_signal_handler(signal.SIGUSR2, report)

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGUSR2)

    return stop
