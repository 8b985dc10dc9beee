"""The status page's lag reader: one reading per max_age, failures remembered as long, never a pile-up of reads."""

from __future__ import annotations

import pytest

from shared.adapters.eventhub_lag import CachedPartitionLag
from shared.exceptions import DependencyUnavailable
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
    assert lag.lag() == {"0": 3, "1": 0}
    assert reader.reads == 2


def test_a_partition_whose_checkpoint_keda_cannot_read_is_named_and_not_counted() -> None:
    """KEDA's scaler fails on a checkpoint blob without a numeric ``sequencenumber`` and counts nothing there; the
    reader's count for it (every retained event, as if never checkpointed) would be a false lag that grows with
    every event, on the gauge, the status page and the lag alert. So the partition is left out of ``lag`` and
    ``unreadable`` names it with the reason, from the same reading."""
    error = "azure-webjobs-eventhub/ns/hub/sluice/checkpoint/0 has no 'sequencenumber' metadata (keys: ['offset'])"
    reader = ScriptedReader(LagReading((PartitionLag("0", 0, 4, None, 5, error), PartitionLag("1", 0, 3, 3, 0)),
                                       scaler_error=error))
    lag = CachedPartitionLag(reader, max_age=5.0, monotonic=lambda: 0.0)
    assert lag.unreadable() == {}  # nothing read yet, and it never reads
    assert lag.lag() == {"1": 0}
    assert lag.unreadable() == {"0": error}
    assert reader.reads == 1
