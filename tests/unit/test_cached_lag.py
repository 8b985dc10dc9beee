"""The status page's lag reader: one reading per max_age, failures remembered as long, never a pile-up of reads;
the lag gauge's reading of the hub every period, which the page shares."""

from __future__ import annotations

import pytest

from shared.adapters.eventhub_lag import CachedPartitionLag
from shared.adapters.otel_metrics import LAG_PERIOD
from shared.adapters.refreshed_figures import RefreshedFigures
from shared.exceptions import DependencyUnavailable
from shared.ports.dashboard import LagCounts
from shared.ports.lag import LagReading, PartitionLag


class ScriptedReader:
    """A ``PartitionLagReader`` that answers from a script and counts its reads."""

    def __init__(self, *answers: LagReading | DependencyUnavailable) -> None:
        self.answers = list(answers)
        self.reads = 0

    def read(self) -> LagReading:
        self.reads += 1
        answer = self.answers.pop(0)
        if isinstance(answer, DependencyUnavailable):
            raise answer
        return answer


def reading(**lag: int) -> LagReading:
    return LagReading(tuple(PartitionLag(p, 0, n, 0, n) for p, n in lag.items()))


def test_a_failed_reading_is_remembered_for_max_age_then_read_again() -> None:
    down = DependencyUnavailable("Event Hubs", "cannot read the partitions")
    reader = ScriptedReader(down, reading(**{"0": 3, "1": 0}))
    now = [0.0]
    lag = CachedPartitionLag(reader, max_age=5.0, monotonic=lambda: now[0])
    for t in (0.0, 1.0, 4.9):
        now[0] = t
        with pytest.raises(DependencyUnavailable, match="cannot read the partitions"):
            lag.lag()
    assert reader.reads == 1
    now[0] = 5.0
    assert lag.lag().partitions == {"0": 3, "1": 0}
    assert reader.reads == 2


def test_a_partition_whose_checkpoint_keda_cannot_read_is_named_and_not_counted() -> None:
    """KEDA's scaler fails on a checkpoint blob without a numeric ``sequencenumber`` and counts nothing there; the
    reader's count for it (every retained event, as if never checkpointed) would be a false lag that grows with
    every event, on the gauge, the status page and the lag alert. So the partition is left out of the counts and
    ``unreadable`` names it with the reason, from the same reading."""
    error = "azure-webjobs-eventhub/ns/hub/sluice/checkpoint/0 has no 'sequencenumber' metadata (keys: ['offset'])"
    reader = ScriptedReader(LagReading((PartitionLag("0", 0, 4, None, 5, error), PartitionLag("1", 0, 3, 3, 0)),
                                       scaler_error=error))
    lag = CachedPartitionLag(reader, max_age=5.0, monotonic=lambda: 0.0)
    assert lag.fresh_lag() == {"1": 0}  # the gauge: the counts only
    assert lag.lag() == LagCounts({"1": 0}, {"0": error})  # the page: the gauge's reading, both from it
    assert reader.reads == 1


class TimedHub:
    """A ``PartitionLagReader`` over a hub whose lag the test sets; each reading takes 200 ms of the test's clock,
    as a reading of Event Hubs and the checkpoint blobs does, and is noted by when it began."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.lag = 0
        self.reads: list[float] = []

    def read(self) -> LagReading:
        self.reads.append(self.clock[0])
        self.clock[0] += 0.2
        return reading(**{"0": self.lag})


def test_the_lag_gauge_reads_the_hub_every_period_and_never_reports_a_reading_15_s_old() -> None:
    """docs/observability.md: ``sluice.eventhub.lag`` is read every 5 s on a thread of its own, and each collection
    reports the last reading if it is under 15 s old. The gauge reads through the status route's
    ``CachedPartitionLag`` (``max_age`` 5 s, dated when a reading ends), as ``bootstrap.export_lag`` wires them.
    Through ``lag`` the reading due 5 s after the first found one only 4.8 s old and took the cache's answer, dated
    as new: the hub was read every 10 s, and with the next reading hung, a collection at 19 s reported the figure
    read at 0. ``fresh_lag`` reads the hub each period."""
    clock = [0.0]
    hub = TimedHub(clock)
    shared = CachedPartitionLag(hub, monotonic=lambda: clock[0])  # bootstrap.lag_reader(): max_age 5 s
    figures = RefreshedFigures(shared.fresh_lag, name="eventhub-lag", period=LAG_PERIOD, failed=lambda exc: None,
                               monotonic=lambda: clock[0], spawn=lambda run, name: None)
    figures.refresh()  # the loop's first reading, at 0
    hub.lag = 7  # events arrive at 1 s
    clock[0] = LAG_PERIOD  # the loop's next reading starts one period after the first
    figures.refresh()
    assert hub.reads == [0.0, LAG_PERIOD]
    clock[0] = 19.0  # the reading due at 10 s hangs; a collection at 19 s gets the one that ended at 5.2 s
    assert figures.latest() == {"0": 7}
    clock[0] = LAG_PERIOD + 0.2 + 3 * LAG_PERIOD  # three periods after it ended: too old to report
    assert figures.latest() == {}


def test_the_status_page_takes_the_gauges_reading_while_it_is_under_max_age_old() -> None:
    """The page and the gauge share one reading of the hub per period: the page reads only when the gauge's last
    reading is ``max_age`` old (the gauge not exported, or its reading hung)."""
    clock = [0.0]
    hub = TimedHub(clock)
    hub.lag = 3
    lag = CachedPartitionLag(hub, max_age=5.0, monotonic=lambda: clock[0])
    assert lag.fresh_lag() == {"0": 3}
    clock[0] = 4.0
    assert lag.lag().partitions == {"0": 3}
    assert hub.reads == [0.0]
    clock[0] = 5.2
    assert lag.lag().partitions == {"0": 3}
    assert hub.reads == [0.0, 5.2]
