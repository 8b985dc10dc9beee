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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.domain.events import Event, EventMetadata, Limits, Parsed, RawRecord, parse_records
from shared.exceptions import TransientError
from shared.lazy import Once
from shared.ports.ingest import DeadLetterSink, EventStore
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


class IngestService:
    def __init__(self, store: EventStore, dead_letters: DeadLetterSink, limits: Limits, *,
                 metrics: Metrics = NO_METRICS) -> None:
        self._store = store
        self._dead_letters = dead_letters
        self._limits = limits
        self._metrics = metrics

    def handle(
        self, records: Sequence[RawRecord], *, final_attempt: bool = True, now: datetime | None = None
    ) -> IngestResult:
        """Store or dead-letter every record (see the module docstring for the order)."""
        began = time.perf_counter()
        parsed = parse_records(records, limits=self._limits, now=now)
        if parsed.errs:
            self._dead_letters.put_rejected(parsed.errs)
        try:
            self._store.write(parsed.oks)
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
            self._record(records, parsed, began, store_failed=len(parsed.oks))
            return IngestResult(len(records), 0, len(parsed.errs), parsed.duplicates, batch_dead_lettered=True)
        self._record(records, parsed, began)
        return IngestResult(len(records), len(parsed.oks), len(parsed.errs), parsed.duplicates)

    def _record(self, records: Sequence[RawRecord], parsed: Parsed, began: float, *, store_failed: int = 0) -> None:
        """The batch's figures, once, after every record is stored or dead-lettered (the oldest is the first)."""
        first = records[0].metadata if records else None
        self._metrics.ingest_batch(first.partition_id if first else None, stored=() if store_failed else parsed.oks,
                                   duplicates=parsed.duplicates, rejected=parsed.errs, store_failed=store_failed,
                                   seconds=time.perf_counter() - began,
                                   oldest_enqueued=first.enqueued_time if first else None)


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
