"""Timer schedules as the Functions host reads them: NCRONTAB expressions and TimeSpans.

* Six fields, ``{second} {minute} {hour} {day} {month} {day-of-week}`` (NCRONTAB with
  seconds, what Azure Functions documents); five fields (no seconds) are accepted too,
  as the host's parser accepts them.
* A TimeSpan ``hh:mm:ss`` (``[d.]hh:mm:ss``) means "every interval, counted from the
  last run" (App Service plans).
* ``%Setting%`` is resolved before parsing.
* NCRONTAB requires *both* day-of-month and day-of-week to match when both are
  restricted (unlike Vixie cron's "either"): croniter runs with ``day_or=False``.
* Times are in UTC unless ``WEBSITE_TIME_ZONE`` or ``TZ`` names an IANA zone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]  # croniter ships no types: stubs are types-croniter

from devhost.errors import DevHostError
from devhost.settings import parse_timespan


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; :meth:`next_after` gives the next occurrence strictly after a moment."""

    expression: str
    zone: tzinfo
    interval: timedelta | None = None  # set for TimeSpan schedules

    @classmethod
    def parse(cls, expression: str, zone: tzinfo = UTC) -> Schedule:
        text = " ".join(expression.split())
        if not text:
            raise DevHostError("empty timer schedule")
        if " " not in text and ":" in text:
            interval = parse_timespan(text)
            if interval <= timedelta(0):
                raise DevHostError(f"timer schedule {expression!r}: the interval must be positive")
            return cls(text, zone, interval)
        fields = text.split(" ")
        if len(fields) not in (5, 6):
            raise DevHostError(
                f"timer schedule {expression!r} has {len(fields)} fields; NCRONTAB needs 6 "
                "({second} {minute} {hour} {day} {month} {day-of-week}) or 5 (no seconds)"
            )
        if not croniter.is_valid(text, second_at_beginning=len(fields) == 6):
            raise DevHostError(f"timer schedule {expression!r} is not a valid NCRONTAB expression")
        return cls(text, zone)

    def next_after(self, moment: datetime) -> datetime:
        """The next occurrence after ``moment`` (aware), in UTC."""
        if moment.tzinfo is None:
            raise ValueError("moment must be timezone-aware")
        if self.interval is not None:
            return (moment + self.interval).astimezone(UTC)
        following: datetime = self._cron.get_next(datetime, start_time=moment.astimezone(self.zone))
        return following.astimezone(UTC)

    @cached_property
    def _cron(self) -> croniter:
        """The expression, expanded once: building a croniter costs about 270 us, a ``get_next`` from a given
        start about 17 (the dev host asks at every tick). Only the event loop uses a schedule."""
        return croniter(self.expression, day_or=False, second_at_beginning=len(self.expression.split(" ")) == 6)

    def period(self, now: datetime) -> timedelta:
        """The gap between the next two occurrences (the host's test for "shorter than a minute")."""
        first = self.next_after(now)
        return self.next_after(first) - first


def time_zone(environ: Mapping[str, str] = os.environ) -> tzinfo:
    """``WEBSITE_TIME_ZONE`` (or ``TZ``) as a zone; UTC when neither is set."""
    name = environ.get("WEBSITE_TIME_ZONE") or environ.get("TZ") or ""
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise DevHostError(
            f"time zone {name!r} (WEBSITE_TIME_ZONE/TZ) is not an IANA zone name; Windows zone names "
            "are not supported by the dev host"
        ) from exc
