"""An event as Cassandra stores it: the value the change feed, the cache and the lookups pass around.

Its JSON document (:meth:`StoredEvent.to_json`) is the public representation of an
event (``docs/api.md``) and also what Redis holds, so a cache hit is served
without re-encoding. The encoding is canonical (sorted keys, no spaces, times as
RFC 3339 UTC with milliseconds), so writing the same event twice writes the same
bytes: Redis writes stay idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from shared.domain.times import rfc3339, to_ms


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event row (``events_by_id``, ``events_by_device``, ``critical_events_by_device`` ...).

    ``critical`` is the flag the event store recorded at ingest (with the same
    rules from settings); ``None`` when the row has none, and the reader of the
    event then applies the rules itself.
    """

    event_id: uuid.UUID
    device_id: str
    event_time: datetime
    event_type: str
    severity: str
    critical: bool | None = None
    measurements: Mapping[str, float] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = 1
    enqueued_time: datetime | None = None

    @property
    def event_time_ms(self) -> int:
        return to_ms(self.event_time)

    def newer_than(self, other: StoredEvent) -> bool:
        """Event time decides; equal times fall back to the event id, so every writer picks the same winner."""
        mine, theirs = self.event_time_ms, other.event_time_ms
        return mine > theirs or (mine == theirs and str(self.event_id) > str(other.event_id))

    def supersedes(self, other: StoredEvent) -> bool:
        """True when this event, not ``other``, is the latest state of their device: the newer one
        (:meth:`newer_than`); of two copies of one event (an event id re-sent: same time, same id), the one enqueued
        later, at the same enqueued time the greater document. The rule Redis keeps copies of one event by
        (``lua/_newer.lua``), so the choice never depends on the order the copies come in."""
        if self.newer_than(other):
            return True
        if other.newer_than(self):
            return False
        return self.kept_over(other)

    def kept_over(self, other: StoredEvent) -> bool:
        """Of two copies of one event id (a correction re-sent under it, maybe with another event time), True when
        this one is the copy kept: the one enqueued later, at the same enqueued time the greater document. The rule
        of ``lua/_newer.lua``, so a list read from Cassandra keeps the copy Redis keeps."""
        return (self.enqueued_text(), self.to_json()) > (other.enqueued_text(), other.to_json())

    def enqueued_text(self) -> str:
        """The enqueued time as the document carries it (milliseconds), which is what Redis compares."""
        return rfc3339(self.enqueued_time) if self.enqueued_time else ""

    def to_document(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id),
            "device_id": self.device_id,
            "event_type": self.event_type,
            "timestamp": rfc3339(self.event_time),
            "severity": self.severity,
            "critical": bool(self.critical),
            "measurements": dict(self.measurements),
            "attributes": dict(self.attributes),
            "schema_version": self.schema_version,
            "enqueued_time": rfc3339(self.enqueued_time) if self.enqueued_time else None,
        }

    def to_json(self) -> str:
        """The canonical JSON document (same event, same text): compact, keys sorted, UTF-8 unescaped.

        orjson encodes it about ten times faster than ``json.dumps`` (the change feed writes one per
        device per page); the texts are the same but for exponents, ``1e16`` where json wrote ``1e+16``.
        """
        return orjson.dumps(self.to_document(), option=orjson.OPT_SORT_KEYS).decode()


def one_copy_each(events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """``events`` with one copy of each event id, the one kept (:meth:`StoredEvent.kept_over`), in its own place.

    A table keyed by event time and event id (``critical_events_by_device``) holds a correction re-sent under its
    id with another event time beside the copy it corrects; Redis keeps one member per id."""
    kept: dict[uuid.UUID, StoredEvent] = {}
    for event in events:
        other = kept.get(event.event_id)
        if other is None or event.kept_over(other):
            kept[event.event_id] = event
    if len(kept) == len(events):
        return list(events)
    return [event for event in events if kept[event.event_id] is event]


def current_copies(rows: Sequence[StoredEvent], stored: Mapping[uuid.UUID, StoredEvent]) -> list[StoredEvent]:
    """``rows`` (of ``critical_events_by_device``) without those superseded by the event's copy in ``events_by_id``
    (``stored``): a row that copy is kept over (:meth:`StoredEvent.kept_over`: enqueued later) is a copy the event
    was corrected from, at another event time or into one no longer critical. A row is kept when it is that copy,
    is kept over it, or its id is not there. The lookups' misses and the Redis rebuild both filter with it."""
    kept = []
    for row in rows:
        current = stored.get(row.event_id)
        if current is None or not current.kept_over(row):
            kept.append(row)
    return kept
