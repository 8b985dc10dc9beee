"""How the benchmarks compute and label their figures (bench/_stats.py and its users, bench/e2e.py's options)."""

from __future__ import annotations

import argparse
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import bench._e2e_cpu as e2e_cpu
import sluice.loadgen
from bench import e2e, eventhubs_emulator, lookups, status
from bench._stats import percentile
from sluice.delivery import DeliveryReport


def test_every_benchmark_takes_nearest_rank_percentiles() -> None:
    """The Event Hubs emulator bench indexed ``int(q * n)``, one rank too high: its p99 of 100 delays was the
    largest (a single stall), its p50 of an even count the upper middle one. Every bench uses one definition."""
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 0.99) == 99.0 and percentile(samples, 0.5) == 50.0
    assert percentile([float(v) for v in range(1, 1001)], 0.99) == 990.0
    assert percentile([7.0], 0.99) == 7.0
    assert eventhubs_emulator.percentile is lookups.percentile is status.percentile is percentile


def test_the_e2e_latency_percentiles_are_nearest_rank_too() -> None:
    """``bench e2e``'s send-to-Redis p50/p99 interpolated (``statistics.quantiles``): its p99 of the delays 1..100
    was 99.01, and its p50 of an even count the mean of two delays no event had."""
    delays = [float(v) for v in range(1, 101)]
    assert e2e._quantile(delays, 0.99) == percentile(delays, 0.99) == 99.0
    assert e2e._quantile(delays, 0.50) == percentile(delays, 0.50) == 50.0
    assert e2e._quantile([], 0.99) is None


class _StackStandIn:
    """``bench status``'s Bench: a dev host with an address and a PID, nothing started."""

    def __init__(self, args: Any, workdir: Any) -> None:
        host = types.SimpleNamespace(address="127.0.0.1:1", process=types.SimpleNamespace(pid=1))
        self.stack = types.SimpleNamespace(options=types.SimpleNamespace(overrides={}), devhost=host)
        self.sender = self.probe = None

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _LoadStandIn:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def run(self) -> None: ...


class _BrowserStandIn:
    """A page that has drawn its first status, 100 ms after navigation start."""

    def get(self, url: str) -> None: ...

    def execute_script(self, script: str) -> Any:
        return False if "undefined" in script else 100.0

    def quit(self) -> None: ...


def test_bench_status_takes_nearest_rank_p50s_too(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``bench status``'s p50 (and the ratio built from it) was ``statistics.median``: of its 200 calls taking
    1..200 ms the mean of the two middle ones, 100.5 ms, a latency no call had, and of raw calls half at 10 ms and
    half at 30 ms, 20 ms. Its figures code runs here with the stack, browser and clock stood in."""
    samples = {"ours": [float(v) for v in range(1, 201)], "raw": [10.0] * 100 + [30.0] * 100}
    calls = {"n": 0}

    def timed(call: Any, n: int) -> list[float]:
        side, block = ("ours", "raw")[calls["n"] % 2], calls["n"] // 2  # the two alternate, block by block
        calls["n"] += 1
        return samples[side][block * n:(block + 1) * n]

    monkeypatch.setattr(e2e, "Bench", _StackStandIn)
    monkeypatch.setattr(sluice.loadgen, "LoadRunner", _LoadStandIn)
    monkeypatch.setattr(status, "_get", lambda url: b'{"throughput": {"events_last_5_minutes": 0}, "dead_letters": 0}')
    monkeypatch.setattr(status, "_timed", timed)
    monkeypatch.setattr(status, "_browser", _BrowserStandIn)
    monkeypatch.setattr(status, "_cpu_seconds", lambda pid: 0.0)
    monkeypatch.setattr(status.time, "sleep", lambda seconds: None)
    assert status.main(["--requests", "200", "--renders", "1", "--cpu-seconds", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = next(line for line in lines if line.startswith("/api/status"))
    raw = next(line for line in lines if line.startswith("raw clients"))
    assert "p50 100.0 ms" in ours and "p50 10.0 ms" in raw, (ours, raw)
    assert lines[-1] == "status reads: ratio 0.10"


def _cpu_phase(monkeypatch: pytest.MonkeyPatch, workdir: Path, report: DeliveryReport) -> e2e.CpuFigures:
    """``Bench.cpu_phase`` on 1,000 events sent whose delivery check ends with ``report``: the stack, the clock and
    the CPU readings are stand-ins (the product used 2 CPU-seconds over the load)."""
    clock = {"now": 0.0}
    monkeypatch.setattr(e2e, "time", types.SimpleNamespace(
        sleep=lambda s: clock.__setitem__("now", clock["now"] + s), monotonic=lambda: clock["now"]))
    monkeypatch.setattr(e2e_cpu, "calibrate", lambda host, port, requests: 10_000.0)
    bench = e2e.Bench.__new__(e2e.Bench)
    bench.args = argparse.Namespace(calibration_requests=100, cpu_rate=100.0, cpu_seconds=10.0)
    bench.null = types.SimpleNamespace(host="127.0.0.1", port=1)
    bench.counter = types.SimpleNamespace(totals=lambda: (Counter(), 0))
    readings = iter([{"total": 0.0}, {"total": 1.0}, {"total": 1.0}, {"total": 3.0, "calls:ingest": 8.0}])
    bench.cpu = types.SimpleNamespace(snapshot=lambda: next(readings))
    bench.workdir = workdir
    bench.sent_by_partition = {"0": 1000}
    bench.run_load = lambda rate, seconds, **_: types.SimpleNamespace(sent=1000, rate=100.0)
    bench.deliver = lambda manifests, since: (None, report)
    bench.sdk_floor = lambda events, batch: None
    bench.client_floor = lambda events, batch: None
    return bench.cpu_phase()


def test_the_cpu_phase_counts_only_events_fully_delivered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """N divides the events *fully delivered* (stored once, critical ones in Redis, their windows enriched) by the
    product's CPU. When the delivery wait timed out with every event stored but no window enriched and no critical
    event in Redis, the phase counted the 1,000 stored as delivered and printed an N and R for work the product had
    not finished. It now counts none, says how far delivery got, and prints no figure per event."""
    report = DeliveryReport()
    report.figures.update(valid=1000, stored=1000, critical_in_redis=0, windows=2, windows_enriched=0)
    report.problem("10 of 10 critical events are not in Redis")
    report.problem("2 of 2 windows are not enriched")
    figures = _cpu_phase(monkeypatch, tmp_path, report)
    assert figures["delivered"] == 0 and figures["problems"], figures
    e2e.print_cpu(figures)
    out = capsys.readouterr().out
    assert "delivery NOT complete" in out and "1000 of 1000 valid events stored once" in out, out
    assert "cpu: NOT delivered: 2 of 2 windows are not enriched" in out
    assert "CPU-second" not in out and "us/event," not in out, out


def test_the_cpu_phase_counts_every_event_once_delivery_is_complete(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = DeliveryReport()
    report.figures.update(valid=1000, stored=1000, critical_in_redis=10, windows=2, windows_enriched=2)
    figures = _cpu_phase(monkeypatch, tmp_path, report)
    assert figures["delivered"] == 1000 and not figures["problems"], figures
    e2e.print_cpu(figures)
    out = capsys.readouterr().out
    assert "delivered 1000 in" in out and "events per product CPU-second 500 (calibration 10000, ratio 0.050)" in out


def test_two_workers_measure_only_the_scale_out() -> None:
    """``--workers 2`` runs the stack with the scale-out settings (60 s allowed lateness, 2 s load balancing), and
    ran the cpu, steps and latency phases under them by default, printing worse figures than ``--workers 1`` with
    nothing to say why. It now runs only the scale-out by default, and refuses those phases by name."""
    assert e2e.parse_args([]).phases == "cpu,steps,latency"
    assert e2e.parse_args(["--workers", "2"]).phases == "none"
    with pytest.raises(SystemExit) as refused:
        e2e.parse_args(["--workers", "2", "--phases", "cpu,latency"])
    assert refused.value.code == 2


def test_python_m_bench_lists_only_benchmarks() -> None:
    """Every name ``python -m bench`` lists runs a benchmark (a shared helper module would be listed, and fail)."""
    import importlib

    from bench.__main__ import available

    for name in available():
        assert callable(getattr(importlib.import_module(f"bench.{name}"), "main", None)), name


def test_bench_lookups_stops_on_a_block_that_did_other_work() -> None:
    """``bench lookups``' ours only asserted HTTP 200 and the raw hits never looked at their replies: a path that
    missed the cache in hit blocks, served a hit in miss blocks, answered for another device, or raw hits finding
    nothing would still print a ratio. Each block is now checked after it, untimed."""
    body = b'{"device_id":"device-1"}'
    lookups.check_block("hit", "ours", ["device-1"], [("device-1", "hit", body)], [])
    lookups.check_block("miss", "ours", ["device-1"], [("device-1", "miss", body)], [])
    lookups.check_block("hit", "threads", ["device-1"], [], [])
    wrong = [("miss", "ours", ["device-1"], [("device-1", "hit", body)], []),
             ("hit", "ours", ["device-1"], [("device-1", "miss", body)], []),
             ("hit", "ours", ["device-2"], [("device-2", "hit", body)], []),
             ("hit", "ours", ["device-1", "device-2"], [("device-1", "hit", body)], []),
             ("hit", "asyncio", ["device-1"], [], ["device-1"])]
    for kind, side, called, answers, empty in wrong:
        with pytest.raises(RuntimeError):
            lookups.check_block(kind, side, called, answers, empty)
