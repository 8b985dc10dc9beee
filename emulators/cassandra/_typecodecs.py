"""Per-type codec functions behind :class:`emulators.cassandra.types.CqlType`.

A :class:`Codec` is built once per type and holds plain functions, so the hot
paths (``validate`` on every bound value, ``key`` for every clustering
comparison) are one call with precompiled :class:`struct.Struct` objects and no
per-call dispatch. Comparator keys mirror Cassandra's ``AbstractType``
subclasses; each is documented where it is not just "the number".
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import logging
import math
import socket
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class InvalidValue(ValueError):
    """A value (Python object, literal or bytes) that does not fit its CQL type; the message names both."""


class UnsupportedType(ValueError):
    """A CQL type outside the emulator's subset (counter, duration, UDTs, custom types)."""


class CompareKey(Protocol):
    """A comparator key: ints, bytes, Decimals, bools, tuples of keys, :class:`~.keys.Desc`; ordered as Cassandra."""

    def __lt__(self, other: Any, /) -> bool: ...

    def __le__(self, other: Any, /) -> bool: ...

    def __gt__(self, other: Any, /) -> bool: ...

    def __ge__(self, other: Any, /) -> bool: ...


@dataclass(frozen=True, slots=True)
class Codec:
    serialize: Callable[[object], bytes]
    deserialize: Callable[[bytes], object]
    validate: Callable[[bytes], None]
    key: Callable[[bytes], CompareKey]
    canonical: Callable[[bytes], bytes]
    hashable: bool  # whether deserialize returns hashable values (decides frozenset/dict vs list)


_I8, _I16, _I32, _I64 = (struct.Struct(f">{c}") for c in "bhiq")
_U32, _U64, _F32, _F64 = (struct.Struct(f">{c}") for c in "IQfd")
_QQ = struct.Struct(">QQ")
EPOCH = dt.datetime(1970, 1, 1)  # noqa: DTZ001 - naive UTC on purpose, as the driver returns
EPOCH_ORDINAL = EPOCH.toordinal()
DATE_OFFSET = 1 << 31
NANOS_PER_DAY = 86_400 * 10**9
_INT_RANGES = {"tinyint": (_I8, 7), "smallint": (_I16, 15), "int": (_I32, 31), "bigint": (_I64, 63)}


def show(data: bytes) -> str:
    """Short hex of offending bytes for error messages."""
    text = bytes(data[:24]).hex()
    return f"0x{text}{'...' if len(data) > 24 else ''} ({len(data)} bytes)"


def bad_python(cql: str, value: object, expected: str) -> InvalidValue:
    return InvalidValue(f"invalid value for {cql}: {value!r} ({type(value).__name__}); expected {expected}")


def _fixed_validator(cql: str, size: int) -> Callable[[bytes], None]:
    def validate(data: bytes) -> None:
        if len(data) != size:
            raise InvalidValue(f"invalid {cql} value {show(data)}: expected {size} bytes")

    return validate


def _identity(data: bytes) -> bytes:
    return data


def _no_check(data: bytes) -> None:
    return None


# -- integers ------------------------------------------------------------------
def _int_codec(cql: str) -> Codec:
    st, bits = _INT_RANGES[cql]
    lo, hi = -(1 << bits), (1 << bits) - 1
    validate = _fixed_validator(cql, st.size)
    unpack: Callable[[bytes], tuple[int]] = st.unpack

    def serialize(value: object) -> bytes:
        if type(value) is bool or not isinstance(value, int):
            raise bad_python(cql, value, "an int")
        if not lo <= value <= hi:
            raise InvalidValue(f"invalid value for {cql}: {value} is out of range [{lo}, {hi}]")
        return st.pack(value)

    def deserialize(data: bytes) -> object:
        validate(data)
        return unpack(data)[0]

    def key(data: bytes) -> int:
        return unpack(data)[0]

    return Codec(serialize, deserialize, validate, key, _identity, True)


def varint_bytes(value: int) -> bytes:
    """Minimal two's complement big-endian bytes (``0`` -> ``b'\\x00'``), as Cassandra and the driver write it."""
    return value.to_bytes((value + (value < 0)).bit_length() // 8 + 1, "big", signed=True)


def _varint_codec(cql: str) -> Codec:
    def validate(data: bytes) -> None:
        if not data:
            raise InvalidValue(f"invalid {cql} value: empty values are not supported by this emulator")

    def serialize(value: object) -> bytes:
        if type(value) is bool or not isinstance(value, int):
            raise bad_python(cql, value, "an int")
        return varint_bytes(value)

    def key(data: bytes) -> int:
        return int.from_bytes(data, "big", signed=True)

    def deserialize(data: bytes) -> object:
        validate(data)
        return key(data)

    return Codec(serialize, deserialize, validate, key, _identity, True)


def decimal_bytes(cql: str, value: decimal.Decimal) -> bytes:
    if not value.is_finite():
        raise InvalidValue(f"invalid value for {cql}: {value} (NaN and Infinity are not decimals)")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)))
    scale = -exponent
    if not -(1 << 31) <= scale < (1 << 31):
        raise InvalidValue(f"invalid value for {cql}: {value} has a scale outside the 32-bit range")
    return _I32.pack(scale) + varint_bytes(-unscaled if sign else unscaled)


def _decimal_codec(cql: str) -> Codec:
    def validate(data: bytes) -> None:
        if len(data) < 5:
            raise InvalidValue(f"invalid {cql} value {show(data)}: expected a 4-byte scale and an unscaled varint")

    def key(data: bytes) -> decimal.Decimal:
        scale = _I32.unpack_from(data)[0]
        return decimal.Decimal(f"{int.from_bytes(data[4:], 'big', signed=True)}E{-scale}")

    def serialize(value: object) -> bytes:
        if type(value) is bool or not isinstance(value, int | float | decimal.Decimal):
            raise bad_python(cql, value, "a Decimal, int or float")
        return decimal_bytes(cql, value if isinstance(value, decimal.Decimal) else decimal.Decimal(value))

    def deserialize(data: bytes) -> object:
        validate(data)
        return key(data)

    return Codec(serialize, deserialize, validate, key, _identity, True)


# -- floating point ----------------------------------------------------------------
def _float_codec(cql: str) -> Codec:
    """float/double. Key = Java's ``Float.compare`` / ``Double.compare`` total order.

    -Infinity < ... < -0.0 < 0.0 < ... < Infinity < NaN (all NaNs equal): the
    IEEE bits as a signed int, negatives with their magnitude bits flipped.
    """
    st, ist, nbits = (_F32, _I32, 32) if cql == "float" else (_F64, _I64, 64)
    magnitude = (1 << (nbits - 1)) - 1
    nan_key = 1 << (nbits - 1)
    validate = _fixed_validator(cql, st.size)
    unpack: Callable[[bytes], tuple[float]] = st.unpack
    iunpack: Callable[[bytes], tuple[int]] = ist.unpack

    def serialize(value: object) -> bytes:
        if type(value) is bool or not isinstance(value, int | float):
            raise bad_python(cql, value, "a float or int")
        try:
            return st.pack(value)
        except (OverflowError, struct.error) as exc:
            raise InvalidValue(f"invalid value for {cql}: {value!r} is out of range") from exc

    def deserialize(data: bytes) -> object:
        validate(data)
        return unpack(data)[0]

    def key(data: bytes) -> int:
        value = unpack(data)[0]
        if value != value:
            return nan_key
        bits = iunpack(data)[0]
        return bits if bits >= 0 else bits ^ magnitude

    return Codec(serialize, deserialize, validate, key, _identity, True)


# -- text, bytes, boolean, inet ----------------------------------------------------
def _text_codec(cql: str) -> Codec:
    ascii_only = cql == "ascii"

    def serialize(value: object) -> bytes:
        if not isinstance(value, str):
            raise bad_python(cql, value, "a str")
        try:
            return value.encode("ascii" if ascii_only else "utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValue(f"invalid value for {cql}: {value!r} ({exc.reason} at {exc.start})") from exc

    def validate(data: bytes) -> None:
        if data.isascii():
            return
        if ascii_only:
            raise InvalidValue(f"invalid ascii value {show(data)}: contains non-ASCII bytes")
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidValue(
                f"invalid text value {show(data)}: not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc

    def deserialize(data: bytes) -> object:
        validate(data)
        return data.decode("ascii" if ascii_only else "utf-8")

    return Codec(serialize, deserialize, validate, bytes, _identity, True)


def _blob_codec(cql: str) -> Codec:
    def serialize(value: object) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise bad_python(cql, value, "bytes")
        return bytes(value)

    return Codec(serialize, bytes, _no_check, bytes, _identity, True)


def _boolean_codec(cql: str) -> Codec:
    validate = _fixed_validator(cql, 1)

    def serialize(value: object) -> bytes:
        if type(value) is not bool:
            raise bad_python(cql, value, "a bool")
        return b"\x01" if value else b"\x00"

    def key(data: bytes) -> bool:
        return data[0] != 0

    def deserialize(data: bytes) -> object:
        validate(data)
        return data[0] != 0

    return Codec(serialize, deserialize, validate, key, _identity, True)


def inet_bytes(cql: str, value: object) -> bytes:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.packed
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value).packed
        except ValueError as exc:
            raise InvalidValue(f"invalid value for {cql}: {value!r} is not an IPv4 or IPv6 address") from exc
    raise bad_python(cql, value, "an IP address str or ipaddress object")


def _inet_codec(cql: str) -> Codec:
    def validate(data: bytes) -> None:
        if len(data) not in (4, 16):
            raise InvalidValue(f"invalid inet value {show(data)}: expected 4 or 16 bytes")

    def deserialize(data: bytes) -> object:
        validate(data)
        return socket.inet_ntop(socket.AF_INET if len(data) == 4 else socket.AF_INET6, data)

    return Codec(lambda v: inet_bytes(cql, v), deserialize, validate, bytes, _identity, True)


# -- uuid / timeuuid -----------------------------------------------------------------
_SIGNED_BYTES = 0x8080_8080_8080_8080


def _reorder(msb: int) -> int:
    """TimeUUIDType.reorderTimestampBytes: time_hi_and_version, time_mid, time_low (version nibble on top)."""
    return ((msb & 0xFFFF) << 48) | (((msb >> 16) & 0xFFFF) << 32) | (msb >> 32)


def _uuid_codec(cql: str) -> Codec:
    """uuid and timeuuid.

    timeuuid (TimeUUIDType): the 60-bit time first (reordered MSB), then the LSB
    compared as *signed* bytes (Cassandra keeps that for compatibility): flipping
    each byte's top bit makes an unsigned comparison equivalent.
    uuid (UUIDType): version nibble first; version 1 then by time as above but
    LSB unsigned; other versions by unsigned MSB then unsigned LSB.
    """
    time_only = cql == "timeuuid"
    unpack: Callable[[bytes], tuple[int, int]] = _QQ.unpack

    def validate(data: bytes) -> None:
        if len(data) != 16:
            raise InvalidValue(f"invalid {cql} value {show(data)}: expected 16 bytes")
        if time_only and data[6] >> 4 != 1:
            raise InvalidValue(
                f"invalid timeuuid value {show(data)}: version {data[6] >> 4}, a timeuuid must be version 1"
            )

    def serialize(value: object) -> bytes:
        if not isinstance(value, uuid.UUID):
            raise bad_python(cql, value, "a uuid.UUID")
        data = value.bytes
        if time_only and data[6] >> 4 != 1:
            raise InvalidValue(f"invalid value for timeuuid: {value} is a version {data[6] >> 4} UUID, not version 1")
        return data

    if time_only:

        def key(data: bytes) -> int:
            msb, lsb = unpack(data)
            return (_reorder(msb) << 64) | (lsb ^ _SIGNED_BYTES)

    else:

        def key(data: bytes) -> int:
            msb, lsb = unpack(data)
            version = (msb >> 12) & 0xF
            return (version << 128) | ((_reorder(msb) if version == 1 else msb) << 64) | lsb

    def deserialize(data: bytes) -> object:
        validate(data)
        return uuid.UUID(bytes=bytes(data))

    return Codec(serialize, deserialize, validate, key, _identity, True)


# -- timestamp, date, time -------------------------------------------------------------
def datetime_millis(value: dt.datetime) -> int:
    """Milliseconds since the epoch, naive = UTC, sub-millisecond truncated toward zero (the driver's rule)."""
    offset = value.utcoffset()  # None for a naive datetime
    if offset is not None:
        value = value.replace(tzinfo=None) - offset
    delta = value.replace(tzinfo=None) - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros // 1000 if micros >= 0 else -((-micros) // 1000)


def _timestamp_codec(cql: str) -> Codec:
    validate = _fixed_validator(cql, 8)
    unpack = _I64.unpack

    def serialize(value: object) -> bytes:
        if isinstance(value, dt.datetime):
            millis = datetime_millis(value)
        elif isinstance(value, dt.date):
            millis = (value.toordinal() - EPOCH_ORDINAL) * 86_400_000
        elif type(value) is not bool and isinstance(value, int):
            millis = value
        elif isinstance(value, float) and math.isfinite(value):
            millis = int(value)
        else:
            raise bad_python(cql, value, "a datetime, date or int milliseconds")
        if not -(1 << 63) <= millis < (1 << 63):
            raise InvalidValue(f"invalid value for {cql}: {value!r} is out of the 64-bit millisecond range")
        return _I64.pack(millis)

    def deserialize(data: bytes) -> object:
        validate(data)
        millis = unpack(data)[0]
        try:
            return EPOCH + dt.timedelta(milliseconds=millis)
        except OverflowError:
            return millis

    return Codec(serialize, deserialize, validate, lambda d: unpack(d)[0], _identity, True)


def _date_codec(cql: str) -> Codec:
    """date: unsigned 32-bit days with the epoch at 2**31; Cassandra compares it unsigned."""
    validate = _fixed_validator(cql, 4)
    unpack = _U32.unpack

    def serialize(value: object) -> bytes:
        if isinstance(value, dt.date):  # a datetime counts by its own (local) date, as in the driver
            return _U32.pack(value.toordinal() - EPOCH_ORDINAL + DATE_OFFSET)
        if type(value) is not bool and isinstance(value, int):
            if not 0 <= value < (1 << 32):
                raise InvalidValue(f"invalid value for {cql}: {value} is not a raw date (0..2**32-1, epoch at 2**31)")
            return _U32.pack(value)
        raise bad_python(cql, value, "a datetime.date or the raw int (days + 2**31)")

    def deserialize(data: bytes) -> object:
        validate(data)
        raw = unpack(data)[0]
        ordinal = raw - DATE_OFFSET + EPOCH_ORDINAL
        if 1 <= ordinal <= dt.date.max.toordinal():
            return dt.date.fromordinal(ordinal)
        return raw

    return Codec(serialize, deserialize, validate, lambda d: unpack(d)[0], _identity, True)


def _time_codec(cql: str) -> Codec:
    unpack = _I64.unpack

    def validate(data: bytes) -> None:
        if len(data) != 8:
            raise InvalidValue(f"invalid {cql} value {show(data)}: expected 8 bytes")
        if not 0 <= unpack(data)[0] < NANOS_PER_DAY:
            raise InvalidValue(f"invalid {cql} value {show(data)}: {unpack(data)[0]} ns is outside one day")

    def serialize(value: object) -> bytes:
        if isinstance(value, dt.time):
            if value.tzinfo is not None:
                raise InvalidValue(f"invalid value for {cql}: {value!r} has a time zone; CQL time has none")
            nanos = ((value.hour * 60 + value.minute) * 60 + value.second) * 10**9 + value.microsecond * 1000
        elif type(value) is not bool and isinstance(value, int):
            nanos = value
        else:
            raise bad_python(cql, value, "a datetime.time or int nanoseconds since midnight")
        if not 0 <= nanos < NANOS_PER_DAY:
            raise InvalidValue(f"invalid value for {cql}: {value!r} is outside 0..86399999999999 nanoseconds")
        return _I64.pack(nanos)

    def deserialize(data: bytes) -> object:
        validate(data)
        return unpack(data)[0]

    return Codec(serialize, deserialize, validate, lambda d: unpack(d)[0], _identity, True)


SCALARS: dict[str, Callable[[str], Codec]] = {
    "tinyint": _int_codec, "smallint": _int_codec, "int": _int_codec, "bigint": _int_codec,
    "varint": _varint_codec, "decimal": _decimal_codec, "float": _float_codec, "double": _float_codec,
    "ascii": _text_codec, "text": _text_codec, "blob": _blob_codec, "boolean": _boolean_codec,
    "inet": _inet_codec, "uuid": _uuid_codec, "timeuuid": _uuid_codec,
    "timestamp": _timestamp_codec, "date": _date_codec, "time": _time_codec,
}  # fmt: skip


def build(kind: str, params: tuple[Codec, ...], cql: str) -> Codec:
    """The codec of a type; ``params`` are the element codecs, ``cql`` the type's text for messages."""
    if kind in SCALARS:
        return SCALARS[kind](kind)
    from ._typecollections import collection_codec

    return collection_codec(kind, params, cql)
