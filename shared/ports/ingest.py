"""Ports of the ingest service."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shared.domain.events import Event, EventMetadata, Rejected
from shared.exceptions import TransientError


class EventStore(Protocol):
    """Durable storage of valid events (Cassandra)."""

    def write(self, events: Sequence[Event]) -> None:
        """Store every event in every table, or raise.

        Idempotent: writing the same events again leaves the same rows (upserts
        keyed by event id; latest state written with the event time as write
        timestamp, so the newest event wins whatever the order). Returns only
        when every write is acknowledged at the configured consistency. Raises
        ``TransientError`` when the store could not take them after its own
        bounded retries; some events may then be stored, which a replay repairs.
        """


class RejectedLettersFailed(TransientError):
    """``DeadLetterSink.put_rejected`` failed part way: ``written`` are the items whose letters it wrote (durably)
    before the failure, so the audit ledger can count them as dead-lettered and list only the others as lost."""

    def __init__(self, message: str, written: Sequence[Rejected] = ()) -> None:
        super().__init__(message)
        self.written = tuple(written)


class DeadLetterSink(Protocol):
    """Where input that cannot be stored goes, with the reason and the original bytes."""

    def put_rejected(self, rejected: Sequence[Rejected]) -> None:
        """Durably record each rejected item (reason, original bytes, Event Hubs metadata), or raise.

        Idempotent: the same item written twice is one dead letter (names derive
        from partition, sequence number and index). A failure after some letters
        are written raises :class:`RejectedLettersFailed` naming those (the caller
        counts them as dead-lettered); any other exception means none is known to
        be written.
        """

    def put_batch(self, bodies: Sequence[tuple[bytes, EventMetadata]], reason: str, *,
                  lettered: Collection[int] = ()) -> None:
        """Durably record a whole batch that could not be stored (e.g. the store stayed down), or raise.

        ``lettered``: positions in ``bodies`` of records every element of which has a rejected letter already.
        The batch letter is named for the whole batch (its first and last sequence number, so the audit counts
        the range as dead-lettered) but leaves those records out: each item is in exactly one letter.
        Idempotent: the same batch written twice is one dead letter.
        """


@dataclass(frozen=True, slots=True)
class DelayedBatch:
    """A batch stored long after Event Hubs enqueued its oldest event: ingest was behind (an outage, a backlog).

    Enrichment's late scan reads arrivals by enqueued time with an overlap of the
    allowed lateness; an event stored later than that after its enqueue would fall
    behind every scan. The note tells enrichment to scan back to ``oldest_enqueued``.
    """

    partition: str | None
    first_sequence: int | None
    oldest_enqueued: datetime
    events: int


class DelayLog(Protocol):
    """Where ingest notes batches it stored long after their enqueue (read by enrichment's late scan)."""

    def record(self, batch: DelayedBatch) -> None:
        """Durably note ``batch``, or raise ``TransientError``. Noting a batch twice (a retry) is harmless."""


@dataclass(frozen=True, slots=True)
class StoredCopy:
    """Where the copy of an event id that ``events_by_id`` holds came from in Event Hubs."""

    enqueued_time: datetime | None
    sequence_number: int | None


class StoredCopies(Protocol):
    """Reads which copy of an event id is stored, so a dead-letter replay never puts an older copy over it."""

    def copies(self, event_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, StoredCopy]:
        """The stored copy of each of ``event_ids`` that is stored (absent: not stored), or raise."""
