"""The ingest service: validate a batch, store the valid events, dead-letter the rest.

Order, and why: the Functions host advances the Event Hubs checkpoint after every
invocation, success or failure. So before :meth:`IngestService.handle` returns,
every record of the batch is either stored in the event store or written to the
dead-letter sink; nothing is left to a later retry that will never come.

* invalid input (bad JSON, contract violations) is data: dead-lettered one item
  at a time with the reason and the original bytes, while the rest is stored;
  the store is written first and the rejected letters after it, so a letter is
  rewritten (a replay names in it only what is still invalid) only once the
  elements it held as not stored are stored: a store failure leaves it as it
  was. A dead-letter failure after a stored batch retries the batch, which
  stores it again (idempotent);
* a store failure raises so the function's ``@retry`` runs the whole batch again
  (writes are idempotent upserts, so a replay is harmless); on the final attempt
  the invalid items get their rejected letters and then the whole batch is
  dead-lettered with the reason (leaving out the records those letters hold
  whole), and the call returns
  normally. Any failure counts, not only ``TransientError``: a store that cannot
  even be reached at a cold start (:class:`LazyEventStore` makes that a failure of
  ``write``), a Key Vault outage, a schema that is not ours; the host would move
  past the batch all the same;
* if even the dead-letter sink fails, the error propagates: the host logs it, and
  this is the one case where an operator must act (see docs/operations.md). When
  the rejected letters fail on the final attempt, or the batch letter after them,
  the ledger still records the records that are durable, stored or in a letter
  written before the failure (``RejectedLettersFailed`` names those; best effort),
  so the audit lists only the ones in neither place.

With an audit ledger, the runs of consecutive sequence numbers of the batch are
recorded with their outcome counts (stored, dead_lettered, duplicate) after the
store and the dead-letter sink took them and before ``handle`` returns, so before
the host can checkpoint past it (the zero-loss audit, ``shared/services/audit.py``).
A failed ledger write fails like a store write (retry, then dead-letter the batch);
the ledger entries of a dead-lettered batch are then written best effort, since the
ledger shares the store's fate.

With a delay log, a batch stored more than ``delayed_after`` after Event Hubs
enqueued its oldest stored event (ingest behind: an outage, a backlog) is noted
there, after the store and before the ledger, so enrichment's late scan reaches
back to it (see ``shared/services/enrichment.py``); a failed note fails like a store
write.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.events import Event, EventMetadata, Limits, Parsed, RawRecord, Rejected, parse_records
from shared.domain.times import to_ms, utc
from shared.exceptions import TransientError
from shared.lazy import Once
from shared.ports.audit import AuditLedger, AuditRun
from shared.ports.ingest import (
    DeadLetterSink,
    DelayedBatch,
    DelayLog,
    EventStore,
    RejectedLettersFailed,
    StoredCopies,
    StoredCopy,
)
from shared.ports.metrics import NO_METRICS, Metrics

# The service's input, for the entry point that decodes the Event Hubs binding into it.
__all__ = ["EventMetadata", "IngestResult", "IngestService", "LazyEventStore", "RawRecord"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one batch became."""

    received: int
    stored: int
    rejected: int
    duplicates: int
    batch_dead_lettered: bool = False
    superseded: int = 0
    """Valid events not written because the store holds a later copy of their id (a replay only, ``copies``)."""
    rejected_bodies: int = 0
    """Of ``rejected``, the bodies refused whole (``<seq>-body.json`` letters); the others are array elements, in
    their body's ``<seq>-elements.json`` letter."""


class IngestService:
    def __init__(self, store: EventStore, dead_letters: DeadLetterSink, limits: Limits,
                 audit: AuditLedger | None = None, *, metrics: Metrics = NO_METRICS, delays: DelayLog | None = None,
                 delayed_after: timedelta = timedelta(seconds=60), copies: StoredCopies | None = None) -> None:
        self._store = store
        self._copies = copies
        self._dead_letters = dead_letters
        self._limits = limits
        self._audit = audit
        self._metrics = metrics
        self._delays = delays
        self._delayed_after = delayed_after

    def handle(
        self, records: Sequence[RawRecord], *, final_attempt: bool = True, now: datetime | None = None
    ) -> IngestResult:
        """Store or dead-letter every record (see the module docstring for the order)."""
        began = time.perf_counter()
        try:
            parsed = parse_records(records, limits=self._limits, now=now)
        except Exception as exc:  # a bug in validation must not lose the batch: the host checkpoints past it anyway
            reason = f"validation failed unexpectedly: {type(exc).__name__}: {exc}"
            if not final_attempt:
                logger.warning("%s; the batch will be retried", reason, exc_info=True)
                raise
            logger.exception("%s; dead-lettering the batch", reason)
            self._dead_letters.put_batch([(r.body, r.metadata) for r in records], reason)
            self._audit_dead_lettered(records)
            self._record(records, Parsed(), began, validation_failed=len(records))
            return IngestResult(len(records), 0, 0, 0, batch_dead_lettered=True)
        # The store first, the rejected letters after: a rejected letter replayed is rewritten naming only what is
        # still invalid, so it may change only once what it held as not stored is stored (or it would name less than
        # is stored nowhere). A Blob failure after the store retries the batch, and storing again is idempotent.
        try:
            written = parsed.oks if self._copies is None else _not_superseded(self._copies, parsed.oks)
            self._store.write(written)
            self._note_delay(written, now)
        except Exception as exc:
            return self._store_failed(records, parsed, began, exc, final_attempt=final_attempt)
        if parsed.errs:
            try:
                self._dead_letters.put_rejected(parsed.errs)
            except Exception as exc:
                if final_attempt:  # the host checkpoints past the batch: what is durable is counted now, for good
                    lettered = _lettered(exc)
                    self._audit_durable(records, parsed, lettered, stored=True)
                    self._record(records, Parsed(parsed.oks, lettered, parsed.duplicates), began,
                                 stored=written, superseded=len(parsed.oks) - len(written))
                raise
        try:  # each outcome is recorded once it is durable: stored, and dead-lettered
            if self._audit is not None:
                self._audit.record(audit_runs(records, parsed.oks, parsed.errs))
        except Exception as exc:
            return self._store_failed(records, parsed, began, exc, final_attempt=final_attempt, lettered=True,
                                      written=written)
        self._record(records, parsed, began, stored=written,
                     superseded=len(parsed.oks) - len(written))
        return IngestResult(len(records), len(written), _refused(parsed), parsed.duplicates,
                            superseded=len(parsed.oks) - len(written),
                            rejected_bodies=sum(1 for r in parsed.errs if not r.elements))

    def _store_failed(self, records: Sequence[RawRecord], parsed: Parsed, began: float, exc: Exception, *,
                      final_attempt: bool, lettered: bool = False, written: Sequence[Event] = ()) -> IngestResult:
        """Re-raise for the retry; on the final attempt dead-letter the invalid items, then the batch, and return.

        ``lettered``: the rejected letters are written already (the ledger failed after them, the store having
        taken ``written``). When a letter fails on the final attempt, what is durable is counted in the ledger and
        the metrics (the host checkpoints past the batch) before the failure is raised."""
        # A TransientError names the events and the cause; anything else gets its traceback in the log.
        unexpected = not isinstance(exc, TransientError)
        reason = f"{type(exc).__name__}: {exc}" if unexpected else str(exc)
        if not final_attempt:
            logger.warning("storing %d events failed, the batch will be retried: %s", len(parsed.oks), reason,
                           exc_info=unexpected)
            raise exc
        logger.error("storing %d events failed on the final attempt; dead-lettering the batch: %s",
                     len(parsed.oks), reason, exc_info=unexpected)
        if parsed.errs and not lettered:  # before the batch letter, which leaves out the records they hold whole
            try:
                self._dead_letters.put_rejected(parsed.errs)
            except Exception as failed:  # the host checkpoints past the batch: count the letters written
                durable = _lettered(failed)
                self._audit_durable(records, parsed, durable, stored=False)
                self._record(records, Parsed(parsed.oks, durable, parsed.duplicates), began)
                raise
        try:
            self._dead_letters.put_batch([(r.body, r.metadata) for r in records], f"event store unavailable: {reason}",
                                         lettered=_rejected_whole(records, parsed))
        except Exception:  # the host checkpoints past the batch: the rejected letters are written, count them
            self._audit_durable(records, parsed, parsed.errs, stored=lettered)
            self._record(records, parsed, began, stored=written if lettered else (),
                         superseded=len(parsed.oks) - len(written) if lettered else 0)
            raise
        self._audit_dead_lettered(records)
        self._record(records, parsed, began, store_failed=len(parsed.oks))
        return IngestResult(len(records), 0, _refused(parsed), parsed.duplicates, batch_dead_lettered=True)

    def _record(self, records: Sequence[RawRecord], parsed: Parsed, began: float, *, stored: Sequence[Event] = (),
                superseded: int = 0, store_failed: int = 0, validation_failed: int = 0) -> None:
        """The batch's figures, once, after every record is stored or dead-lettered (the oldest is the first).

        ``stored``: the events written; ``superseded``: those of ``parsed.oks`` a replay did not write, their stored
        copy being a later one; ``store_failed``, ``validation_failed``: the events (the records) of a batch
        dead-lettered whole, by why it was."""
        first = records[0].metadata if records else None
        self._metrics.ingest_batch(first.partition_id if first else None, stored=stored,
                                   duplicates=parsed.duplicates, rejected=parsed.errs, store_failed=store_failed,
                                   validation_failed=validation_failed, superseded=superseded,
                                   seconds=time.perf_counter() - began,
                                   oldest_enqueued=first.enqueued_time if first else None)


    def _note_delay(self, stored: Sequence[Event], now: datetime | None) -> None:
        """Note the batch in the delay log if its oldest stored event was enqueued more than ``delayed_after`` ago."""
        if self._delays is None:
            return
        oldest = min((utc(e.metadata.enqueued_time) for e in stored if e.metadata.enqueued_time is not None),
                     default=None)
        if oldest is None or (now or datetime.now(UTC)) - oldest <= self._delayed_after:
            return
        first = stored[0].metadata
        self._delays.record(DelayedBatch(first.partition_id, first.sequence_number, oldest, len(stored)))

    def _audit_durable(self, records: Sequence[RawRecord], parsed: Parsed, lettered: Sequence[Rejected], *,
                       stored: bool) -> None:
        """Record the runs of the records that are durable, when their rejected letters failed on the final attempt.

        The host checkpoints past the batch anyway: what is stored (``stored``: the store took ``parsed.oks``) and
        the rejected letters written before the failure (``lettered``, :class:`RejectedLettersFailed`) are accounted
        for, and only the records with an item in neither place are left out, so the audit lists exactly those.
        With the store failed, only records rejected whole count: the valid elements of the others are nowhere.
        Best effort: the letter's failure is what the call raises."""
        if self._audit is None:
            return
        written = {id(r.metadata) for r in lettered}
        if stored:
            lost = {id(r.metadata) for r in parsed.errs} - written
            durable = [r for r in records if id(r.metadata) not in lost]
        else:
            whole = _rejected_whole(records, parsed)
            durable = [r for i, r in enumerate(records) if i in whole and id(r.metadata) in written]
        runs = audit_runs(durable, parsed.oks if stored else (), lettered)
        try:
            self._audit.record(runs)
        except Exception:
            logger.warning("could not record %d durable runs in the audit ledger", len(runs), exc_info=True)

    def _audit_dead_lettered(self, records: Sequence[RawRecord]) -> None:
        if self._audit is None:
            return
        runs = audit_runs(records, (), [r for r in records])
        try:
            self._audit.record(runs)
        except Exception:  # the batch is dead-lettered; the audit will show it as a gap, which the letter explains
            logger.warning("could not record %d dead-lettered runs in the audit ledger", len(runs), exc_info=True)


def _not_superseded(copies: StoredCopies, events: list[Event]) -> list[Event]:
    """The events of ``events`` whose stored copy (if any) is not a later one: what a replay may write.

    A dead letter's copy of an event is as old as the letter; storing it with a newer write time would put it
    over a correction of its id stored since. The later copy is the one enqueued later, at the same enqueued
    time the one with the greater sequence number (later in the partition: ingest's in-batch rule). The same
    copy is written again (idempotent), which repairs a write that failed half-way."""
    if not events:
        return events
    stored = copies.copies([e.event_id for e in events])
    return [e for e in events if not _later(stored.get(e.event_id), e)]


def _later(stored: StoredCopy | None, event: Event) -> bool:
    """Whether ``stored`` is a later copy of ``event``'s id than ``event`` (unknown positions: not later)."""
    if stored is None or stored.enqueued_time is None or event.metadata.enqueued_time is None:
        return False
    mine, theirs = to_ms(utc(event.metadata.enqueued_time)), to_ms(stored.enqueued_time)
    if theirs != mine:
        return theirs > mine
    sequence = event.metadata.sequence_number
    return stored.sequence_number is not None and sequence is not None and stored.sequence_number > sequence


def _lettered(failure: Exception) -> list[Rejected]:
    """The rejected items whose letters a failed ``put_rejected`` wrote (none known unless it said which)."""
    return list(failure.written) if isinstance(failure, RejectedLettersFailed) else []


def _refused(parsed: Parsed) -> int:
    """Items refused as invalid: each bad element of an array body counts (its body is one rejected letter)."""
    return sum(r.count for r in parsed.errs)


def _rejected_whole(records: Sequence[RawRecord], parsed: Parsed) -> set[int]:
    """Positions of the records every element of which has a rejected letter: a batch letter leaves them out.

    A record with a valid (or duplicate) element stays in it whole: replaying it writes its invalid elements to
    the same rejected names again, so no item is in two letters and nothing is lost.
    """
    valid = {id(e.metadata) for e in parsed.oks}
    rejected = {id(r.metadata) for r in parsed.errs} - valid
    return {position for position, record in enumerate(records) if id(record.metadata) in rejected}


def audit_runs(records: Sequence[RawRecord], stored: Sequence[Event], dead_lettered: Sequence[Any]) -> list[AuditRun]:
    """The batch's runs of consecutive sequence numbers per partition, with how many went each way.

    ``stored`` and ``dead_lettered`` are anything with Event Hubs ``metadata``
    (events, rejected items, records); a record with neither was dropped as a
    duplicate. Records without a partition or sequence number (not from Event
    Hubs) are not audited.
    """
    stored_at = Counter((e.metadata.partition_id, e.metadata.sequence_number) for e in stored)
    dead_at: Counter[tuple[str | None, int | None]] = Counter()
    for r in dead_lettered:  # a rejected array body counts each of its bad elements
        dead_at[(r.metadata.partition_id, r.metadata.sequence_number)] += getattr(r, "count", 1)
    numbered = sorted({(r.metadata.partition_id, r.metadata.sequence_number) for r in records
                       if r.metadata.partition_id is not None and r.metadata.sequence_number is not None})
    runs: list[AuditRun] = []
    for partition, sequence in numbered:
        key = (partition, sequence)
        counts = (stored_at[key], dead_at[key], int(not stored_at[key] and not dead_at[key]))
        last = runs[-1] if runs else None
        if last is not None and last.partition == partition and last.last == sequence - 1:
            runs[-1] = AuditRun(partition, last.first, sequence, last.stored + counts[0],
                                last.dead_lettered + counts[1], last.duplicate + counts[2])
        else:
            runs.append(AuditRun(partition, sequence, sequence, *counts))
    return runs


class LazyEventStore:
    """An event store built on its first non-empty write, and built again after a failed build.

    The Cassandra session connects when it is made; made at start-up, an outage
    there would fail the invocation before :meth:`IngestService.handle` could
    dead-letter anything. Built here, it fails inside ``write``, where the
    service retries or dead-letters the batch. A batch of only invalid events
    never needs the store.
    """

    def __init__(self, build: Callable[[], EventStore]) -> None:
        self._store = Once(build)

    def write(self, events: Sequence[Event]) -> None:
        if events:
            self._store.get().write(events)
