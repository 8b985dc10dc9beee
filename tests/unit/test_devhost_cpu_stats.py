"""The dev host's CPU accounting (``DEVHOST_CPU_STATS_FILE``): per function and per thread group."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from bench import e2e
from bench._e2e_cpu import ProductCpu, delta
from devhost import cpu_stats
from devhost.app_loader import FunctionSpec
from devhost.invocation import CpuAccount, Invoker


def _spec(function: Any, name: str = "f") -> FunctionSpec:
    return FunctionSpec(name=name, trigger_type="eventHubTrigger", trigger={"name": "events"},
                        user_function=function, is_async=False, accepts_context=True, retry=None)


def _busy(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_each_function_is_charged_its_own_thread_cpu(tmp_path: Path) -> None:
    def burns(events: Any, context: func.Context) -> None:
        _busy(0.05)

    def idles(events: Any, context: func.Context) -> None:
        time.sleep(0.05)  # waiting is not CPU

    invoker = Invoker(tmp_path, threads=2)

    async def main() -> None:
        for _ in range(2):
            await invoker.call(_spec(burns), {"events": []}, reason="test")
        await invoker.call(_spec(idles, name="idle"), {"events": []}, reason="test")

    asyncio.run(main())
    invoker.shutdown()
    snapshot = invoker.cpu.snapshot()
    assert snapshot["f"]["calls"] == 2
    assert 0.09 <= snapshot["f"]["cpu_seconds"] < 0.5
    assert snapshot["idle"]["calls"] == 1
    assert snapshot["idle"]["cpu_seconds"] < 0.02


def test_thread_groups() -> None:
    assert cpu_stats.thread_group("MainThread") == "host-loop"
    assert cpu_stats.thread_group("function_3") == "functions"
    assert cpu_stats.thread_group("event_loop") == "cassandra-io"
    assert cpu_stats.thread_group("asyncio_0") == "to-thread"
    assert cpu_stats.thread_group("window-reader_1") == "other"


def test_the_file_is_written_on_sigusr1_and_at_stop(tmp_path: Path) -> None:
    invoker = Invoker(tmp_path, threads=1)
    path = tmp_path / "cpu.json"

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(cpu_stats.publish(path, invoker.cpu, stop))
        await asyncio.sleep(0.05)
        first = path.stat().st_mtime_ns
        invoker.cpu.add("ingest", 1.5)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.05)
        assert json.loads(path.read_text())["functions"]["ingest"] == {"cpu_seconds": 1.5, "calls": 1}
        assert path.stat().st_mtime_ns != first
        invoker.cpu.add("ingest", 0.5)
        stop.set()
        await task

    asyncio.run(main())
    invoker.shutdown()
    stats = json.loads(path.read_text())
    assert stats["functions"]["ingest"]["calls"] == 2
    assert stats["threads"]["host-loop"] > 0


def test_the_collector_account_counts_each_generations_collections_and_what_they_freed() -> None:
    import gc

    account = cpu_stats.CollectorAccount()
    account.install()
    try:
        before = account.snapshot()
        for _ in range(3):
            cycle: list[object] = []
            cycle.append(cycle)  # only the collector frees it
            del cycle
            gc.collect(0)
        gc.collect(2)
        after = account.snapshot()
    finally:
        account.uninstall()
    young = {name: after["0"][name] - before["0"][name] for name in after["0"]}
    assert young["collections"] >= 3 and young["collected"] >= 3 and young["seconds"] > 0.0
    assert after["2"]["collections"] - before["2"]["collections"] >= 1
    gc.collect(0)  # uninstalled: counts no more
    assert account.snapshot() == after


def _cpu_figures(used: dict[str, float], delivered: int) -> e2e.CpuFigures:
    return {"sent": delivered, "achieved": delivered, "delivered": delivered, "problems": [], "span": 1.0,
            "cpu": used, "idle_cpu_per_s": 0.0, "idle_host_cpu_per_s": 0.0, "idle_by_part": {}, "requests": {},
            "batched_statements": 0, "calibration": (1.0, 1.0)}  # type: ignore[typeddict-item]


def test_a_thread_that_ended_during_the_span_is_charged_only_its_cpu_in_the_span(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench e2e``'s split ("threads that ended, and the rest" = the total minus the groups' deltas) charged a
    thread alive at the first reading and gone at the second with all the CPU it spent BEFORE the span too: the
    groups counted live threads only, so its group's delta went negative by that much while the group's other
    threads lived on. A thread that burned 0.6 s before the span and nothing in it showed as ~0.6 s there."""
    stats = tmp_path / "cpu.json"
    account = CpuAccount()
    previous = signal.signal(signal.SIGUSR1, lambda *_: cpu_stats.write(stats, account))
    burned, end_burner, end_companion = threading.Event(), threading.Event(), threading.Event()

    def burner() -> None:
        _busy(0.6)
        burned.set()
        end_burner.wait(30)

    thread = threading.Thread(target=burner, name="test-burner")
    # another thread of the same group ("other") lives on, as the driver's and the SDK's threads do in the dev host
    companion = threading.Thread(target=end_companion.wait, args=(60,), name="test-companion")
    thread.start()
    companion.start()
    try:
        assert burned.wait(30)
        product = ProductCpu()
        product.add(os.getpid(), stats)  # the dev host's accounting, on this process (SIGUSR1 writes the file)
        before = product.snapshot()
        end_burner.set()
        thread.join(30)
        time.sleep(0.5)  # it ended well before the next reading, as a thread ending mid-run in the dev host
        after = product.snapshot()
    finally:
        end_burner.set()
        end_companion.set()
        companion.join(30)
        signal.signal(signal.SIGUSR1, previous)
    used = delta(after, before)
    capsys.readouterr()
    e2e.print_cpu(_cpu_figures(used, 1000))
    out = capsys.readouterr().out
    found = re.search(r"threads that ended, and the rest\s+(-?[\d.]+)s", out)
    assert found is not None, out
    ended = float(found.group(1))
    negative = {k: round(v, 2) for k, v in used.items() if k.startswith("thread:") and v < -0.05}
    assert ended < 0.3 and not negative, (
        f"a thread that used no CPU during the span is charged {ended:.2f} s as 'threads that ended'; "
        f"groups with negative CPU: {negative}")


def test_a_group_keeps_the_cpu_of_its_threads_that_ended() -> None:
    threads = cpu_stats.ThreadAccount()
    worker = threading.Thread(target=_busy, args=(0.2,), name="test-ended")
    worker.start()
    time.sleep(0.05)
    during = threads.snapshot()  # sees it alive, part way
    worker.join(30)
    after = threads.snapshot()
    assert after["other"] >= during["other"] > 0.0
    assert set(after) >= set(during)


def test_the_difference_of_two_readings_covers_the_keys_of_both() -> None:
    assert delta({"total": 3.0, "thread:functions": 1.0}, {"total": 1.0, "thread:other": 0.5}) == {
        "total": 2.0, "thread:functions": 1.0, "thread:other": -0.5}


def test_a_reading_that_cannot_list_the_threads_takes_none_of_them_for_ended() -> None:
    """A reading that could not list ``/proc/self/task`` (EMFILE: out of file descriptors) took every live thread
    for ended and moved its CPU to the ended totals; the next reading found them alive again and counted them once
    more, so every group's figure doubled for good. Now such a reading leaves the account as it was."""
    import resource

    started = time.thread_time()
    while time.thread_time() - started < 0.3:  # some CPU on this thread, so its figure is not 0
        pass
    account = cpu_stats.ThreadAccount()
    before = account.snapshot()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))  # the next open fails with EMFILE
        account.snapshot()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    after = account.snapshot()
    total_before, total_after = sum(before.values()), sum(after.values())
    assert total_before > 0.2
    # the threads spent well under 0.2 s between the readings; doubling adds all of before's figure again
    assert total_after < total_before + 0.2, (before, after)
