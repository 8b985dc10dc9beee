"""Ports of the enrichment service: the window reader (Cassandra), the reference source and the store (PostgreSQL).

The order that keeps the effect exactly-once: a window's rows, its ledger row and
the watermark move in ONE store transaction (:meth:`EnrichmentStore.write_window`),
so the watermark never passes a window whose rows are not durably written, and
rewriting a window with the same inputs changes no row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from shared.domain.enrichment import EnrichedWindow, ReferenceData, Window, WindowEnrichment
from shared.domain.rules import MeasurementRule
from shared.domain.stored import StoredEvent

Reason = Literal["scheduled", "late", "backfill"]


@dataclass(frozen=True, slots=True)
class Arrival:
    """One event as ``events_by_arrival_bucket`` lists it: enough to find its window and whether it is enriched."""

    event_id: uuid.UUID
    event_time: datetime
    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class EnrichmentState:
    """``watermark``: every window ending at or before it is enriched.
    ``late_scan_until``: arrivals before it have been checked for late events."""

    watermark: datetime
    late_scan_until: datetime


@dataclass(frozen=True, slots=True)
class WindowInput:
    """What the store needs to enrich one window as it reads it.

    ``read()`` starts a read of every event of the window, chunk by chunk; the
    store may call it again (and start a new :meth:`enrichment`) when it must
    write the window another way. ``enrichment()`` is a fresh pass over it.
    """

    window: Window
    read: Callable[[], Iterator[Sequence[StoredEvent]]]
    reference: ReferenceData
    rules: Sequence[MeasurementRule] = ()

    def enrichment(self) -> WindowEnrichment:
        return WindowEnrichment(self.window, self.reference, self.rules)


class WindowReader(Protocol):
    def read(self, start: datetime, end: datetime) -> list[StoredEvent]:
        """Every event with ``start <= event_time < end`` (all buckets, all shards), in no particular order.

        Raises ``DependencyUnavailable`` when the store cannot be read completely:
        a partial window is never returned.
        """

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        """:meth:`read`, page by page as the pages arrive; only the pages in flight are held.

        Raises ``DependencyUnavailable`` at the page that cannot be read: a caller
        must then discard what it took of the window.
        """

    def arrivals(self, start: datetime, end: datetime, *, event_time_before: datetime | None = None
                 ) -> Iterator[Arrival]:
        """Every event Event Hubs enqueued in ``[start, end)``, paged lazily. Raises ``DependencyUnavailable``.

        With ``event_time_before``, only those whose event time is before it: the late scan asks for the
        events of enriched windows only (before the watermark), and most arrivals are of windows still
        open, so the reader drops them before building anything.
        """

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        """The oldest enqueued time of the batches ingest noted as delayed (``DelayLog``) in ``[start, end)``.

        ``None`` when there were none. Raises ``DependencyUnavailable``.
        """


class ReferenceSource(Protocol):
    def load(self) -> ReferenceData:
        """The current devices and sites (called once per run).

        Raises ``DependencyUnavailable`` or ``PermanentError``.
        """


class EnrichmentStore(Protocol):
    def load_state(self, initial: datetime) -> EnrichmentState:
        """The stored positions; the first call stores ``initial`` for both and returns it."""

    def write_window(self, source: WindowInput, reason: Reason, *, advance_watermark: bool) -> EnrichedWindow:
        """Read and enrich the window, upserting its events as they are read, then its figures, its ledger row and
        (when asked) the watermark, atomically; return the figures.

        The rows are those a :meth:`WindowInput.enrichment` pass accepts, each id's
        row replaced by the winner the pass settles at the end, if that differs. The watermark moves to the window's end
        only when it is within the window (contiguous progress). Idempotent: the
        same input leaves every data row unchanged. Raises ``TransientError`` when
        PostgreSQL fails, or when the window overlaps an enriched window of other
        bounds (enriched with another width meanwhile: plan again), and what
        ``source.read`` raises; nothing of the window is then written.
        """

    def stale_windows(self, arrivals: Sequence[Arrival]) -> list[tuple[Arrival, Window]]:
        """The arrivals whose event time lies in an enriched window (a ledger row, whatever width it was enriched
        with) and that a recompute of that window would account for while its enriched rows do not: the id has no
        enriched row in that window (nor one with a later event time anywhere, which the arrival would lose to), or
        an older copy of it there; each with the window as the ledger holds it. Every arrival is checked on its own:
        the rows of an id re-sent with another timestamp each name their window."""

    def enriched_windows(self, start: datetime, end: datetime) -> list[Window]:
        """The enriched windows (ledger rows) overlapping ``[start, end)``, oldest first, as the ledger holds them."""

    def windows_to_recompute(self) -> list[Window]:
        """Enriched windows an event has moved out of since (its id re-sent with a later event time, in another
        window, whose write marked them): their figures still count it until they are computed again."""

    def save_late_scan(self, until: datetime) -> None:
        """Record that arrivals before ``until`` were checked (never moves it backwards)."""
