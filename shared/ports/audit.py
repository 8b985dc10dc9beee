"""Ports of the zero-loss audit: where each Event Hubs sequence number went, and where a time falls in a partition.

The audit's promise: every sequence number the host checkpointed past was either
stored or dead-lettered (or dropped as an exact duplicate of another event of its
batch). Before it returns (so before the host can checkpoint past the batch), the
ingest service records the runs of consecutive sequence numbers it accounted for,
one entry per run with the count of each outcome, not one per record: a batch is
one run, so the ledger costs one row per batch. The audit reads the ledger per
partition and per sequence range, never the whole table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AuditRun:
    """Records ``first..last`` (inclusive) of ``partition``, every one stored, dead-lettered or a duplicate.

    The counts say how: events stored, items dead-lettered (an array body counts
    each element), records dropped as exact duplicates of another of the batch.
    """

    partition: str
    first: int
    last: int
    stored: int = 0
    dead_lettered: int = 0
    duplicate: int = 0


class AuditLedger(Protocol):
    """Per partition and sequence number, what became of each record."""

    def record(self, runs: Sequence[AuditRun]) -> None:
        """Durably record ``runs``, or raise ``TransientError``.

        Idempotent: a run recorded twice (a retried batch) is one entry. Runs may
        overlap (a batch delivered again after a crash, cut differently).
        """

    def accounted(self, partition: str, first: int, last: int) -> Iterable[tuple[int, int]]:
        """The recorded runs of ``partition`` that meet ``first..last``, as inclusive ``(first, last)`` pairs.

        Raises ``DependencyUnavailable`` when the ledger cannot be read.
        """


class SequenceAtTime(Protocol):
    """Where a point in time falls in a partition's sequence numbers."""

    def first_at(self, partition: str, at: datetime) -> int | None:
        """The sequence number of the first event enqueued at or after ``at``; ``None`` when there is none yet."""


class DeadLetteredBatches(Protocol):
    """Whole batches in the dead-letter store: the ones whose ledger run may be missing (the store was down)."""

    def batches(self, partition: str) -> Iterable[tuple[int, int, str]]:
        """``(first, last, letter name)`` of each batch letter of ``partition``, replayed or not."""
