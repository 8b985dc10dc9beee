"""How the benchmarks compute and label their figures (bench/_stats.py, bench/e2e.py's options)."""

from __future__ import annotations

import pytest

from bench import e2e, eventhubs_emulator, lookups, status
from bench._stats import percentile


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
