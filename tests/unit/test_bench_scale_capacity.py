"""The scale-out phase's capacity: a figure the producer's rate bounded says so (bench/e2e.py, Bench.capacity).

Bench's own load and drain steps are simulated on a virtual clock (fakes of the bench's methods, no emulator).
"""

from __future__ import annotations

import argparse
import types
from typing import Any

import pytest

# --- bench/e2e.py: Bench.capacity (the scale-out phase's "N workers work off X events/s") ---

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def _fake_bench(monkeypatch: pytest.MonkeyPatch, worker_rate: float, scale_rate: float, scale_seconds: float) -> Any:
    """A Bench whose load and workers are simulated on a virtual clock: workers drain ``worker_rate`` events/s."""
    import bench.e2e as e2e

    clock = _Clock()
    monkeypatch.setattr(e2e, "time", types.SimpleNamespace(monotonic=clock.monotonic, sleep=lambda s: None))
    bench = e2e.Bench.__new__(e2e.Bench)
    bench.args = argparse.Namespace(scale_rate=scale_rate, scale_seconds=scale_seconds)
    state = {"backlog": 0.0}

    def run_load(rate: float, seconds: float, **_: Any) -> Any:
        clock.now += seconds
        sent = rate * seconds
        state["backlog"] = max(0.0, sent - worker_rate * seconds)  # what the workers had not worked off yet
        return types.SimpleNamespace(sent=int(sent), rate=rate)

    def drain() -> float:
        took = state["backlog"] / worker_rate
        clock.now += took
        state["backlog"] = 0.0
        return took

    bench.run_load = run_load
    bench.drain = drain
    bench.lag = lambda: 0
    return bench


def test_capacity_is_not_capped_by_the_load_generators_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers that work off 4,000 events/s, measured with the default --scale-rate 3000 for 20 s.

    ``capacity`` divides the events sent by (send time + drain time); the send alone takes
    ``--scale-seconds``, so the reported rate can never exceed ``--scale-rate``: workers faster than
    the producer are reported at the producer's rate, and the scaling factor two/one is capped at
    scale_rate / one (docs run D: 2,771/s against a 3,000/s ceiling). So a capacity the load bounded says
    so (``load_bound``), and the summary prints it as a lower bound.
    """
    bench = _fake_bench(monkeypatch, worker_rate=4000.0, scale_rate=3000.0, scale_seconds=20.0)
    result = bench.capacity()
    assert result.get("load_bound") or result["rate"] >= 0.9 * 4000.0, result


def test_scaling_factor_of_twice_as_fast_workers_is_two(monkeypatch: pytest.MonkeyPatch) -> None:
    one = _fake_bench(monkeypatch, worker_rate=2000.0, scale_rate=3000.0, scale_seconds=20.0).capacity()
    two = _fake_bench(monkeypatch, worker_rate=4000.0, scale_rate=3000.0, scale_seconds=20.0).capacity()
    assert two.get("load_bound") or two["rate"] / one["rate"] == pytest.approx(2.0, rel=0.1), (one, two)


def test_events_never_checkpointed_when_the_drain_gives_up_are_not_rated(monkeypatch: pytest.MonkeyPatch) -> None:
    """``drain`` gives up after ``--drain-timeout``: a worker that checkpointed nothing was rated at the sent count
    over the elapsed time (11,997 events/s in the review's run), and the scaling factor compared such floors. Only
    what was checkpointed counts, and the summary names what was not."""
    import bench.e2e as e2e

    clock = _Clock()
    monkeypatch.setattr(e2e, "time", types.SimpleNamespace(monotonic=clock.monotonic,
                                                           sleep=lambda s: setattr(clock, "now", clock.now + s)))
    bench = e2e.Bench.__new__(e2e.Bench)
    bench.args = argparse.Namespace(scale_rate=3000.0, scale_seconds=2.0, drain_timeout=0.5)
    sent = 6_000

    def run_load(rate: float, seconds: float, **_: Any) -> Any:
        clock.now += seconds
        return types.SimpleNamespace(sent=sent, rate=rate)

    bench.run_load = run_load
    bench.lag = lambda: sent  # the workers are stuck: nothing checkpointed
    result = bench.capacity()
    assert result["lag"] == sent and result["rate"] == 0 and not result["load_bound"], result
    assert "6000 of 6000 never checkpointed" in e2e._rate(result)


def test_the_summary_of_a_worker_that_checkpointed_nothing_still_prints_the_losses(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``capacity`` rates a stuck worker at 0 events/s (above), and ``print_scale`` divided two workers' rate by
    it for the scaling factor: ZeroDivisionError after the whole scale phase, and the join and kill losses it was
    about to print were lost. The factor is n/a, and the rest is printed."""
    import bench.e2e as e2e

    one: e2e.Capacity = {"sent": 6000, "achieved": 3000, "elapsed": 120.5, "rate": 0.0, "load_bound": False,
                         "lag": 6000}
    two: e2e.Capacity = {"sent": 6000, "achieved": 3000, "elapsed": 10.0, "rate": 600.0, "load_bound": False,
                         "lag": 0}
    losses = {"lost": 0, "lost_stored": 0, "lost_critical": 0, "duplicated": 0, "duplicate_stored": 0,
              "duplicate_critical": 0}
    e2e.print_scale({"one": one, "two": two, "losses": losses, "problems": [], "events": 40_000})
    out = capsys.readouterr().out
    assert "6000 of 6000 never checkpointed" in out and "scaling factor n/a" in out
    assert "40000 events: lost 0 (stored 0, critical 0), duplicated 0" in out, out


# --- bench/e2e.py: Bench.worker_environment (the second dev host of --workers 2) ---


def test_the_second_worker_leaves_out_connection_settings_inherited_from_the_shell(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A shell that sourced an earlier run's settings.env holds that run's hub and storage: the host binds the
    inherited ``AzureWebJobsEventHubConnection`` before the settings file's ``EventHubConnection``, so a second
    worker that kept it would read another stack's hub, and the drills would count its events lost."""
    import bench.e2e as e2e

    monkeypatch.setenv("AzureWebJobsEventHubConnection", "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=a;"
                                                         "SharedAccessKey=b")
    monkeypatch.setenv("ConnectionStrings__AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:1")
    bench = e2e.Bench(e2e.parse_args(["--workers", "2", "--phases", "none"]), tmp_path)
    bench.stack.values = {"AzureWebJobsStorage": "UseDevelopmentStorage=true",  # what write_settings wrote
                          "EventHubConnection": "Endpoint=sb://127.0.0.1:2/", "SLUICE_REDIS_URL": "redis://127.0.0.1"}

    env, unset = bench.worker_environment(2)

    assert {"AzureWebJobsEventHubConnection", "ConnectionStrings__AzureWebJobsStorage", "SLUICE_REDIS_URL"} <= unset
    assert env["DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS"] == "6"  # its own settings are kept
    assert not unset & env.keys()
