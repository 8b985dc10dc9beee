"""The zero-loss audit: sequence numbers the host checkpointed past that were neither stored nor dead-lettered.

Per partition, the range audited runs from a start (the first sequence number
enqueued at or after ``since``, an explicit sequence number, or ``window``
numbers below the checkpoint) to the checkpoint itself: the checkpoint is the
last record the host handed to ingest, and the host only checkpoints after the
invocation returned, by when ingest has recorded every record's outcome. Records
past the checkpoint are still in flight and are not gaps. Records below the
partition's ``beginning_sequence_number`` have expired from the hub; the ledger,
not the hub, says whether ingest accounted for them, so a window reaches below
them all the same: records the host checkpointed past after they expired unread
(ingest down longer than the retention) are the classic Event Hubs loss, and they
are missing. A ``since`` older
than the oldest retained event cannot be placed (the hub no longer knows when the
expired records were enqueued): the partition is audited from its oldest retained
event and marked (``expired_below``), so the report does not pass for complete.
A start sequence past every partition's checkpoint audits nothing and is refused.

The ledger is read per partition and per range (:class:`AuditLedger.accounted`),
so the cost is the size of the range, never of the table. A range longer than
``max_span`` is refused with a message rather than read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.exceptions import ConfigurationError
from shared.ports.audit import AuditLedger, DeadLetteredBatches, SequenceAtTime
from shared.ports.lag import LagReading, PartitionLagReader

logger = logging.getLogger(__name__)

DEFAULT_MAX_SPAN = 5_000_000


@dataclass(frozen=True, slots=True)
class PartitionAudit:
    """One partition's audited range (``first > last``: nothing to audit) and the gaps in it, as inclusive ranges."""

    partition: str
    first: int
    last: int
    gaps: tuple[tuple[int, int], ...] = ()
    letters: tuple[tuple[int, int, str], ...] = ()
    """Batch letters that account for sequence numbers the ledger lacks (not gaps: they were dead-lettered)."""
    expired_below: int | None = None
    """Set when the start could not be placed: ``since`` is older than every event the hub still retains, and the
    sequence numbers below this one (expired) may have been enqueued after it; they were not audited."""

    @property
    def missing(self) -> int:
        return sum(end - start + 1 for start, end in self.gaps)

    @property
    def audited(self) -> int:
        return max(0, self.last - self.first + 1)


@dataclass(frozen=True, slots=True)
class AuditReport:
    partitions: tuple[PartitionAudit, ...]

    @property
    def missing(self) -> int:
        return sum(p.missing for p in self.partitions)

    @property
    def whole(self) -> bool:
        """Every partition was audited over the whole range asked for (see ``PartitionAudit.expired_below``)."""
        return all(p.expired_below is None for p in self.partitions)


def gaps_in(first: int, last: int, runs: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The parts of ``first..last`` no run covers, as inclusive ``(start, end)`` pairs."""
    out: list[tuple[int, int]] = []
    covered_to = first - 1  # everything up to here is covered (or outside the range)
    for start, end in sorted(runs):
        if end <= covered_to:
            continue
        if start > covered_to + 1:
            out.append((covered_to + 1, min(start - 1, last)))
        covered_to = max(covered_to, end)
        if covered_to >= last:
            break
    if covered_to < last:
        out.append((covered_to + 1, last))
    return tuple((s, e) for s, e in out if s <= e and s <= last)


class AuditService:
    def __init__(self, ledger: AuditLedger, positions: PartitionLagReader, clock: SequenceAtTime | None = None, *,
                 letters: DeadLetteredBatches | None = None, max_span: int = DEFAULT_MAX_SPAN) -> None:
        self._ledger = ledger
        self._positions = positions
        self._clock = clock
        self._letters = letters
        self._max_span = max_span

    def audit(self, *, since: datetime | None = None, from_sequence: int | None = None,
              window: int | None = None) -> AuditReport:
        """Audit every partition up to its checkpoint, from ``since``, ``from_sequence`` or ``window`` below it.

        Exactly one start must be given. Raises ``DependencyUnavailable`` when the
        hub, the checkpoints or the ledger cannot be read.
        """
        if sum(x is not None for x in (since, from_sequence, window)) != 1:
            raise ConfigurationError("give exactly one of since, from_sequence or window to audit")
        if since is not None and self._clock is None:
            raise ConfigurationError("auditing from a time needs the hub to find the sequence number at that time")
        reading = self._positions.read()
        problems = [*reading.warnings, *([reading.scaler_error] if reading.scaler_error else [])]
        if problems:  # a partition whose checkpoint could not be read would look "not checkpointed yet": no gap
            raise ConfigurationError("the checkpoints cannot be read as the Functions host writes them, so no "
                                     "partition can be audited: " + "; ".join(problems))
        placed = self._place(since, reading) if since is not None else {}
        out = []
        for p in reading.partitions:
            checkpoint = p.checkpoint_sequence_number
            if checkpoint is None:  # nothing checkpointed past yet
                out.append(PartitionAudit(p.partition_id, 0, -1))
                continue
            expired_below = None
            if since is not None:
                first, expired_below = placed[p.partition_id]
            elif from_sequence is not None:
                first = from_sequence
            else:
                assert window is not None
                first = checkpoint - window + 1
            audited = self._audit_range(p.partition_id, max(first, 0), checkpoint)
            out.append(dataclasses.replace(audited, expired_below=expired_below) if expired_below else audited)
        checkpoints = {p.partition_id: p.checkpoint_sequence_number for p in reading.partitions}
        if from_sequence is not None and any(c is not None for c in checkpoints.values()) \
                and all(c is None or from_sequence > c for c in checkpoints.values()):
            # Every range is empty: "nothing missing" would be an answer about nothing (a typo'd start, most likely).
            raise ConfigurationError(
                f"sequence {from_sequence} is past every partition's checkpoint ("
                + ", ".join(f"{pid}: {'none' if c is None else c}" for pid, c in checkpoints.items())
                + "): there is nothing to audit from there; give a start at or below a checkpoint")
        return AuditReport(tuple(out))

    def _place(self, since: datetime, reading: LagReading) -> dict[str, tuple[int, int | None]]:
        """Per checkpointed partition, the first sequence number enqueued at or after ``since`` and, when that is
        the oldest the hub retains (so the expired ones before it may be since ``since`` too), ``expired_below``.

        The oldest retained is read again after every partition is placed: placing one costs a receiver's wait
        (10 s when nothing came since), and records that expire meanwhile, read as retained before, would let the
        first one found pass for a retained event before ``since``. Retention only moves up, so a first found above
        the oldest retained read after it was above it when it was found too: a retained event before ``since``.
        """
        assert self._clock is not None
        found = {p.partition_id: self._clock.first_at(p.partition_id, since)
                 for p in reading.partitions if p.checkpoint_sequence_number is not None}
        if not found:
            return {}
        retained = {p.partition_id: p.oldest_retained for p in self._positions.read().partitions}
        placed: dict[str, tuple[int, int | None]] = {}
        for p in reading.partitions:
            if p.partition_id not in found:
                continue
            at = found[p.partition_id]
            first = p.last_enqueued_sequence_number + 1 if at is None else at
            oldest = max(p.oldest_retained, retained.get(p.partition_id, p.oldest_retained))
            # The first event at or after `since` is the oldest the hub retains (or none is retained): the ones
            # before it expired, and whether they were enqueued after `since` is unknowable here.
            placed[p.partition_id] = (first, oldest if 0 < oldest >= first else None)
        return placed

    def _audit_range(self, partition: str, first: int, last: int) -> PartitionAudit:
        if last < first:
            return PartitionAudit(partition, first, last)
        if last - first + 1 > self._max_span:
            raise ConfigurationError(
                f"partition {partition}: auditing {last - first + 1} sequence numbers ({first}..{last}) is more than "
                f"the {self._max_span} allowed in one run; audit a later start")
        gaps = gaps_in(first, last, self._ledger.accounted(partition, first, last))
        letters: tuple[tuple[int, int, str], ...] = ()
        if gaps and self._letters is not None:
            # A batch dead-lettered while the store (and so the ledger) was down has a letter and no run: it was
            # dead-lettered, not lost. The letters are read only when there is a gap.
            letters = tuple(sorted(b for b in self._letters.batches(partition)
                                   if any(b[1] >= s and b[0] <= e for s, e in gaps)))
            gaps = tuple(piece for start, end in gaps for piece in gaps_in(start, end, [(b[0], b[1]) for b in letters]))
        if gaps:
            logger.warning("audit: partition %s is missing %d sequence numbers in %d..%d (first gap %s)",
                           partition, sum(e - s + 1 for s, e in gaps), first, last, gaps[0])
        return PartitionAudit(partition, first, last, gaps, letters)
