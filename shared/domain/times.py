"""Time in Sluice: one epoch, UTC everywhere, milliseconds as Cassandra keeps them.

Every moment Sluice handles is an aware UTC ``datetime``; a naive one (as the
CQL driver returns timestamps) means UTC. Cassandra keeps a ``timestamp`` as whole
milliseconds since the epoch, so :func:`to_ms` / :func:`from_ms` are exact, and the
public JSON writes moments as RFC 3339 UTC with milliseconds (:func:`rfc3339`).
:func:`floor` is the start of the fixed span holding a moment (a time bucket, an
enrichment window), in exact integer arithmetic: ``timedelta`` is integral, a
float of seconds is not.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import overload

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
_MILLISECOND = timedelta(milliseconds=1)


@overload
def utc(moment: datetime) -> datetime: ...


@overload
def utc(moment: None) -> None: ...


def utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC (a naive one is taken as UTC); ``None`` stays ``None``."""
    if moment is None or moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def to_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch (towards the past); a naive moment is UTC, as the CQL driver reads it."""
    aware = moment.tzinfo is UTC or moment.utcoffset() is not None
    return (moment - (EPOCH if aware else _NAIVE_EPOCH)) // _MILLISECOND


def to_ms_ceil(moment: datetime) -> int:
    """Whole milliseconds since the epoch, rounded towards the future: the first stored event time (whole
    milliseconds) at or after ``moment``, for a bound that must not take the millisecond before it."""
    return to_ms(moment) + (1 if moment.microsecond % 1000 else 0)


def from_ms(millis: int) -> datetime:
    """The UTC moment ``millis`` milliseconds after the epoch."""
    return EPOCH + timedelta(milliseconds=millis)


def rfc3339(moment: datetime) -> str:
    """``2026-11-23T09:30:25.123Z``: UTC, millisecond precision (a naive moment is UTC)."""
    return utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def leap_second(text: str) -> str:
    """An RFC 3339 time at second 60 (``text[17:19] == "60"``) as the last millisecond before it
    (``23:59:59.999``), whatever its fraction: ``datetime`` has no second 60, and stored times are milliseconds.

    RFC 3339 allows second 60 only as a leap second: 23:59:60 in UTC, whatever the offset it is written with.
    Anything else at second 60 raises ``ValueError``. Ingest reads an event's time this way and the HTTP lookups a
    query's, so an event sent at a leap second is at or after a ``since`` of that leap second, and at or before an
    ``at`` or ``to`` of it.
    """
    tail = text[19:].lstrip(".0123456789")
    offset = 0 if tail in ("Z", "z") else (1 if tail[0] == "+" else -1) * (int(tail[1:3]) * 60 + int(tail[4:6]))
    if (int(text[11:13]) * 60 + int(text[14:16]) - offset) % 1440 != 23 * 60 + 59:
        raise ValueError("has second 60, which is only a leap second: 23:59:60 UTC")
    return f"{text[:17]}59.999{tail}"


def floor(moment: datetime, seconds: int) -> datetime:
    """The start (UTC) of the ``seconds``-wide span, counted from the epoch, that holds ``moment``."""
    aware = utc(moment)
    return aware - (aware - EPOCH) % _span(seconds)


@cache
def _span(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def day_of(moment: datetime) -> date:
    """The UTC day of ``moment``."""
    return utc(moment).date()
