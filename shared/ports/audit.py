"""Ports of the zero-loss audit: where each Event Hubs sequence number went, and where a time falls in a partition.

The audit's promise: every sequence number the host checkpointed past was either
stored or dead-lettered (or dropped as an exact duplicate of another event of its
batch). The ingest service records each record's outcome in the ledger before it
returns, so before the host can checkpoint past it; the audit then reads the
ledger per partition and per sequence range, never the whole table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Outcome = Literal["stored", "dead_lettered", "duplicate"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One Event Hubs record's fate: ``outcome`` of the record at ``sequence_number`` in ``partition``."""

    partition: str
    sequence_number: int
    outcome: Outcome


class AuditLedger(Protocol):
    """Per partition and sequence number, what became of each record."""

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Durably record ``entries``, or raise ``TransientError``.

        Idempotent: an entry recorded twice is one entry. A record may have
        several outcomes (an array body whose elements were partly rejected).
        """

    def accounted(self, partition: str, first: int, last: int) -> Iterable[int]:
        """The sequence numbers in ``first..last`` (inclusive) with at least one outcome, read range by range.

        Raises ``DependencyUnavailable`` when the ledger cannot be read.
        """


class SequenceAtTime(Protocol):
    """Where a point in time falls in a partition's sequence numbers."""

    def first_at(self, partition: str, at: datetime) -> int | None:
        """The sequence number of the first event enqueued at or after ``at``; ``None`` when there is none yet."""
