"""CQL value types against the driver (the oracle for bytes) and Cassandra's known orders."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import itertools
import struct
import uuid
from typing import Any

import pytest
from cassandra import cqltypes
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.cassandra.types import (
    CqlType,
    InvalidValue,
    SetLiteral,
    TupleLiteral,
    UnsupportedType,
    parse_type,
    type_from_option,
)

SCALARS = [
    "ascii", "text", "int", "bigint", "smallint", "tinyint", "varint", "decimal", "float", "double",
    "boolean", "blob", "uuid", "timeuuid", "timestamp", "date", "time", "inet",
]  # fmt: skip
HASHABLE_SCALARS = SCALARS  # every scalar deserializes to a hashable Python value


def driver_type(t: CqlType) -> Any:
    """The driver's type class for ``t`` (its serializers are the oracle)."""
    base = cqltypes._cqltypes[t.kind]
    if not t.params:
        return base
    return base.apply_parameters([driver_type(p) for p in t.params])


def _ms(d: dt.datetime) -> dt.datetime:
    return d.replace(microsecond=d.microsecond // 1000 * 1000)


SCALAR_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "ascii": st.text(alphabet=st.characters(max_codepoint=127)),
    "text": st.text(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "smallint": st.integers(-(2**15), 2**15 - 1),
    "tinyint": st.integers(-128, 127),
    "varint": st.integers(-(2**200), 2**200),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "boolean": st.booleans(),
    "blob": st.binary(max_size=40),
    "uuid": st.uuids(),
    "timeuuid": st.uuids(version=1),
    "timestamp": st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)).map(_ms),  # noqa: DTZ001
    "date": st.dates(),
    "time": st.times(),
    "inet": st.ip_addresses().map(str),
}


def _collection_types(children: st.SearchStrategy[CqlType]) -> st.SearchStrategy[CqlType]:
    hashable = st.sampled_from(HASHABLE_SCALARS).map(CqlType)
    keys = st.one_of(hashable, st.lists(hashable, min_size=1, max_size=3).map(lambda ps: CqlType("tuple", tuple(ps))))
    return st.one_of(
        children.map(lambda c: CqlType("list", (c,))),
        keys.map(lambda c: CqlType("set", (c,))),
        st.tuples(keys, children).map(lambda kv: CqlType("map", kv)),
        st.lists(children, min_size=1, max_size=3).map(lambda ps: CqlType("tuple", tuple(ps))),
    )


TYPES = st.recursive(st.sampled_from(SCALARS).map(CqlType), _collection_types, max_leaves=6)


def values(t: CqlType) -> st.SearchStrategy[Any]:
    if t.kind in SCALAR_VALUES:
        return SCALAR_VALUES[t.kind]
    if t.kind == "list":
        return st.lists(values(t.params[0]), max_size=4)
    if t.kind == "set":
        return st.frozensets(values(t.params[0]), max_size=4)
    if t.kind == "map":
        return st.dictionaries(values(t.params[0]), values(t.params[1]), max_size=4)
    return st.tuples(*[st.one_of(st.none(), values(p)) for p in t.params])


def cassandra_order(t: CqlType, value: Any) -> Any:
    """Value as the driver must receive it to produce Cassandra's stored order (sets, maps sorted)."""
    if t.kind == "list":
        return [cassandra_order(t.params[0], v) for v in value]
    if t.kind == "tuple":
        return tuple(None if v is None else cassandra_order(p, v) for p, v in zip(t.params, value, strict=False))
    if t.kind == "set":
        inner = t.params[0]
        ordered = [cassandra_order(inner, v) for v in value]
        return sorted(ordered, key=lambda v: inner.compare_key(inner.serialize(v)))
    if t.kind == "map":
        k, v = t.params
        items = [(cassandra_order(k, a), cassandra_order(v, b)) for a, b in value.items()]
        return dict(sorted(items, key=lambda kv: k.compare_key(k.serialize(kv[0]))))
    return value


def norm(t: CqlType, value: Any) -> Any:
    """A comparable normal form, independent of which side (driver or ours) produced ``value``."""
    if value is None:
        return None
    k = t.kind
    if k == "list":
        return [norm(t.params[0], v) for v in value]
    if k == "set":
        return sorted((norm(t.params[0], v) for v in value), key=repr)
    if k == "map":
        return sorted(((norm(t.params[0], a), norm(t.params[1], b)) for a, b in dict(value).items()), key=repr)
    if k == "tuple":
        items = list(value) + [None] * (len(t.params) - len(value))
        return tuple(norm(p, v) for p, v in zip(t.params, items, strict=True))
    if k == "time":
        if isinstance(value, int):
            return value
        if isinstance(value, dt.time):
            return ((value.hour * 60 + value.minute) * 60 + value.second) * 10**9 + value.microsecond * 1000
        return value.nanosecond_time
    if k == "date":
        return value if isinstance(value, dt.date) else value.date()
    if k == "inet":
        return ipaddress.ip_address(value)
    return value


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_round_trip_against_driver(data: st.DataObject) -> None:
    t = data.draw(TYPES)
    value = data.draw(values(t))
    ours = t.serialize(value)
    theirs = driver_type(t).serialize(cassandra_order(t, value), 4)
    assert ours == theirs, t.cql()
    t.validate(ours)
    assert norm(t, driver_type(t).deserialize(ours, 4)) == norm(t, value)
    assert norm(t, t.deserialize(ours)) == norm(t, value)
    assert t.canonical(ours) == ours
    assert type_from_option(t.option()) == (CqlType(t.kind, t.params), len(t.option()))
    assert parse_type(t.cql()) == t


@settings(max_examples=100, deadline=None)
@given(t=TYPES)
def test_parse_type_round_trips_cql_text(t: CqlType) -> None:
    assert parse_type(t.cql()).cql() == t.cql()
    frozen = t.freeze()
    assert parse_type(frozen.cql()) == frozen


# -- cql() and parse_type ---------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "cql"),
    [
        ("varchar", "text"),
        ("TEXT", "text"),
        ("map<text, frozen<list<int>>>", "map<text, frozen<list<int>>>"),
        (" Map < VARCHAR ,frozen < list<int> > > ", "map<text, frozen<list<int>>>"),
        ("tuple<int,text>", "frozen<tuple<int, text>>"),
        ("frozen<list<list<int>>>", "frozen<list<frozen<list<int>>>>"),
        ("list<tuple<int, set<text>>>", "list<frozen<tuple<int, frozen<set<text>>>>>"),
        ("set<frozen<map<timeuuid, blob>>>", "set<frozen<map<timeuuid, blob>>>"),
    ],
)
def test_parse_type_canonical_text(text: str, cql: str) -> None:
    assert parse_type(text).cql() == cql


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("list<list<int>>", InvalidValue, "non-frozen collections are not allowed inside collections"),
        ("map<int, set<int>>", InvalidValue, "non-frozen collections are not allowed inside collections"),
        ("frozen<int>", InvalidValue, "frozen<> is only allowed on collections and tuples"),
        ("map<int>", InvalidValue, "map takes 2 type parameter"),
        ("list<int", InvalidValue, "unexpected end"),
        ("list<int>>", InvalidValue, "unexpected '>'"),
        ("", InvalidValue, "empty"),
        ("counter", UnsupportedType, "counter"),
        ("duration", UnsupportedType, "duration"),
        ("address", UnsupportedType, "user-defined types are not supported"),
        ('frozen<"Address">', UnsupportedType, "user-defined types"),
        ("'org.apache.cassandra.db.marshal.LongType'", UnsupportedType, "custom types"),
        ("list<counter>", UnsupportedType, "counter"),
    ],
)
def test_parse_type_errors(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("<", ".").replace(">", ".").replace("(", ".")):
        parse_type(text)


def test_constructor_normalises() -> None:
    assert CqlType("varchar") == CqlType("text")
    assert CqlType("tuple", (CqlType("int"),)).frozen
    nested = CqlType("list", (CqlType("list", (CqlType("int"),)),))
    assert nested.cql() == "list<frozen<list<int>>>"
    assert CqlType("list", (CqlType("int"),)).is_collection
    assert not CqlType("tuple", (CqlType("int"),)).is_collection
    with pytest.raises(UnsupportedType, match="widget"):
        CqlType("widget")


# -- [option] ---------------------------------------------------------------------------
def test_option_bytes() -> None:
    assert parse_type("text").option() == b"\x00\x0d"
    assert parse_type("map<text, frozen<list<int>>>").option() == bytes.fromhex("0021000d00200009")
    assert parse_type("tuple<int, text>").option() == bytes.fromhex("003100020009000d")
    t, end = type_from_option(b"\xff" + parse_type("set<uuid>").option(), 1)
    assert (t, end) == (parse_type("set<uuid>"), 5)
    assert type_from_option(b"\x00\x0a")[0] == parse_type("text")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"\x00\x05", UnsupportedType, "counter"),
        (b"\x00\x15", UnsupportedType, "duration"),
        (b"\x00\x30", UnsupportedType, "user-defined"),
        (b"\x00\x00\x00\x03abc", UnsupportedType, "custom"),
        (b"\x00\x99", InvalidValue, "unknown .option. type id 0x0099"),
        (b"\x00", InvalidValue, "truncated"),
        (b"\x00\x20", InvalidValue, "truncated"),
        (b"\x00\x31\x00\x00", InvalidValue, "no components"),
    ],
)
def test_option_errors(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        type_from_option(data)


# -- compare_key: Cassandra's comparator orders -----------------------------------------------
def keys_of(cql: str, values_: list[Any]) -> list[Any]:
    t = parse_type(cql)
    return [t.compare_key(t.serialize(v)) for v in values_]


def assert_strictly_increasing(cql: str, values_: list[Any]) -> None:
    keys = keys_of(cql, values_)
    assert all(a < b for a, b in itertools.pairwise(keys)), (cql, values_)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_numeric_and_temporal_keys_sort_like_the_values(data: st.DataObject) -> None:
    cql = data.draw(st.sampled_from(["tinyint", "smallint", "int", "bigint", "varint", "decimal", "timestamp",
                                     "date", "time", "double", "float"]))  # fmt: skip
    items = data.draw(st.lists(SCALAR_VALUES[cql], min_size=2, max_size=8))
    t = parse_type(cql)
    by_key = sorted(items, key=lambda v: t.compare_key(t.serialize(v)))
    assert [norm(t, v) for v in by_key] == sorted(norm(t, v) for v in items)


def test_known_orders() -> None:
    assert_strictly_increasing("int", [-(2**31), -1, 0, 1, 2**31 - 1])
    assert_strictly_increasing("varint", [-(2**70), -129, -1, 0, 255, 2**70])
    assert_strictly_increasing(
        "decimal", [decimal.Decimal("-1E+3"), decimal.Decimal("-0.5"), 0, decimal.Decimal("0.01"), 1]
    )
    assert keys_of("decimal", [decimal.Decimal("1.0"), decimal.Decimal("1.00")]) == keys_of("decimal", [1, 1])
    for cql in ("float", "double"):
        assert_strictly_increasing(cql, [float("-inf"), -1.5, -0.0, 0.0, 1e-40, 1.0, float("inf"), float("nan")])
        nan_bits = parse_type(cql).compare_key(b"\xff" * (4 if cql == "float" else 8))  # a negative NaN
        assert nan_bits == keys_of(cql, [float("nan")])[0]
    assert_strictly_increasing("text", ["", "A", "Z", "a", "ab", "b", "é", "中"])
    assert_strictly_increasing("ascii", ["", "A", "a", "aa", "b"])
    assert_strictly_increasing("blob", [b"", b"\x00", b"\x00\x00", b"\x7f", b"\x80", b"\xff"])
    assert_strictly_increasing("boolean", [False, True])
    assert keys_of("boolean", [True])[0] == parse_type("boolean").compare_key(b"\x02")
    assert_strictly_increasing("inet", ["::1", "0.0.0.1", "1.2.3.4", "10.0.0.0", "255.255.255.255"])
    naive = [dt.datetime(1969, 12, 31), dt.datetime(1970, 1, 1), dt.datetime(2024, 1, 1)]  # noqa: DTZ001 - as the driver reads
    assert_strictly_increasing("timestamp", naive)
    assert_strictly_increasing(
        "date", [dt.date(1, 1, 1), dt.date(1969, 12, 31), dt.date(1970, 1, 1), dt.date(9999, 1, 1)]
    )


def v1(timestamp: int, lsb: int) -> uuid.UUID:
    """A version 1 UUID with the given 60-bit timestamp and 64-bit clock_seq/node part."""
    time_low, time_mid, time_hi = timestamp & 0xFFFFFFFF, (timestamp >> 32) & 0xFFFF, (timestamp >> 48) & 0x0FFF
    msb = (time_low << 32) | (time_mid << 16) | 0x1000 | time_hi
    return uuid.UUID(int=(msb << 64) | lsb)


def test_timeuuid_orders_by_time_then_signed_bytes() -> None:
    base = 0x8000_0000_0000_0000
    # time_low bytes come first in the UUID, yet the time decides: 0x1_00000000 is later than 0xFFFFFFFF.
    assert_strictly_increasing(
        "timeuuid", [v1(0xFFFF_FFFF, base), v1(0x1_0000_0000, base), v1(0x0FFF_0000_0000_0000, 0)]
    )
    # Same time: the clock_seq/node bytes compare as signed bytes (0x80 < 0xff < 0x00 < 0x7f), byte by byte.
    assert_strictly_increasing(
        "timeuuid", [v1(5, 0x80 << 56), v1(5, 0xFF << 56), v1(5, 0), v1(5, 0x7F80 << 48), v1(5, 0x7F00 << 48)]
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**60 - 1), st.integers(0, 2**64 - 1)), min_size=2, max_size=6))
def test_timeuuid_key_follows_time(stamps: list[tuple[int, int]]) -> None:
    t = parse_type("timeuuid")
    uuids = [v1(ts, lsb) for ts, lsb in stamps]
    by_key = sorted(uuids, key=lambda u: t.compare_key(u.bytes))
    assert [u.time for u in by_key] == sorted(u.time for u in uuids)


def test_uuid_orders_by_version_then_time_or_bytes() -> None:
    v4_low = uuid.UUID("00000000-0000-4000-8000-000000000000")
    v4_high = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
    # v1 sorts before any v4 whatever the bytes; v1 by time; v4 by unsigned bytes (lsb too).
    assert_strictly_increasing(
        "uuid", [v1(1, 2**63), v1(2**40, 0), v4_low, uuid.UUID("00000000-0000-4000-ff00-000000000000"), v4_high]
    )
    assert_strictly_increasing("uuid", [uuid.UUID(int=0), v1(0, 0)])  # version 0 (nil) first


def test_frozen_collection_and_tuple_orders() -> None:
    assert_strictly_increasing("frozen<list<int>>", [[], [-1], [1], [1, 0], [1, 5], [2]])
    assert_strictly_increasing("frozen<set<int>>", [set(), {-1}, {1}, {1, 2}, {2}])
    # a set's key ignores the order the client wrote the elements in
    t = parse_type("frozen<set<int>>")
    unsorted = b"\x00\x00\x00\x02" + b"\x00\x00\x00\x04\x00\x00\x00\x02" + b"\x00\x00\x00\x04\x00\x00\x00\x01"
    assert t.compare_key(unsorted) == t.compare_key(t.serialize({1, 2}))
    assert t.canonical(unsorted) == t.serialize({1, 2})
    assert_strictly_increasing("frozen<map<int, text>>", [{}, {1: "a", 2: ""}, {1: "b"}, {2: "a"}])
    assert_strictly_increasing("tuple<int, text>", [(None, "z"), (0, None), (0, ""), (0, "a"), (1, "a")])
    t = parse_type("tuple<int, text>")
    assert t.compare_key(t.serialize((1,))) < t.compare_key(t.serialize((1, None)))


# -- from_literal -------------------------------------------------------------------------------
def lit(cql: str, value: Any) -> bytes:
    return parse_type(cql).from_literal(value)


def ser(cql: str, value: Any) -> bytes:
    return driver_type(parse_type(cql)).serialize(value, 4)


def test_integer_literal_coercions() -> None:
    for cql in ("tinyint", "smallint", "int", "bigint", "varint"):
        assert lit(cql, -5) == ser(cql, -5)
    assert lit("decimal", 12) == ser("decimal", decimal.Decimal(12))
    assert lit("double", 3) == ser("double", 3.0)
    assert lit("float", 16777217) == ser("float", 16777216.0)  # rounds to nearest float32
    assert lit("timestamp", 1700000000123) == struct.pack(">q", 1700000000123)
    assert lit("date", 2**31) == ser("date", dt.date(1970, 1, 1))  # raw unsigned, epoch at 2**31
    assert lit("time", 1_000) == struct.pack(">q", 1_000)


def test_float_literals() -> None:
    assert lit("decimal", decimal.Decimal("1.50")) == ser("decimal", decimal.Decimal("1.50"))
    assert lit("decimal", decimal.Decimal("1E+3")) == b"\xff\xff\xff\xfd\x01"
    assert lit("double", decimal.Decimal("0.1")) == ser("double", 0.1)
    assert lit("float", decimal.Decimal("0.1")) == ser("float", 0.1)
    assert lit("double", float("nan")) == struct.pack(">d", float("nan"))
    assert lit("float", float("-inf")) == struct.pack(">f", float("-inf"))
    with decimal.localcontext(decimal.Context(prec=100)):
        # just above the midpoint of 1.0 and its float32 successor: a float64 step would land exactly on the
        # midpoint and round (ties to even) down to 1.0; Java's parseFloat rounds up.
        above_mid = decimal.Decimal(1) + decimal.Decimal(2) ** -24 + decimal.Decimal(2) ** -60
        exact_mid = decimal.Decimal(1) + decimal.Decimal(2) ** -24
    assert lit("float", above_mid) == struct.pack(">f", 1 + 2**-23)
    assert lit("float", exact_mid) == struct.pack(">f", 1.0)
    assert lit("float", -above_mid) == struct.pack(">f", -(1 + 2**-23))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5)),  # noqa: DTZ001
        ("2024-01-02 03:04:05+0000", dt.datetime(2024, 1, 2, 3, 4, 5)),  # noqa: DTZ001
        ("2024-01-02T03:04:05.123+01:00", dt.datetime(2024, 1, 2, 2, 4, 5, 123000)),  # noqa: DTZ001
        ("2024-01-02T03:04:05.1-0130", dt.datetime(2024, 1, 2, 4, 34, 5, 1000)),  # noqa: DTZ001
        # As Cassandra 4 reads them (TimestampSerializer: DateUtils.parseDateStrictly, patterns "...ss.SSSX", an
        # 'S' field an integer whatever its width): the digits after the seconds count milliseconds, '.5' is 5 ms
        ("2024-01-01T00:00:00.5Z", dt.datetime(2024, 1, 1, 0, 0, 0, 5000)),  # noqa: DTZ001
        ("2024-01-01T00:00:00.05Z", dt.datetime(2024, 1, 1, 0, 0, 0, 5000)),  # noqa: DTZ001
        ("2024-01-01 00:00:00.50", dt.datetime(2024, 1, 1, 0, 0, 0, 50000)),  # noqa: DTZ001
        ("2024-01-01T00:00:00.500Z", dt.datetime(2024, 1, 1, 0, 0, 0, 500000)),  # noqa: DTZ001
        ("2024-01-01T00:00:00.0999Z", dt.datetime(2024, 1, 1, 0, 0, 0, 999000)),  # noqa: DTZ001
        ("2024-01-02 03:04", dt.datetime(2024, 1, 2, 3, 4)),  # noqa: DTZ001
        ("2024-01-02", dt.datetime(2024, 1, 2)),  # noqa: DTZ001
        ("2024-01-02+02", dt.datetime(2024, 1, 1, 22)),  # noqa: DTZ001
        ("1969-12-31T23:59:59.999Z", dt.datetime(1969, 12, 31, 23, 59, 59, 999000)),  # noqa: DTZ001
        ("1700000000000", dt.datetime(2023, 11, 14, 22, 13, 20)),  # noqa: DTZ001
    ],
)
def test_timestamp_string_literals(text: str, expected: dt.datetime) -> None:
    assert lit("timestamp", text) == ser("timestamp", expected)


def test_other_string_literals() -> None:
    assert lit("date", "2024-01-02") == ser("date", dt.date(2024, 1, 2))
    assert lit("date", "2147483648") == ser("date", dt.date(1970, 1, 1))
    assert lit("time", "12:34:56.123456789") == struct.pack(">q", 45296123456789)
    assert lit("time", "01:02:03.5") == struct.pack(">q", 3723500000000)
    assert lit("time", "00:00:00") == struct.pack(">q", 0)
    assert lit("inet", "10.1.2.3") == b"\x0a\x01\x02\x03"
    assert lit("inet", "::1") == b"\x00" * 15 + b"\x01"
    # As Cassandra (InetAddress.getByName gives an Inet4Address for an IPv4-mapped address), in either spelling;
    # an IPv4-compatible address (::1.2.3.4) stays IPv6
    assert lit("inet", "::ffff:1.2.3.4") == lit("inet", "::FFFF:102:304") == b"\x01\x02\x03\x04"
    assert lit("inet", "::1.2.3.4") == b"\x00" * 12 + b"\x01\x02\x03\x04"
    assert lit("text", "héllo") == "héllo".encode()
    assert lit("ascii", "hello") == b"hello"
    assert lit("boolean", True) == b"\x01"
    assert lit("blob", b"\x00\xff") == b"\x00\xff"
    u1 = uuid.UUID("5a3e3b2c-1d2e-11ef-8000-0242ac120002")
    assert lit("timeuuid", u1) == u1.bytes
    assert lit("uuid", u1) == u1.bytes


def test_collection_literals() -> None:
    assert lit("list<int>", [3, 1]) == ser("list<int>", [3, 1])
    assert lit("set<int>", SetLiteral((3, 1, 3))) == ser("set<int>", [1, 3])  # stored sorted, deduplicated
    assert lit("set<int>", {}) == ser("set<int>", [])
    assert lit("map<text, int>", {}) == ser("map<text, int>", {})
    assert lit("map<text, int>", {"b": 1, "a": 2}) == ser("map<text, int>", {"a": 2, "b": 1})
    assert lit("tuple<int, text>", TupleLiteral((1, "a"))) == ser("tuple<int, text>", (1, "a"))
    assert lit("tuple<int, text>", TupleLiteral((1, None))) == ser("tuple<int, text>", (1, None))
    nested = "map<text, frozen<list<double>>>"
    assert lit(nested, {"a": [1, decimal.Decimal("2.5")]}) == ser(nested, {"a": [1.0, 2.5]})
    assert lit("set<timestamp>", SetLiteral(("2024-01-02", 0))) == ser("set<timestamp>", [0, 1704153600000])


@pytest.mark.parametrize(
    ("cql", "value", "message"),
    [
        ("int", "abc", "invalid string literal 'abc' for type int"),
        ("int", decimal.Decimal("3.5"), "invalid float literal 3.5 for type int"),
        ("int", 2**40, "invalid integer literal 1099511627776 for type int: out of range"),
        ("tinyint", 128, "out of range .-128, 127."),
        ("int", True, "invalid boolean literal true for type int"),
        ("boolean", 1, "invalid integer literal 1 for type boolean"),
        ("varint", decimal.Decimal("1.0"), "float literal 1.0 for type varint"),
        ("decimal", float("nan"), "float literal NaN for type decimal"),
        ("float", decimal.Decimal("1e40"), "out of range for a float"),
        ("double", decimal.Decimal("1e400"), "out of range for a double"),
        ("float", 2**200, "out of range for a float"),
        ("ascii", "héllo", "non-ASCII"),
        ("uuid", "5a3e3b2c-1d2e-11ef-8000-0242ac120002", "string literal .* for type uuid"),
        ("timeuuid", uuid.UUID(int=0x4000 << 64), "version 1 UUID, this one is version 4"),
        ("text", b"\x01", "blob literal 0x01 for type text"),
        ("blob", "0x01", "string literal '0x01' for type blob"),
        ("inet", "1.2.3", "not an IPv4 or IPv6 address"),
        ("timestamp", "2024-13-01", "month must be in 1..12"),
        ("timestamp", "2024-01-02T03:04:05.1234Z", "the digits after the seconds are milliseconds.*0 to 999"),
        ("timestamp", "2024-01-02T03:04:05.1000", "the digits after the seconds are milliseconds.*0 to 999"),
        ("timestamp", "yesterday", "expected yyyy-mm-dd"),
        ("timestamp", "2024-01-02T03:04:05+25:00", "invalid zone offset"),
        ("date", "2024-02-30", "day is out of range"),
        ("date", "4294967296", "raw date"),
        ("time", "24:00:00", "hours must be 0-23"),
        ("time", "12:00", "expected hh:mm:ss"),
        ("time", 86_400 * 10**9, "nanoseconds since midnight"),
        ("date", -1, "raw unsigned value"),
        ("list<int>", [1, None], "null is not allowed inside collections"),
        ("list<int>", SetLiteral((1,)), "invalid set literal for type list<int>"),
        ("set<int>", [1], "invalid list literal for type set<int>"),
        ("set<int>", {1: 2}, "invalid map literal for type set<int>"),
        ("map<int, int>", {1: None}, "null is not allowed inside collections"),
        ("tuple<int>", TupleLiteral((1, 2)), "too many elements: 2 for 1"),
        ("tuple<int>", [1], "invalid list literal for type frozen<tuple<int>>"),
        ("list<int>", ["a"], "invalid string literal 'a' for type int"),
        ("int", None, "null is not a literal"),
    ],
)
def test_literal_errors(cql: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        lit(cql, value)


# -- malformed bytes and bad Python values --------------------------------------------------------
@pytest.mark.parametrize(
    ("cql", "data", "message"),
    [
        ("int", b"\x00\x00\x01", "invalid int value 0x000001 .3 bytes.: expected 4 bytes"),
        ("bigint", b"", "expected 8 bytes"),
        ("boolean", b"\x00\x01", "expected 1 bytes"),
        ("text", b"\xff", "not UTF-8"),
        ("ascii", b"caf\xc3\xa9", "non-ASCII"),
        ("timeuuid", uuid.UUID(int=0x4000 << 64).bytes, "must be version 1"),
        ("uuid", b"\x00" * 15, "expected 16 bytes"),
        ("inet", b"\x00" * 5, "expected 4 or 16 bytes"),
        ("varint", b"", "empty values are not supported"),
        ("decimal", b"\x00\x00\x00\x01", "4-byte scale"),
        ("time", struct.pack(">q", -1), "outside one day"),
        ("list<int>", b"\x00\x00", "missing the 4-byte element count"),
        ("list<int>", b"\xff\xff\xff\xff", "negative element count"),
        ("list<int>", b"\x00\x00\x00\x02\x00\x00\x00\x04\x00\x00\x00\x01", "truncated after 1 of 2"),
        ("list<int>", b"\x00\x00\x00\x01\xff\xff\xff\xff", "null elements are not allowed"),
        ("list<int>", b"\x00\x00\x00\x00\x00", "1 trailing bytes"),
        ("list<int>", b"\x00\x00\x00\x01\x00\x00\x00\x09abc", "runs past the end"),
        ("list<int>", b"\x00\x00\x00\x01\x00\x00\x00\x02ab", "invalid int value"),
        ("map<int, text>", b"\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x01\xff", "not UTF-8"),
        ("tuple<int>", b"\xff\xff\xff\xff\xff\xff\xff\xff", "more than 1 components"),
        ("tuple<int, int>", b"\x00\x00", "truncated component length"),
    ],
)
def test_malformed_bytes(cql: str, data: bytes, message: str) -> None:
    t = parse_type(cql)
    with pytest.raises(InvalidValue, match=message):
        t.validate(data)
    with pytest.raises(InvalidValue, match=message):
        t.deserialize(data)


@pytest.mark.parametrize(
    ("cql", "value", "message"),
    [
        ("int", "1", "invalid value for int: '1' .str.; expected an int"),
        ("int", 2**31, "out of range"),
        ("int", True, "expected an int"),
        ("float", 1e39, "out of range"),
        ("text", b"x", "expected a str"),
        ("ascii", "é", "invalid value for ascii"),
        ("timeuuid", uuid.UUID(int=0x4000 << 64), "version 4 UUID, not version 1"),
        ("time", dt.time(1, tzinfo=dt.UTC), "has a time zone"),
        ("time", 86_400 * 10**9, "outside"),
        ("date", -1, "raw date"),
        ("inet", "localhost", "not an IPv4 or IPv6 address"),
        ("decimal", decimal.Decimal("NaN"), "NaN and Infinity are not decimals"),
        ("list<int>", [1, None], "null is not allowed inside a collection"),
        ("list<int>", {1}, "expected a list or tuple"),
        ("map<int, int>", {1: None}, "null is not allowed"),
        ("tuple<int>", (1, 2), "at most 1"),
    ],
)
def test_bad_python_values(cql: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        parse_type(cql).serialize(value)


def test_python_value_conversions() -> None:
    ts = parse_type("timestamp")
    aware = dt.datetime(2024, 1, 2, 4, 4, 5, 123999, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert ts.serialize(aware) == ser("timestamp", aware)
    assert ts.deserialize(ts.serialize(aware)) == dt.datetime(2024, 1, 2, 3, 4, 5, 123000)  # noqa: DTZ001
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 999500)  # noqa: DTZ001
    assert ts.serialize(before_epoch) == ser("timestamp", before_epoch)  # truncated toward zero, like the driver
    assert ts.deserialize(struct.pack(">q", 2**62)) == 2**62  # beyond datetime: the raw milliseconds
    date = parse_type("date")
    assert date.serialize(2**31 + 1) == ser("date", 2**31 + 1)
    assert date.deserialize(struct.pack(">I", 0)) == 0
    assert parse_type("inet").serialize(ipaddress.ip_address("::ffff:1.2.3.4")) == ser("inet", "::ffff:1.2.3.4")
    assert parse_type("time").deserialize(struct.pack(">q", 5)) == 5
    m = parse_type("map<frozen<list<int>>, int>")
    assert m.deserialize(m.serialize([([2], 1), ([1], 2)])) == [([1], 2), ([2], 1)]
    s = parse_type("set<frozen<list<int>>>")
    assert s.deserialize(s.serialize([[2], [1], [2]])) == [[1], [2]]
    assert parse_type("set<int>").deserialize(parse_type("set<int>").serialize({2, 1})) == frozenset({1, 2})
