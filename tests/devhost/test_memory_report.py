"""The dev host's memory report (``kill -USR2``): containers named by the attribute that holds them, and their
growth from one report to the next."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

from devhost.memory_report import MIN_ENTRIES, Container, MemoryReports, install
from tests.fixtures.devhost import start_devhost, write_app


class Receiver:
    def __init__(self) -> None:
        self.tags: set[int] = set()  # held in the instance's (inline) attributes


class Slotted:
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: collections.deque[int] = collections.deque()


class Registry:
    by_id: ClassVar[dict[str, float]] = {}  # a class attribute; a dict of atoms, which the collector does not track


def _by_label(containers: list[Container], suffix: str) -> Container:
    found = [c for c in containers if c.label.endswith(suffix)]
    assert len(found) == 1, (suffix, [c.label for c in containers])
    return found[0]


def test_growing_containers_are_named_and_come_first_with_their_growth() -> None:
    receiver, slotted = Receiver(), Slotted()
    receiver.tags.update(range(MIN_ENTRIES))
    reports = MemoryReports()
    first = reports.take()
    assert first.number == 1 and first.blocks_grew is None and first.types_grew == []
    assert all(c.grew is None for c in first.containers)

    receiver.tags.update(range(MIN_ENTRIES, MIN_ENTRIES + 700))
    slotted.queue.extend(range(300))
    Registry.by_id.update((f"d{i}", float(i)) for i in range(400))
    assert not __import__("gc").is_tracked(Registry.by_id)
    second = reports.take()
    assert second.number == 2 and second.seconds_since_previous is not None
    tags = _by_label(second.containers, "test_memory_report.Receiver.tags")
    assert (tags.kind, tags.entries, tags.grew) == ("set", MIN_ENTRIES + 700, 700)
    queue = _by_label(second.containers, "test_memory_report.Slotted.queue")
    assert (queue.kind, queue.entries, queue.grew) == ("collections.deque", 300, None)  # new since report 1
    registry = _by_label(second.containers, "test_memory_report.Registry.by_id")
    assert (registry.kind, registry.entries) == ("dict", 400)
    # Growth first, most first; a new container counts all its entries. (Compared among themselves: a test run
    # in the same process may leave a thread that grows something of its own meanwhile.)
    order = [second.containers.index(c) for c in (tags, registry, queue)]
    assert order == sorted(order)
    assert all(c.grew is None or c.grew > 0 for c in second.containers[:order[-1]])
    text = "\n".join(second.lines())
    assert f"{MIN_ENTRIES + 700:,} (+700)" in text and "report 2" in text and "after report 1" in text

    receiver.tags.clear()
    slotted.queue.extend(range(50))
    third = reports.take()
    assert not any(c.label.endswith("Receiver.tags") for c in third.containers)  # below the threshold now
    assert _by_label(third.containers, "Slotted.queue") == Container(queue.label, "collections.deque", 350, 50)
    del slotted
    Registry.by_id.clear()


def test_what_running_or_suspended_code_holds_is_named_as_its_local_variable() -> None:
    """In flight, not kept: a batch a thread is working on, a page a suspended coroutine holds."""
    import threading

    started, release = threading.Event(), threading.Event()

    def handle_batch() -> None:
        batch = list(range(MIN_ENTRIES + 1))
        started.set()
        release.wait(10)
        assert batch

    async def read_pages(gate: asyncio.Event) -> None:
        page = list(range(MIN_ENTRIES + 2))
        await gate.wait()
        assert page

    async def main() -> None:
        reports = MemoryReports()
        reports.take()  # from the second report on, new containers come first
        gate = asyncio.Event()
        reading = asyncio.create_task(read_pages(gate))
        await asyncio.sleep(0)  # it runs to its await and is suspended there
        worker = threading.Thread(target=handle_batch)
        worker.start()
        started.wait(10)
        try:
            containers = reports.take().containers
        finally:
            release.set()
            worker.join()
            gate.set()
            await reading
        batch = next(c for c in containers if c.label.startswith("local batch of "))
        assert ".<locals>.handle_batch (line " in batch.label and batch.entries == MIN_ENTRIES + 1
        page = next(c for c in containers if c.label.startswith("local page of "))
        assert ".<locals>.read_pages (line " in page.label and page.entries == MIN_ENTRIES + 2

    asyncio.run(main())


def test_a_report_is_written_on_sigusr2() -> None:
    written: list[str] = []

    async def main() -> None:
        stop = install(asyncio.get_running_loop(), written.append)
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGUSR2)
            await asyncio.sleep(0.05)
        finally:
            stop()

    asyncio.run(main())
    assert [text.split(" (")[0] for text in written] == ["memory report 1", "memory report 2"]
    assert "resident" in written[0] and "MiB" in written[0]


APP = '''
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
SEEN = list(range(300))  # the planted leak: one entry per request


@app.route(route="leak", methods=["GET"])
def leak(req: func.HttpRequest) -> func.HttpResponse:
    SEEN.append(len(SEEN))
    return func.HttpResponse("ok")
'''


def test_the_dev_host_prints_a_report_that_names_a_leaking_global(tmp_path: Path) -> None:
    settings = write_app(tmp_path / "app", APP)
    running = start_devhost(tmp_path / "app", settings=settings)
    try:
        running.process.send_signal(signal.SIGUSR2)
        _wait_for(running, "memory report 1")
        for _ in range(250):
            with urllib.request.urlopen(f"http://{running.address}/api/leak", timeout=10) as response:
                assert response.status == 200
        running.process.send_signal(signal.SIGUSR2)
        _wait_for(running, "memory report 2")
        report = running.output()[running.output().index("memory report 2"):]
        line = next(line for line in report.splitlines() if line.endswith(" function_app.SEEN"))
        assert line.split()[:2] == ["550", "(+250)"], line
    finally:
        assert running.stop() == 0


def _wait_for(running: object, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in running.output():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, running.output()  # type: ignore[attr-defined]
        time.sleep(0.05)


def test_a_container_no_attribute_names_says_what_holds_it() -> None:
    reports = MemoryReports()
    reports.take()
    pair = (list(range(MIN_ENTRIES + 3)), "label")
    containers = reports.take().containers
    held = next(c for c in containers if c.entries == MIN_ENTRIES + 3 and c.kind == "list")
    assert held.label == "held by a tuple"
    assert pair
