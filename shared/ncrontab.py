"""NCRONTAB expressions as the Functions host's timer reads them, checked at start-up.

A small, strict reading of NCrontab's grammar (``CrontabFieldImpl``): five or six fields
(``{second} {minute} {hour} {day} {month} {day-of-week}``, five without seconds), each a
list of ``*``, a number or a name, a range ``a-b``, and a step ``/n``; month and day names
are any prefix of the English name, day-of-week is 0-6. croniter's extensions (``L``,
``W``, ``#``, ``?``, ``H``, day-of-week 7) are refused, as the host refuses them (its timer
function then does not load). The dev host's parser (``devhost.schedule``) reads the same
grammar; a test keeps the two in step. Neither the product nor this module uses croniter.
"""

from __future__ import annotations

import calendar
import re

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
# (name, lowest, highest, names) of the six fields.
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DAYS))
_ITEM = re.compile(r"(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?")


def _value(text: str, lowest: int, highest: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    else:  # NCrontab takes the first name the text is a prefix of, ignoring case
        value = next((i + lowest for i, name in enumerate(names) if name.startswith(text.lower())), -1)
    if not lowest <= value <= highest:
        raise ValueError(f"{text!r} is not a value between {lowest} and {highest}")
    return value


def fields(expression: str) -> list[frozenset[int]]:
    """The values each of the six fields stands for (five fields are given seconds ``0``); ``ValueError`` saying
    why for an expression NCrontab does not parse."""
    parts = expression.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"has {len(parts)} fields; NCRONTAB needs 6 ({{second}} {{minute}} {{hour}} {{day}} "
                         "{month} {day-of-week}) or 5 (no seconds)")
    parts = ["0", *parts] if len(parts) == 5 else parts
    expanded: list[frozenset[int]] = []
    for text, (field, lowest, highest, names) in zip(parts, _FIELDS, strict=True):
        values: set[int] = set()
        for item in text.split(","):
            match = _ITEM.fullmatch(item)
            if match is None:
                raise ValueError(f"{item!r} is not a {field} NCRONTAB knows (numbers, names, '*', ranges a-b, "
                                 "steps /n and lists; not L, W, #, ? or H)")
            star, first, last, step = match.groups()
            try:
                low = lowest if star else _value(first, lowest, highest, names)
                high = highest if star or (step and not last) else _value(last, lowest, highest, names) if last \
                    else low
            except ValueError as exc:
                raise ValueError(f"{field} {exc}") from None
            low, high = min(low, high), max(low, high)  # NCrontab swaps a reversed range's ends
            values.update(range(low, high + 1, max(int(step or 1), 1)))  # and reads a step of 0 as 1
        expanded.append(frozenset(values))
    return expanded


def never_occurs(expanded: list[frozenset[int]]) -> bool:
    """Whether no date has the days and months the expression names (``0 0 0 30 2 *``: February 30): NCrontab
    accepts it and the timer never fires. Any date that exists falls on every day of the week in some year, so the
    day of the week cannot make a schedule never occur."""
    days, months = expanded[3], expanded[4]
    return all(day > calendar.monthrange(2000, month)[1] for month in months for day in days)  # 2000: a leap year


def problem(expression: str) -> str | None:
    """Why the host's timer would not run ``expression``, or ``None`` for a schedule that fires."""
    try:
        expanded = fields(expression)
    except ValueError as exc:
        return f"is not an NCRONTAB expression the Functions host accepts: {exc}"
    if never_occurs(expanded):
        return ("never fires: no month it names has the day it names (e.g. February 30, April 31), so the timer "
                "would never run")
    return None
