"""Ports of the change feed service: a feed of changed events and where its position is kept.

The order that keeps nothing lost (quix-streams' checkpoint order): read a page,
write its events to the sink, and only then save the position the page returned.
A crash between the write and the save replays that one page, which the sink's
idempotent writes absorb; it never skips one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared.domain.stored import StoredEvent
from shared.exceptions import PermanentError


class ContinuationRejected(PermanentError):
    """The feed refused a saved continuation (e.g. the table was dropped and recreated)."""


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """Where a feed resumes; what each field means belongs to the feed that made it.

    Cosmos change feed: ``start_time`` (fixed for the life of the continuation) and
    ``paging_state`` (the continuation proper; ``None`` = from ``start_time``).
    Portable feed: ``watermark`` (every event enqueued before it has been read,
    give or take the overlap window), ``noted_until`` (ingest's delay notes written
    before it have been taken into account: their re-read is behind the watermark
    or still ahead of it), ``cursor`` (where the next page starts), ``horizon``
    (where this run stops) and ``reread_until`` (the end of the overlap this run
    re-reads: what an earlier run read already); the last three only live within
    one run and are never stored.
    """

    start_time: datetime | None = None
    paging_state: bytes | None = None
    watermark: datetime | None = None
    cursor: datetime | None = None
    horizon: datetime | None = None
    noted_until: datetime | None = None
    reread_until: datetime | None = None

    def same_stored_state(self, other: FeedPosition) -> bool:
        """True when saving ``other`` instead of ``self`` would store nothing new."""
        return (self.start_time, self.paging_state, self.watermark, self.noted_until) == (
            other.start_time,
            other.paging_state,
            other.watermark,
            other.noted_until,
        )


@dataclass(frozen=True, slots=True)
class SavedPosition:
    """A stored position and its compare-and-set version (``0``: nothing stored yet)."""

    position: FeedPosition
    version: int


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One page of changes and the position right after it.

    ``reread`` is the enqueued-time range ``[from, until)`` that an earlier run
    read already and this run reads again (the portable feed's overlap window), or
    ``None`` when the feed never returns an event twice on purpose (Cosmos). The
    events in it are written to the sink again (rows stored late are among them),
    but most of them were counted by that earlier run: the service counts only the
    ones it has not counted itself.
    """

    events: list[StoredEvent] = field(default_factory=list)
    position: FeedPosition = field(default_factory=FeedPosition)
    caught_up: bool = False
    reread: tuple[datetime, datetime] | None = None


class ChangeFeed(Protocol):
    """A source of changed events, read page by page from a position."""

    def initial_position(self, now: datetime) -> FeedPosition:
        """Where to start with nothing stored, or after a rejected continuation: ``now`` minus the lookback."""

    def rewind(self, position: FeedPosition) -> FeedPosition:
        """The position to start a run from, given the stored one.

        The Cosmos feed returns it unchanged (its continuation is exact). The
        portable feed moves the cursor back by the overlap window, to pick up rows
        written after an earlier run read their time range.
        """

    def read_page(self, position: FeedPosition, *, now: datetime, timeout: float) -> FeedPage:
        """The next page after ``position``; never blocks past ``timeout`` seconds.

        An event may appear again after it was read (it changed again, or the
        overlap window re-reads it): consumers must be idempotent. Raises
        ``ContinuationRejected`` when the feed refuses ``position``, and
        ``DependencyUnavailable`` when the store cannot be read.
        """


class FeedStateStore(Protocol):
    """Durable, compare-and-set storage of a feed position, by feed name."""

    def load(self, name: str) -> SavedPosition | None:
        """The stored position, or ``None`` when there is none. Raises ``DependencyUnavailable``."""

    def save(self, name: str, position: FeedPosition, expected_version: int) -> int | None:
        """Store ``position`` if the stored version is still ``expected_version``; return the new version.

        ``None`` means another writer moved the position first (nothing was
        written). Idempotent in effect: a lost race changes nothing, and a repeated
        save of the same position stores the same values. Raises
        ``DependencyUnavailable`` when the outcome is unknown (e.g. a timed-out
        compare-and-set); the caller then stops and the next run reloads.
        """
