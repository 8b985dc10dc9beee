"""Faster serializers for the few CQL types that dominate an event's bind cost.

The event store serializes each of an event's values once (see ``event_store``).
Of what is left, the driver's ``DateType.serialize`` (a ``utctimetuple`` and a
``calendar.timegm`` per datetime, and five timestamps per event: the event store
binds them as ints of milliseconds, which it packs as they are), ``SimpleDateType.serialize``
and ``MapType.serialize`` (a ``BytesIO`` and four writes per entry, through the
generic ``to_binary`` of each subtype) were most of the CPU. The functions here
produce the same bytes for the values Sluice binds, and hand anything else to
the driver's own serializer, so a value they do not cover is never encoded
differently: ``tests/unit/test_cassandra_codec.py`` compares them with the
driver byte for byte on generated values. For int, bigint, boolean and text the
serializer is what the driver's own calls (``int32_pack``, ``str.encode``...),
taken out of the Python function around it.

Only protocol v3 and later (int32 lengths inside collections) take the fast
path; v1/v2 (never negotiated with Cosmos DB or Cassandra 3.11+) use the driver.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import date, datetime
from operator import methodcaller
from typing import Any

from cassandra import cqltypes, marshal

from shared.domain.times import to_ms

Serializer = Callable[[object], bytes]

_INT32 = struct.Struct(">i").pack
_INT64 = struct.Struct(">q").pack
_UINT32 = struct.Struct(">I").pack
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DATE_OFFSET = cqltypes.SimpleDateType.EPOCH_OFFSET_DAYS
_CACHE_LIMIT = 4096


def serializer(cql_type: type[cqltypes._CassandraType], protocol_version: int) -> Serializer:
    """A one-argument serializer for ``cql_type``, equal in output to ``cql_type.serialize``."""

    def driver(value: object) -> bytes:
        serialized: bytes = cql_type.serialize(value, protocol_version)
        return serialized

    if protocol_version < 3:
        return driver
    direct = _DIRECT.get(cql_type)
    if direct is not None:
        return direct
    if cql_type is cqltypes.DateType or cql_type is cqltypes.TimestampType:
        return _timestamp(driver)
    if cql_type is cqltypes.SimpleDateType:
        return _date(driver)
    if issubclass(cql_type, cqltypes.MapType) and cql_type.subtypes:
        key_type, value_type = cql_type.subtypes
        if issubclass(key_type, cqltypes.UTF8Type):
            if value_type is cqltypes.DoubleType:
                return _text_double_map(driver)
            if issubclass(value_type, cqltypes.UTF8Type):
                return _text_map(driver)
    return driver


# What the driver's own ``serialize`` of these types calls, minus the call around it: the same bytes and the same
# errors, with no Python frame per value (ten of an event's nineteen values are of these types).
_DIRECT: dict[type, Serializer] = {
    cqltypes.Int32Type: marshal.int32_pack,
    cqltypes.LongType: marshal.int64_pack,
    cqltypes.BooleanType: marshal.int8_pack,
    cqltypes.UTF8Type: methodcaller("encode", "utf-8"),
    cqltypes.VarcharType: methodcaller("encode", "utf-8"),
}


def _timestamp(driver: Serializer) -> Serializer:
    def serialize(value: object) -> bytes:
        if type(value) is int:  # milliseconds, as the event store binds them: the driver packs the int as it is
            return _INT64(value)
        # The driver computes timegm(utctimetuple()) * 1e3 + microsecond / 1e3 in floating point and truncates: for
        # a whole number of milliseconds (all Sluice binds) that is exactly the floor division below, unless the UTC
        # offset has a fraction of a second (legal in Python): utctimetuple drops the fraction the offset moved
        # into the UTC time, and the local microsecond is added back. Those go to the driver.
        if type(value) is datetime and not value.microsecond % 1000:
            offset = value.utcoffset()
            if offset is None or not offset.microseconds:
                return _INT64(to_ms(value))
        return driver(value)

    return serialize


def _date(driver: Serializer) -> Serializer:
    def serialize(value: object) -> bytes:
        if type(value) is date:
            return _UINT32(value.toordinal() - _EPOCH_ORDINAL + _DATE_OFFSET)
        return driver(value)

    return serialize


def _text(value: object) -> bytes:
    encoded: bytes = value.encode()  # type: ignore[attr-defined]  # AttributeError: not a str, the driver decides
    return _INT32(len(encoded)) + encoded


def _text_double_map(driver: Serializer) -> Serializer:
    """``map<text, double>``: one ``struct`` call per map, its layout cached by the map's keys.

    A fleet's devices send the same measurement names in the same order, so the
    keys (and the value lengths, always 8) are constant bytes interleaved with
    the doubles: one format of ``<n>s`` and ``d`` fields per key tuple. ``d``
    packs exactly as the driver's ``double_pack``; a value it refuses (``None``,
    a string) goes to the driver, which decides what that means.
    """
    layouts: dict[tuple[str, ...], tuple[Callable[..., bytes], list[Any]]] = {}

    def layout(keys: tuple[str, ...]) -> tuple[Callable[..., bytes], list[Any]]:
        args: list[Any] = []
        for index, key in enumerate(keys):
            encoded = key.encode()
            head = _INT32(len(keys)) if index == 0 else b""
            args += [head + _INT32(len(encoded)) + encoded + _INT32(8), None]
        pack = struct.Struct(">" + "".join(f"{len(constant)}sd" for constant in args[::2])).pack
        if len(layouts) >= _CACHE_LIMIT:
            layouts.clear()
        layouts[keys] = pack, args
        return pack, args

    def serialize(value: object) -> bytes:
        if type(value) is not dict or not value:
            return driver(value)
        keys = tuple(value)
        try:
            pack, template = layouts.get(keys) or layout(keys)
            args = template.copy()
            args[1::2] = value.values()
            return pack(*args)
        except (AttributeError, TypeError, struct.error):
            return driver(value)

    return serialize


def _text_map(driver: Serializer) -> Serializer:
    """``map<text, text>``: length-prefixed keys (cached, they repeat) and values."""
    keys: dict[str, bytes] = {}

    def serialize(value: object) -> bytes:
        if type(value) is not dict:
            return driver(value)
        parts = [_INT32(len(value))]
        try:
            for key, item in value.items():
                prefix = keys.get(key)
                if prefix is None:
                    encoded = key.encode()
                    prefix = _INT32(len(encoded)) + encoded
                    if len(keys) >= _CACHE_LIMIT:
                        keys.clear()
                    keys[key] = prefix
                parts.append(prefix)
                parts.append(_text(item))
        except (AttributeError, TypeError):
            return driver(value)
        return b"".join(parts)

    return serialize
