"""The dev host's CPU accounting (``DEVHOST_CPU_STATS_FILE``): per function and per thread group."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import azure.functions as func

from devhost import cpu_stats
from devhost.app_loader import FunctionSpec
from devhost.invocation import Invoker


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
