"""Argument types the commands share: times, counts and ids, refused by argparse with a message naming the value."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime


def parse_time(text: str) -> datetime:
    """RFC 3339 / ISO 8601 with an offset (``Z`` allowed); a bare date means midnight UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-23T10:00:00Z)") from None
    if moment.tzinfo is None:
        if len(text) > 10:
            raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (add Z or +hh:mm)")
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise argparse.ArgumentTypeError(f"{text!r} is outside the years 1-9999 in UTC") from None


def past_time(text: str) -> datetime:
    """:func:`parse_time`, not after now: a start in the future selects nothing, and a tool would report on nothing."""
    moment = parse_time(text)
    if moment > datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{text!r} is in the future")
    return moment


def device_id(text: str) -> str:
    """A device id as the event contract and the HTTP API take it (1-128 of ``A-Z a-z 0-9 . _ : -``): any other
    is no device of the log, and an empty one would reach the store as a bad request."""
    from functions.parameters import BadParameter, parse_device_id

    try:
        return parse_device_id(text)
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}" if least else
                                         f"{text!r} must not be negative")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def nonnegative_int(text: str) -> int:
    return _whole(text, 0)


def port(text: str) -> int:
    """A TCP port, 0-65535; 0 lets the system pick a free one."""
    value = _whole(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is no TCP port (0-65535; 0 picks a free one)")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):  # float() takes "nan" and "inf": neither is a rate or a share
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (a rate, a duration)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of at least 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def ratio(text: str) -> float:
    """A share between 0 and 1, inclusive."""
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value
