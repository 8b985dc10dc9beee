"""The ingest service: validate a batch, store the valid events, dead-letter the rest.

Order, and why: the Functions host advances the Event Hubs checkpoint after every
invocation, success or failure. So before :meth:`IngestService.handle` returns,
every record of the batch is either stored in the event store or written to the
dead-letter sink; nothing is left to a later retry that will never come.

* invalid input (bad JSON, contract violations) is data: dead-lettered one item
  at a time with the reason and the original bytes, while the rest is stored;
* a store failure raises so the function's ``@retry`` runs the whole batch again
  (writes are idempotent upserts, so a replay is harmless); on the final attempt
  the whole batch is dead-lettered with the reason instead, and the call returns
  normally. Any failure counts, not only ``TransientError``: a store that cannot
  even be reached at a cold start (:class:`LazyEventStore` makes that a failure of
  ``write``), a Key Vault outage, a schema that is not ours; the host would move
  past the batch all the same;
* if even the dead-letter sink fails, the error propagates: the host logs it, and
  this is the one case where an operator must act (see docs/operations.md).

With an audit ledger, each record's outcome (stored, dead_lettered, duplicate) is
recorded by sequence number after the store and the dead-letter sink took it and
before ``handle`` returns, so before the host can checkpoint past it (the zero-loss
audit, ``shared/services/audit.py``). A failed ledger write fails like a store
write (retry, then dead-letter the batch); the ledger entries of a dead-lettered
batch are then written best effort, since the ledger shares the store's fate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.domain.events import Event, Limits, RawRecord, parse_records
from shared.exceptions import TransientError
from shared.lazy import Once
from shared.ports.audit import AuditEntry, AuditLedger
from shared.ports.ingest import DeadLetterSink, EventStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one batch became."""

    received: int
    stored: int
    rejected: int
    duplicates: int
    batch_dead_lettered: bool = False


class IngestService:
    def __init__(self, store: EventStore, dead_letters: DeadLetterSink, limits: Limits,
                 audit: AuditLedger | None = None) -> None:
        self._store = store
        self._dead_letters = dead_letters
        self._limits = limits
        self._audit = audit

    def handle(self, records: Sequence[RawRecord], *, final_attempt: bool = True, now: datetime | None = None) -> IngestResult:
        """Store or dead-letter every record (see the module docstring for the order)."""
        parsed = parse_records(records, limits=self._limits, now=now)
        if parsed.errs:
            self._dead_letters.put_rejected(parsed.errs)
        try:
            self._store.write(parsed.oks)
            if self._audit is not None:
                self._audit.record(audit_entries(records, parsed.oks, parsed.errs))
        except Exception as exc:
            # A TransientError names the events and the cause; anything else gets its traceback in the log.
            unexpected = not isinstance(exc, TransientError)
            reason = f"{type(exc).__name__}: {exc}" if unexpected else str(exc)
            if not final_attempt:
                logger.warning("storing %d events failed, the batch will be retried: %s", len(parsed.oks), reason,
                               exc_info=unexpected)
                raise
            logger.error("storing %d events failed on the final attempt; dead-lettering the batch: %s",
                         len(parsed.oks), reason, exc_info=unexpected)
            self._dead_letters.put_batch([(r.body, r.metadata) for r in records], f"event store unavailable: {reason}")
            self._audit_dead_lettered(records)
            return IngestResult(len(records), 0, len(parsed.errs), parsed.duplicates, batch_dead_lettered=True)
        return IngestResult(len(records), len(parsed.oks), len(parsed.errs), parsed.duplicates)


    def _audit_dead_lettered(self, records: Sequence[RawRecord]) -> None:
        if self._audit is None:
            return
        entries = [AuditEntry(r.metadata.partition_id, r.metadata.sequence_number, "dead_lettered") for r in records
                   if r.metadata.partition_id is not None and r.metadata.sequence_number is not None]
        try:
            self._audit.record(entries)
        except Exception:  # the batch is dead-lettered; the audit will show it as a gap, which the letter explains
            logger.warning("could not record %d dead-lettered records in the audit ledger", len(entries), exc_info=True)


def audit_entries(records: Sequence[RawRecord], stored: Sequence[Event], rejected: Sequence) -> list[AuditEntry]:
    """Each record's outcomes: stored if one of its events was, dead_lettered if one was rejected, else duplicate.

    Records without a partition or sequence number (not from Event Hubs) are not audited.
    """
    stored_at = {(e.metadata.partition_id, e.metadata.sequence_number) for e in stored}
    rejected_at = {(r.metadata.partition_id, r.metadata.sequence_number) for r in rejected}
    entries = []
    for record in records:
        key = (record.metadata.partition_id, record.metadata.sequence_number)
        if key[0] is None or key[1] is None:
            continue
        if key in stored_at:
            entries.append(AuditEntry(key[0], key[1], "stored"))
        if key in rejected_at:
            entries.append(AuditEntry(key[0], key[1], "dead_lettered"))
        if key not in stored_at and key not in rejected_at:
            entries.append(AuditEntry(key[0], key[1], "duplicate"))
    return entries


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
