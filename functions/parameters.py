"""HTTP parameter parsing shared by the HTTP triggers: each parser names the parameter it rejects.

A bad value raises :class:`BadParameter` (HTTP 400, the body names ``parameter``);
the parsers return the typed value the services take.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from shared.exceptions import PermanentError
from shared.services.lookups import leap_second

MAX_LIMIT = 1000


class BadParameter(PermanentError):
    """A request parameter is invalid; ``parameter`` names it (HTTP 400)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.detail = message


def logged_path(url: str) -> str:
    """A request URL as it may be logged: its path only. The query can hold the function key (``?code=``)."""
    return urlsplit(url).path


# docs/events.md: a device id is 1-128 characters of A-Z a-z 0-9 . _ : -
_DEVICE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# The device ids "." and ".." as a browser must send them in a path (docs/api.md): encoded twice, "%252E", which the
# host decodes once. A browser removes the segments ".", "..", "%2E" and "%2E%2E" as dot-segments (WHATWG URL).
_DOT_SEGMENTS = {"%2e": ".", "%2e%2e": ".."}
# docs/api.md, openapi.json (format: uuid): a UUID in its 8-4-4-4-12 form, either case, as the event contract writes
# it. uuid.UUID() alone would also take braces, "urn:uuid:" and hyphens anywhere or nowhere.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LIMIT = re.compile(r"[0-9]{1,9}")
# RFC 3339 section 5.6: an offset's hours are 00-23 and its minutes 00-59 (datetime.fromisoformat would take +01:60
# as +02:00, another instant than the one written); the date and the clock are checked by fromisoformat. Digits are
# [0-9], never \d: RFC 3339's DIGIT is ASCII, and \d also matches other scripts' digits (U+0667, U+FF18), which
# fromisoformat refuses but the fraction's digits past the microseconds only meet here. The fraction has any
# number of digits (time-secfrac = "." 1*DIGIT).
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_MICROSECOND = timedelta(microseconds=1)


def parse_device_id(value: str | None, parameter: str = "device_id") -> str:
    """A device id from a route. "%2E" and "%2E%2E" stand for "." and "..", the only ids a browser cannot put in a
    path segment as they are: "%" is in no device id, so these can mean nothing else."""
    if value is not None:
        value = _DOT_SEGMENTS.get(value.lower(), value)
    if value is None or not _DEVICE_ID.fullmatch(value):
        raise BadParameter(parameter, f"must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {value!r}")
    return value


def parse_event_id(value: str | None) -> uuid.UUID:
    if value is None or not _UUID.fullmatch(value):
        raise BadParameter("event_id", f"must be a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427, got {value!r}")
    return uuid.UUID(value)


def parse_limit(value: str | None, default: int, parameter: str = "limit") -> int:
    if value is None or value == "":
        return default
    if not _LIMIT.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise BadParameter(parameter, f"must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return int(value)


def parse_since(value: str | None, parameter: str = "since") -> datetime | None:
    """A lower bound (``since``, ``from``): an RFC 3339 time with an offset, in UTC (``None`` when absent).

    Python keeps microseconds: digits beyond them round the bound *up* to the next microsecond, so an event
    before the time written (even by a nanosecond) is never at or after the bound."""
    return _parse_time(value, parameter, ceil=True)


def parse_until(value: str | None, parameter: str) -> datetime | None:
    """An upper bound (``at``, ``to``): as :func:`parse_since`, but digits beyond microseconds are cut (towards the
    past), so an event after the time written is never at or before the bound."""
    return _parse_time(value, parameter, ceil=False)


def _parse_time(value: str | None, parameter: str, *, ceil: bool) -> datetime | None:
    if value is None or value == "":
        return None
    problem = f"must be an RFC 3339 time with an offset, e.g. 2026-11-23T09:30:00Z; got {value!r}"
    match = _RFC3339.fullmatch(value)
    if match is not None and match[2].endswith(":60"):  # Python has no second 60: read it as ingest does
        try:
            match = _RFC3339.fullmatch(leap_second(value))
        except ValueError as exc:
            raise BadParameter(parameter, f"{exc}; got {value!r}") from None
    if match is None:
        raise BadParameter(parameter, problem)
    day, clock, fraction, offset = match.groups()
    micros = f".{fraction[:6].ljust(6, '0')}" if fraction else ""  # Python parses at most microseconds
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{micros}{offset.upper()}")
    except ValueError:  # e.g. 2026-02-30
        raise BadParameter(parameter, problem) from None
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 or 9999-12-31T23:59:59-01:00: outside the years 1-9999 in UTC
        raise BadParameter(parameter, f"must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z; got {value!r}"
                           ) from None
    if ceil and fraction and fraction[6:].strip("0"):
        # Past the last microsecond of 9999 the bound stays there: no stored time (whole milliseconds) lies between.
        moment = moment + _MICROSECOND if moment < _LAST else moment
    return moment


_LAST = datetime.max.replace(tzinfo=UTC)
