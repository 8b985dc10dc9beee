"""Port of the Event Hubs lag reading: per partition, how far a consumer group's checkpoint trails the hub.

The reading is the one KEDA's ``azure-eventhub`` scaler makes, so that what Sluice
reports (``python -m sluice doctor keda``, later the status page and metrics) is
what the autoscaler acts on, including its mistakes: a checkpoint KEDA cannot find
counts the whole partition as unprocessed. ``warnings`` say when that happens and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition as the scaler sees it.

    ``checkpoint_sequence_number`` is ``None`` when the scaler found no checkpoint
    (it then counts every retained event); ``unprocessed`` is the scaler's count.
    ``checkpoint_error`` says why the scaler cannot read the checkpoint blob (no
    numeric ``sequencenumber``): the scaler then fails and counts nothing, so
    ``unprocessed`` (every retained event) is no figure to report as a lag.
    ``empty``: the hub retains none of the partition's events (Azure then reports the
    beginning equal to the last sequence number, so the beginning alone cannot say it).
    """

    partition_id: str
    beginning_sequence_number: int
    last_enqueued_sequence_number: int
    checkpoint_sequence_number: int | None
    unprocessed: int
    checkpoint_error: str | None = None
    empty: bool = False

    @property
    def oldest_retained(self) -> int:
        """The sequence number of the oldest event the hub still retains (the next one's when it retains none)."""
        return self.last_enqueued_sequence_number + 1 if self.empty else self.beginning_sequence_number


@dataclass(frozen=True, slots=True)
class LagReading:
    """Every partition of the hub, and what would make the scaler's reading wrong."""

    partitions: tuple[PartitionLag, ...]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    """Facts worth saying that are not mistakes (a partition not checkpointed yet)."""
    scaler_error: str | None = None
    """Set when the scaler itself would fail on this state (KEDA then applies the ScaledObject's fallback)."""

    @property
    def total(self) -> int:
        return sum(p.unprocessed for p in self.partitions)


class PartitionLagReader(Protocol):
    """Reads the lag of one hub and consumer group; raises ``DependencyUnavailable`` when a service is down."""

    def read(self) -> LagReading:
        """The hub's partitions with their checkpoints, read now."""
        ...
