"""A device's event history from ``events_by_device``, newest first, in pages with an opaque continuation token.

The table is partitioned by ``(device_id, day)``. A page walks day partitions from
the newest day of the range backwards, reading at most ``MAX_DAYS_PER_PAGE`` of
them, so a request costs a bounded number of reads however long the range is;
when the budget runs out before the page is full, the token points at the next
day to read (a page may then hold fewer events than ``limit``, even none, with a
token: keep following it until it is ``null``).

The token is the position after the last row returned (its day, event time and
event id, not a driver paging state), bound to the device and signed with
HMAC-SHA256. A token that was modified, or that belongs to another device, is
``BadToken`` (HTTP 400) before any read: Cassandra never sees it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.times import day_of, from_ms
from shared.exceptions import PermanentError
from shared.ports.dashboard import DeviceHistory, HistoryCursor

MAX_DAYS_PER_PAGE = 31
_SIGNATURE_BYTES = 16


class BadToken(PermanentError):
    """A continuation token that is not one this deployment issued for this device (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    events: list[dict[str, Any]]
    next_token: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Encodes and checks history tokens: ``<payload>.<signature>``, both base64url."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a history token key needs at least 16 bytes")
        self._key = key

    def _sign(self, device_id: str, payload: bytes) -> bytes:
        message = device_id.encode() + b"\x00" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(self, device_id: str, cursor: HistoryCursor) -> str:
        after = [cursor.after[0], str(cursor.after[1])] if cursor.after else None
        payload = json.dumps([cursor.day.toordinal(), after], separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(device_id, payload))}"

    def decode(self, device_id: str, token: str) -> HistoryCursor:
        try:
            head, _, tail = token.partition(".")
            payload, signature = _unb64(head), _unb64(tail)
        except (binascii.Error, ValueError):
            raise BadToken("the page token is malformed") from None
        # base64 ignores the unused bits of a last character: only the text encode() gives is the token
        if _b64(payload) != head or _b64(signature) != tail or not hmac.compare_digest(
                signature, self._sign(device_id, payload)):
            raise BadToken("the page token was modified or belongs to another device")
        return _cursor(payload)


def _cursor(payload: bytes) -> HistoryCursor:
    """The cursor of a signed payload, ``[day ordinal, null or [event time ms, "event id"]]``, checked shape by
    shape: a signature proves only who signed it (a deployment without a configured key derives its key from
    settings others may know), so a payload of any other shape is ``BadToken``, never another exception."""
    try:
        decoded = json.loads(payload)
    except ValueError:  # also a UnicodeDecodeError
        raise BadToken("the page token is malformed: its payload is not JSON") from None
    if not isinstance(decoded, list) or len(decoded) != 2:
        raise BadToken("the page token is malformed: its payload is not a list of a day and a position")
    ordinal, after = decoded
    if not _is_int(ordinal):
        raise BadToken("the page token is malformed: its day is not an integer")
    try:
        day = date.fromordinal(ordinal)
    except (ValueError, OverflowError):
        raise BadToken("the page token is malformed: its day is out of range") from None
    if after is None:
        return HistoryCursor(day, None)
    if not isinstance(after, list) or len(after) != 2:
        raise BadToken("the page token is malformed: its position is not null or a list of a time and an event id")
    millis, event_id = after
    if not _is_int(millis):
        raise BadToken("the page token is malformed: its position's time is not an integer")
    if not isinstance(event_id, str):
        raise BadToken("the page token is malformed: its position's event id is not a string")
    try:
        parsed = uuid.UUID(event_id)
        on_day = day_of(from_ms(millis)) == day
    except (ValueError, OverflowError):
        raise BadToken("the page token is malformed: its position's event id or time is out of range") from None
    if not on_day:
        raise BadToken("the page token is malformed: its position is not on its day")
    return HistoryCursor(day, (millis, parsed))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class HistoryService:
    """Pages of one device's events in ``[start, end]``, newest first."""

    def __init__(self, history: DeviceHistory, signer: TokenSigner, *, rules: Sequence[MeasurementRule] = ()) -> None:
        self._history = history
        self._signer = signer
        self._critical = Criticality(rules)  # decides the flag of a row written without it, as the change feed does

    def page(self, device_id: str, *, start: datetime, end: datetime, limit: int,
             token: str | None = None) -> HistoryPage:
        cursor = self._signer.decode(device_id, token) if token else HistoryCursor(day_of(end), None)
        first_day = day_of(start)
        day, after = cursor.day, cursor.after
        events: list[dict[str, Any]] = []
        for _ in range(MAX_DAYS_PER_PAGE):
            if day < first_day:
                return HistoryPage(events, None)
            rows = self._history.page(device_id, day, start=start, end=end, after=after, limit=limit - len(events))
            decided = self._critical.decided
            events += [decided(row).to_document() for row in rows]
            if len(events) >= limit:
                last = rows[-1]
                return HistoryPage(events, self._signer.encode(device_id, HistoryCursor(
                    day, (last.event_time_ms, last.event_id))))
            if day == date.min:
                return HistoryPage(events, None)
            day, after = day - timedelta(days=1), None
        more = day >= first_day
        return HistoryPage(events, self._signer.encode(device_id, HistoryCursor(day, None)) if more else None)


def derived_key(*parts: str) -> bytes:
    """A per-deployment key from values only this deployment's settings hold (used when no key is configured)."""
    return hashlib.sha256("\x00".join(("sluice-history-token", *parts)).encode()).digest()

