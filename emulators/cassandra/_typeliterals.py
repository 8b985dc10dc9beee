"""CQL literals -> wire bytes, with Cassandra's coercions (``Constants.Literal.testAssignment``).

What may go where:

* integer literal: tinyint, smallint, int, bigint, varint, decimal, float, double,
  timestamp (milliseconds), date (the raw unsigned value, epoch at 2**31, as
  Cassandra reads an integer date) and time (nanoseconds);
* float literal (``Decimal``, exact text) and NaN/Infinity: float, double,
  decimal (not NaN/Infinity); rounded to the nearest float/double from the
  exact decimal text (ties to even), as Java's ``parseFloat`` does, but a finite
  literal too large for the type is an error rather than Java's Infinity;
* string literal: text, ascii, inet, timestamp, date, time (not uuid or blob,
  which have their own literal forms);
* ``true``/``false``: boolean; ``0x..``: blob; an unquoted uuid: uuid, and
  timeuuid when it is version 1;
* collections element-wise; null is refused inside collections, allowed as a
  tuple component.

Timestamps without a zone are UTC (Cassandra would use the server's zone; the
emulator's zone is UTC). The digits after the seconds are milliseconds, as
Cassandra 4 parses them: ``.5`` is 5 ms and ``.050`` 50 ms (not a decimal
fraction), 0 to 999.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import re
import struct
import uuid
from typing import TYPE_CHECKING

from ._typecodecs import (
    _INT_RANGES,
    DATE_OFFSET,
    EPOCH_ORDINAL,
    NANOS_PER_DAY,
    InvalidValue,
    datetime_millis,
    decimal_bytes,
    inet_bytes,
    varint_bytes,
)
from ._typecollections import join

if TYPE_CHECKING:
    from .types import CqlType

logger = logging.getLogger(__name__)

_I32, _I64, _U32 = struct.Struct(">i"), struct.Struct(">q"), struct.Struct(">I")
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")
_EXACT = decimal.Context(prec=600)  # float32 values and their midpoints have < 200 significant digits


class SetLiteral(tuple[object, ...]):
    """``{a, b}`` as the CQL parser hands it over (elements in written order)."""

    __slots__ = ()


class TupleLiteral(tuple[object, ...]):
    """``(a, b)`` as the CQL parser hands it over."""

    __slots__ = ()


class MapLiteral(tuple[tuple[object, object], ...]):
    """``{k: v}`` as ``(key, value)`` pairs, for keys a ``dict`` cannot hold (list or map literals)."""

    __slots__ = ()


def describe(value: object) -> str:
    """How a literal reads in an error message."""
    if isinstance(value, bool):
        return f"boolean literal {str(value).lower()}"
    if isinstance(value, int):
        return f"integer literal {value}"
    if isinstance(value, decimal.Decimal):
        return f"float literal {value}"
    if isinstance(value, float):
        return f"float literal {'NaN' if math.isnan(value) else ('-' if value < 0 else '') + 'Infinity'}"
    if isinstance(value, str):
        return f"string literal {value!r}"
    if isinstance(value, bytes):
        return f"blob literal 0x{value.hex()}"
    if isinstance(value, uuid.UUID):
        return f"uuid literal {value}"
    if isinstance(value, SetLiteral):
        return "set literal"
    if isinstance(value, TupleLiteral):
        return "tuple literal"
    if isinstance(value, dict | MapLiteral):
        return "map literal"
    if isinstance(value, list):
        return "list literal"
    return f"value {value!r} ({type(value).__name__})"


def _bad(t: CqlType, value: object, why: str = "") -> InvalidValue:
    return InvalidValue(f"invalid {describe(value)} for type {t.cql()}{': ' + why if why else ''}")


def literal_to_bytes(t: CqlType, value: object) -> bytes:
    """Wire bytes of literal ``value`` for type ``t`` (see the module docstring for what is accepted)."""
    kind = t.kind
    if value is None:
        raise InvalidValue(f"null is not a literal value for {t.cql()} (the caller handles null)")
    if kind in ("list", "set", "map", "tuple"):
        return _collection(t, value)
    if isinstance(value, bool):
        if kind == "boolean":
            return b"\x01" if value else b"\x00"
        raise _bad(t, value)
    if isinstance(value, int):
        return _integer(t, value)
    if isinstance(value, decimal.Decimal | float):
        return _floating(t, value)
    if isinstance(value, str):
        return _string(t, value)
    if isinstance(value, bytes) and kind == "blob":
        return value
    if isinstance(value, uuid.UUID) and kind in ("uuid", "timeuuid"):
        if kind == "timeuuid" and value.bytes[6] >> 4 != 1:
            raise _bad(t, value, f"a timeuuid must be a version 1 UUID, this one is version {value.bytes[6] >> 4}")
        return value.bytes
    raise _bad(t, value)


def _integer(t: CqlType, value: int) -> bytes:
    kind = t.kind
    if kind in _INT_RANGES:
        st, bits = _INT_RANGES[kind]
        if not -(1 << bits) <= value < (1 << bits):
            raise _bad(t, value, f"out of range [{-(1 << bits)}, {(1 << bits) - 1}]")
        return st.pack(value)
    if kind == "varint":
        return varint_bytes(value)
    if kind == "decimal":
        return decimal_bytes(t.cql(), decimal.Decimal(value))
    if kind in ("float", "double"):
        return _floating(t, decimal.Decimal(value))
    if kind == "timestamp":
        if not -(1 << 63) <= value < (1 << 63):
            raise _bad(t, value, "out of the 64-bit millisecond range")
        return _I64.pack(value)
    if kind == "date":
        if not 0 <= value < (1 << 32):
            raise _bad(t, value, "an integer date is the raw unsigned value 0..4294967295 (epoch at 2**31)")
        return _U32.pack(value)
    if kind == "time":
        if not 0 <= value < NANOS_PER_DAY:
            raise _bad(t, value, "an integer time is nanoseconds since midnight, 0..86399999999999")
        return _I64.pack(value)
    raise _bad(t, value)


def _floating(t: CqlType, value: decimal.Decimal | float) -> bytes:
    kind = t.kind
    if isinstance(value, float):  # NaN / Infinity literals
        if kind == "float":
            return _F32.pack(value)
        if kind == "double":
            return _F64.pack(value)
        raise _bad(t, value)
    if kind == "decimal":
        return decimal_bytes(t.cql(), value)
    if kind == "double":
        result = float(value)  # correctly rounded from the exact decimal
        if math.isinf(result):
            raise _bad(t, value, "out of range for a double")
        return _F64.pack(result)
    if kind == "float":
        return _float32(t, value)
    raise _bad(t, value)


def _f32_neighbour(bits: int, up: bool) -> int:
    """The adjacent float32 bit pattern (unsigned view) toward +inf (``up``) or -inf."""
    if bits & 0x8000_0000 == 0:
        if up:
            return bits + 1
        return 0x8000_0001 if bits == 0 else bits - 1
    if up:
        return 0x0000_0001 if bits == 0x8000_0000 else bits - 1
    return bits + 1


def _f32_exact(bits: int) -> decimal.Decimal:
    if bits & 0x7FFF_FFFF == 0x7F80_0000:  # the step past the largest finite float32 is 2**128
        return decimal.Decimal(-(2**128) if bits >> 31 else 2**128)
    return decimal.Decimal(_F32.unpack(_U32.pack(bits))[0])


def _float32(t: CqlType, value: decimal.Decimal) -> bytes:
    """Round the exact decimal to the nearest float32, ties to even (no double rounding via float64)."""
    wide = float(value)
    try:
        bits = _U32.unpack(_F32.pack(wide))[0]
    except OverflowError as exc:
        raise _bad(t, value, "out of range for a float") from exc
    exact = _f32_exact(bits)
    if exact != value:
        other = _f32_neighbour(bits, value > exact)
        middle = _EXACT.divide(_EXACT.add(exact, _f32_exact(other)), 2)
        if value == middle:
            if other & 1 == 0:  # ties to even
                bits = other
        elif (value > middle) == (value > exact):  # past the midpoint, on the neighbour's side
            bits = other
    if bits & 0x7FFF_FFFF >= 0x7F80_0000:
        raise _bad(t, value, "out of range for a float")
    return _U32.pack(bits)


_TIMESTAMP = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[ T](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r" ?(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?"
)
_DATE = re.compile(r"(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})")
_TIME = re.compile(r"(?P<h>\d{1,2}):(?P<mi>\d{1,2}):(?P<s>\d{1,2})(?:\.(?P<f>\d{1,9}))?")
_RAW = re.compile(r"-?\d+")
_IPV4_MAPPED = bytes(10) + b"\xff\xff"


def _string(t: CqlType, value: str) -> bytes:
    kind = t.kind
    if kind == "text":
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _bad(t, value, "not encodable as UTF-8") from exc
    if kind == "ascii":
        if not value.isascii():
            raise _bad(t, value, "contains non-ASCII characters")
        return value.encode("ascii")
    if kind == "inet":
        try:
            packed = inet_bytes(t.cql(), value)
        except InvalidValue as exc:
            raise _bad(t, value, "not an IPv4 or IPv6 address") from exc
        # As Cassandra (InetAddressType.fromString: InetAddress.getByName, which makes an IPv4-mapped IPv6 address
        # an Inet4Address): '::ffff:1.2.3.4' is the 4-byte 1.2.3.4. A bound value is stored as the client sent it.
        return packed[12:] if packed[:12] == _IPV4_MAPPED else packed
    if kind == "timestamp":
        return _I64.pack(_timestamp(t, value))
    if kind == "date":
        return _date(t, value)
    if kind == "time":
        return _time(t, value)
    raise _bad(t, value)


def _timestamp(t: CqlType, text: str) -> int:
    if _RAW.fullmatch(text):
        millis = int(text)
        if not -(1 << 63) <= millis < (1 << 63):
            raise _bad(t, text, "out of the 64-bit millisecond range")
        return millis
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        raise _bad(t, text, "expected yyyy-mm-dd[(T| )hh:mm[:ss[.fff]]][Z|+hh[:mm]|-hh[:mm]] or integer milliseconds")
    # As Cassandra 4 (TimestampSerializer.dateStringToTimestamp: DateUtils.parseDateStrictly with the patterns
    # "...ss.SSS..."): the digits after the point are a count of milliseconds, whatever their number (an 'S'
    # field of FastDateParser is an integer, its width ignored), so '.5' is 5 ms, not 500; more than 999 is refused.
    millis_part = int(m["f"] or 0)
    if millis_part > 999:
        raise _bad(t, text, "the digits after the seconds are milliseconds, as Cassandra reads them: 0 to 999")
    try:
        moment = dt.datetime(  # noqa: DTZ001 - a literal without a zone; made UTC below
            int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
        )
    except ValueError as exc:
        raise _bad(t, text, str(exc)) from exc
    millis = datetime_millis(moment) + millis_part
    tz = m["tz"]
    if tz and tz != "Z":
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 18 or minutes > 59:
            raise _bad(t, text, f"invalid zone offset {tz}")
        offset = (hours * 60 + minutes) * 60_000
        millis += -offset if tz[0] == "+" else offset
    return millis


def _date(t: CqlType, text: str) -> bytes:
    if _RAW.fullmatch(text):
        raw = int(text)
        if not 0 <= raw < (1 << 32):
            raise _bad(t, text, "a raw date is 0..4294967295 (epoch at 2**31)")
        return _U32.pack(raw)
    m = _DATE.fullmatch(text)
    if m is None:
        raise _bad(t, text, "expected yyyy-mm-dd or the raw unsigned day number")
    try:
        day = dt.date(int(m["y"]), int(m["mo"]), int(m["d"]))
    except ValueError as exc:
        raise _bad(t, text, str(exc)) from exc
    return _U32.pack(day.toordinal() - EPOCH_ORDINAL + DATE_OFFSET)


def _time(t: CqlType, text: str) -> bytes:
    if _RAW.fullmatch(text):
        nanos = int(text)
    else:
        m = _TIME.fullmatch(text)
        if m is None:
            raise _bad(t, text, "expected hh:mm:ss[.fffffffff] or integer nanoseconds")
        h, mi, s = int(m["h"]), int(m["mi"]), int(m["s"])
        if h > 23 or mi > 59 or s > 59:
            raise _bad(t, text, "hours must be 0-23, minutes and seconds 0-59")
        nanos = ((h * 60 + mi) * 60 + s) * 10**9 + int((m["f"] or "").ljust(9, "0"))
    if not 0 <= nanos < NANOS_PER_DAY:
        raise _bad(t, text, "outside 0..86399999999999 nanoseconds")
    return _I64.pack(nanos)


def _collection(t: CqlType, value: object) -> bytes:
    kind = t.kind
    if kind == "tuple":
        if not isinstance(value, TupleLiteral) and type(value) is not tuple:
            raise _bad(t, value)
        if len(value) > len(t.params):
            raise _bad(t, value, f"too many elements: {len(value)} for {len(t.params)} components")
        components = [None if v is None else literal_to_bytes(p, v) for p, v in zip(t.params, value, strict=False)]
        return b"".join(_I32.pack(-1) if c is None else _I32.pack(len(c)) + c for c in components)
    if kind == "list":
        if type(value) is not list:
            raise _bad(t, value)
        return join(len(value), [_element(t, t.params[0], v) for v in value])
    if kind == "set":
        if isinstance(value, SetLiteral) or (isinstance(value, dict | MapLiteral) and not value):
            parts = [_element(t, t.params[0], v) for v in value]
            return t.canonical(join(len(parts), parts))
        raise _bad(t, value)
    # map
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, MapLiteral):
        items = list(value)
    elif isinstance(value, SetLiteral) and not value:
        items = []
    else:
        raise _bad(t, value)
    parts = []
    for k, v in items:
        parts.append(_element(t, t.params[0], k))
        parts.append(_element(t, t.params[1], v))
    return t.canonical(join(len(items), parts))


def _element(t: CqlType, inner: CqlType, value: object) -> bytes:
    if value is None:
        raise InvalidValue(
            f"invalid null in a {t.kind} literal for type {t.cql()}: null is not allowed inside collections"
        )
    return literal_to_bytes(inner, value)
