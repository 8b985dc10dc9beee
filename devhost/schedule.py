"""Timer schedules as the Functions host reads them: NCRONTAB expressions and TimeSpans.

* Six fields, ``{second} {minute} {hour} {day} {month} {day-of-week}`` (NCRONTAB with
  seconds, what Azure Functions documents); five fields (no seconds) are accepted too,
  as the host's parser accepts them.
* A TimeSpan ``hh:mm:ss`` means "every interval, counted from the last run" (App Service
  plans), read as .NET reads it (:func:`devhost.settings.parse_timespan`): ``25:00:00`` is
  25 days, ``00:75:00`` is refused.
* ``%Setting%`` is resolved before parsing.
* NCRONTAB requires *both* day-of-month and day-of-week to match when both are
  restricted (unlike Vixie cron's "either"): croniter runs with ``day_or=False``.
* Only what NCrontab parses is accepted (``CrontabFieldImpl``): numbers, ``*``, ranges,
  steps and lists, month and day names (any prefix of the English name, as NCrontab
  matches them), day-of-week 0-6. croniter's extensions (``L``, ``W``, ``#``, ``?``,
  ``H``, day-of-week 7) are refused, as the host refuses them. croniter then computes
  the occurrences of the expression written with numbers only.
* As NCrontab reads them (``CrontabField.Accumulate``), a reversed range has its ends
  swapped (``5-1`` is ``1-5``, ``Sat-Sun`` is every day) and a step of 0 is a step of 1;
  :attr:`Schedule.warnings` says so.
* An expression whose days never come (``0 0 0 31 4 *``, April 31) is accepted, as
  NCrontab accepts it, and never fires: NCrontab's ``GetNextOccurrence`` then gives its
  end time, ``DateTime.MaxValue`` (:data:`NEVER` here).
* Times are in UTC unless ``WEBSITE_TIME_ZONE`` or ``TZ`` names an IANA zone. Across daylight saving time the
  occurrences are the host's (the timer extension's ``CronSchedule``): NCrontab counts in wall-clock time, and a
  wall time that is skipped or repeated is read at the zone's standard offset; then, when the clocks fall back, a
  *point-in-time* schedule (seconds, minutes and hours each one value or a list without two consecutive values,
  e.g. ``0 30 1 * * *``) runs once, at the daylight offset, while an *interval* schedule keeps firing through the
  repeated hour (:meth:`Schedule.next_after`).
"""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]  # croniter ships no types: stubs are types-croniter

from devhost.errors import DevHostError
from devhost.settings import parse_timespan

# NCrontab's fields (CrontabFieldImpl): (lowest, highest, names); six-field expressions start with seconds.
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_FIELDS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 59, ()), (0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, _MONTHS), (0, 6, _DAYS))
_ITEM = re.compile(r"(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?")


def _ncrontab_value(text: str, lowest: int, highest: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    else:  # NCrontab takes the first name the text is a prefix of, ignoring case
        value = next((i + lowest for i, n in enumerate(names) if n.startswith(text.lower())), -1)
    if not lowest <= value <= highest:
        raise ValueError(f"{text!r} is not a value between {lowest} and {highest}")
    return value


def ncrontab_fields(expression: str) -> list[frozenset[int]]:
    """The values each field of a five- or six-field expression stands for, as NCrontab parses it (ValueError for
    what it does not parse). Five fields are given seconds ``0``."""
    return _expand(expression)[0]


def _expand(expression: str) -> tuple[list[frozenset[int]], list[str]]:
    """:func:`ncrontab_fields`, and what NCrontab reads otherwise than written (a reversed range, a step of 0)."""
    fields = expression.split(" ")
    fields = ["0", *fields] if len(fields) == 5 else fields
    expanded: list[frozenset[int]] = []
    notes: list[str] = []
    for text, (lowest, highest, names) in zip(fields, _FIELDS, strict=True):
        values: set[int] = set()
        for item in text.split(","):
            match = _ITEM.fullmatch(item)
            if match is None:
                raise ValueError(f"{item!r} is not a crontab field value NCrontab knows")
            star, first, last, step = match.groups()
            low = lowest if star else _ncrontab_value(first, lowest, highest, names)
            high = highest if star or (step and not last) else \
                _ncrontab_value(last, lowest, highest, names) if last else low
            if low > high:  # CrontabField.Accumulate: "if the start is bigger than the end value then swap them over"
                low, high = high, low
                notes.append(f"the range {item!r} is reversed; NCrontab reads it as {low}-{high}")
            every = int(step or 1)
            if every < 1:  # Accumulate: "if (interval < 1) interval = 1"
                every = 1
                notes.append(f"the step in {item!r} is 0; NCrontab reads it as 1")
            values.update(range(low, high + 1, every))
        expanded.append(frozenset(values))
    return expanded, notes


def _numeric(fields: list[frozenset[int]]) -> str:
    """An expression croniter reads as NCrontab reads the original: numbers only, ``*`` for a whole field."""
    return " ".join("*" if len(values) == highest - lowest + 1 else ",".join(map(str, sorted(values)))
                    for values, (lowest, highest, _) in zip(fields, _FIELDS, strict=True))


NEVER = datetime.max.replace(tzinfo=UTC)
"""The next occurrence of a schedule that never occurs: NCrontab's ``GetNextOccurrence`` gives its end time,
``DateTime.MaxValue``, and the host's timer never fires."""


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
        if " " not in text:  # not cron: the host tries TimeSpan.TryParse next (TimerSchedule.Create)
            try:
                interval = parse_timespan(text)
            except DevHostError as exc:
                raise DevHostError(f"timer schedule {expression!r} is neither an NCRONTAB expression nor a TimeSpan: "
                                   f"{exc}") from exc
            if interval <= timedelta(0):
                raise DevHostError(f"timer schedule {expression!r}: the interval must be positive")
            return cls(text, zone, interval)
        fields = text.split(" ")
        if len(fields) not in (5, 6):
            raise DevHostError(
                f"timer schedule {expression!r} has {len(fields)} fields; NCRONTAB needs 6 "
                "({second} {minute} {hour} {day} {month} {day-of-week}) or 5 (no seconds)"
            )
        try:
            ncrontab_fields(text)
        except ValueError as exc:
            raise DevHostError(f"timer schedule {expression!r} is not a valid NCRONTAB expression: {exc}") from exc
        return cls(text, zone)

    @cached_property
    def fields(self) -> list[frozenset[int]]:
        """The six fields' values (NCrontab); for a cron schedule only."""
        return ncrontab_fields(self.expression)

    @cached_property
    def warnings(self) -> tuple[str, ...]:
        """What the expression does otherwise than it seems to: a range or step NCrontab reads otherwise than
        written, or days that never come."""
        if self.interval is not None:
            return ()
        notes = _expand(self.expression)[1]
        if self.never_occurs:
            notes.append("no month it names has the days it names, so it never fires (as in the host)")
        return tuple(notes)

    @cached_property
    def never_occurs(self) -> bool:
        """Whether no date has the months and days the expression names (``0 0 0 31 4 *``: April 31). Any date that
        exists falls on every day of the week in some year (February 29 too), so the day of the week cannot make a
        schedule never occur."""
        if self.interval is not None:
            return False
        days, months = self.fields[3], self.fields[4]
        return all(day > calendar.monthrange(2000, month)[1] for month in months for day in days)  # 2000: a leap year

    def next_after(self, moment: datetime) -> datetime:
        """The next occurrence after ``moment`` (aware), in UTC, as the host's ``CronSchedule`` finds it;
        :data:`NEVER` for a schedule that never occurs."""
        if moment.tzinfo is None:
            raise ValueError("moment must be timezone-aware")
        if self.interval is not None:
            return (moment + self.interval).astimezone(UTC)
        if self.never_occurs:
            return NEVER
        now = moment.astimezone(self.zone)
        wall = self._wall_next(_wall(now))
        following = _at_standard_offset(wall, self.zone)
        if not (_repeated(_wall(now), self.zone) or _repeated(wall, self.zone)):
            return following
        # The clocks fall back tonight (or did, and the hour repeats now): the host's TryAdjustAmbiguousTime.
        shift = _offset(following.astimezone(self.zone)) - _offset(now)
        if self.is_interval:  # keep firing through the repeated hour, on the offset the clock is on
            return following + shift
        if not _repeated(wall, self.zone):  # the repeated hour is behind: the next day's time stands
            return following
        if shift:  # the first of the two: at the daylight offset
            return following + shift
        # The second of the two, when the first has passed (the host assumes it ran then): the next after the hour.
        while _repeated(wall, self.zone):
            wall = self._wall_next(wall)
        return _at_standard_offset(wall, self.zone)

    @cached_property
    def is_interval(self) -> bool:
        """Whether the timer extension counts this cron schedule as an interval (``CronSchedule.IsInterval``): its
        seconds, minutes or hours field, as NCrontab writes it back expanded, has ``*`` or a range, i.e. is whole or
        holds two consecutive values. A point-in-time schedule runs once when a wall time repeats."""
        return any(len(values) == highest - lowest + 1 or any(value + 1 in values for value in values)
                   for values, (lowest, highest, _) in zip(self.fields[:3], _FIELDS, strict=False))

    def _wall_next(self, wall: datetime) -> datetime:
        """The next occurrence strictly after a wall-clock time, in wall-clock time (as NCrontab counts)."""
        following: datetime = self._cron.get_next(datetime, start_time=wall)
        return following

    @cached_property
    def _cron(self) -> croniter:
        """The expression, expanded once: building a croniter costs about 270 us, a ``get_next`` from a given
        start about 17 (the dev host asks at every tick). Only the event loop uses a schedule."""
        return croniter(_numeric(self.fields), day_or=False, second_at_beginning=True)

    def period(self, now: datetime) -> timedelta:
        """The gap between the next two occurrences."""
        first = self.next_after(now)
        return self.next_after(first) - first


def _wall(moment: datetime) -> datetime:
    """The wall-clock time of an aware moment, naive."""
    return moment.replace(tzinfo=None, fold=0)


def _offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    assert offset is not None
    return offset


def _offsets(wall: datetime, zone: tzinfo) -> tuple[timedelta, timedelta]:
    """The zone's offsets for a wall time before and after a transition at it (equal when there is none)."""
    return _offset(wall.replace(tzinfo=zone, fold=0)), _offset(wall.replace(tzinfo=zone, fold=1))


def _repeated(wall: datetime, zone: tzinfo) -> bool:
    """Whether the wall time happens twice (the clocks fall back over it: .NET's IsAmbiguousTime)."""
    before, after = _offsets(wall, zone)
    return before > after


def _at_standard_offset(wall: datetime, zone: tzinfo) -> datetime:
    """The moment, in UTC, a wall time stands for as .NET reads a local time (``new DateTimeOffset(local)``): a
    repeated or skipped wall time at the zone's standard offset, the smaller of its two."""
    return (wall - min(_offsets(wall, zone))).replace(tzinfo=UTC)


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
