"""Every CQL type written and read back through the driver: bound (prepared) and as CQL literals (simple)."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import itertools
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra.cluster import Session
from cassandra.encoder import Encoder
from cassandra.util import Date, Time, uuid_from_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

_ts = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1))  # noqa: DTZ001
COLUMNS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "a": ("ascii", st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)),
    "t": ("text", st.text(max_size=20)),
    "i": ("int", st.integers(-(2**31), 2**31 - 1)),
    "bi": ("bigint", st.integers(-(2**63), 2**63 - 1)),
    "si": ("smallint", st.integers(-(2**15), 2**15 - 1)),
    "ti": ("tinyint", st.integers(-128, 127)),
    "vi": ("varint", st.integers(-(2**130), 2**130)),
    "de": ("decimal", st.decimals(allow_nan=False, allow_infinity=False)),
    "f": ("float", st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "d": ("double", st.floats(allow_nan=False, allow_infinity=False)),
    "bo": ("boolean", st.booleans()),
    "bl": ("blob", st.binary(max_size=30)),
    "u": ("uuid", st.uuids()),
    "tu": ("timeuuid", st.builds(lambda n, node, seq: uuid_from_time(n / 1000, node, seq), st.integers(0, 2**40),
                                 st.integers(0, 2**48 - 1), st.integers(0, 2**14 - 1))),
    "ts": ("timestamp", _ts.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))),
    "da": ("date", st.dates()),
    "tm": ("time", st.integers(0, 86_400 * 10**9 - 1)),
    "ip": ("inet", st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)),
    "li": ("list<int>", st.lists(st.integers(-5, 5), max_size=4)),
    "se": ("set<text>", st.sets(st.text(max_size=5), max_size=4)),
    "ma": ("map<text, frozen<list<bigint>>>", st.dictionaries(st.text(max_size=5),
                                                              st.lists(st.integers(0, 9), max_size=3), max_size=3)),
    "tp": ("tuple<int, text, boolean>", st.tuples(st.integers(-9, 9), st.text(max_size=5), st.booleans())),
    "fz": ("frozen<map<int, frozen<set<uuid>>>>", st.dictionaries(st.integers(-9, 9),
                                                                  st.sets(st.uuids(), max_size=2), max_size=3)),
}
NAMES = list(COLUMNS)
ROW = st.fixed_dictionaries({n: st.one_of(st.none(), COLUMNS[n][1]) for n in NAMES})
_keys = itertools.count()


def normalise(name: str, value: Any) -> Any:
    """What the driver hands back for ``value`` written to column ``name`` (empty collections read as null)."""
    kind = COLUMNS[name][0]
    if value is None or (kind.startswith(("list", "set", "map")) and not value):
        return None
    if kind == "date":
        return Date(value)
    if kind == "time":
        return Time(value)
    if kind == "float":
        import struct
        return struct.unpack(">f", struct.pack(">f", value))[0]
    if kind == "inet":
        return str(ipaddress.ip_address(value))
    if kind.startswith("frozen<map"):
        return {k: set(v) for k, v in value.items()}  # a frozen empty collection stays empty, not null
    return value


def readable(name: str, value: Any) -> Any:
    kind = COLUMNS[name][0]
    if value is None:
        return None
    if kind.startswith("set"):
        return set(value)
    if kind.startswith("map"):
        return {k: list(v) for k, v in value.items()}
    if kind.startswith("frozen<map"):
        return {k: set(v) for k, v in value.items()}
    if kind == "inet":
        return str(ipaddress.ip_address(value))
    return value


@pytest.fixture
def table(session: Session) -> Iterator[Session]:
    cols = ", ".join(f"{n} {COLUMNS[n][0]}" for n in NAMES)
    session.execute(f"CREATE TABLE t (k int PRIMARY KEY, {cols})")
    yield session


def _check(session: Session, key: int, row: dict[str, Any]) -> None:
    got = session.execute(f"SELECT {', '.join(NAMES)} FROM t WHERE k = %s", (key,)).one()
    assert got is not None, f"row {key} was not written"
    for n in NAMES:
        assert readable(n, getattr(got, n)) == normalise(n, row[n]), n


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=ROW)
def test_bound_values_round_trip(table: Session, row: dict[str, Any]) -> None:
    key = next(_keys)
    ps = table.prepare(f"INSERT INTO t (k, {', '.join(NAMES)}) VALUES (?{', ?' * len(NAMES)})")
    table.execute(ps, (key, *[row[n] for n in NAMES]))
    _check(table, key, row)
    # and as a bound lookup: every type is also accepted as a prepared SELECT's result metadata
    sel = table.prepare(f"SELECT {', '.join(NAMES)} FROM t WHERE k = ?")
    assert [c.name for c in sel.column_metadata] == ["k"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=ROW)
def test_cql_literals_round_trip(table: Session, row: dict[str, Any]) -> None:
    """The driver renders simple-statement parameters as CQL literals: this exercises the literal parser."""
    key = next(_keys)
    literal_row = dict(row)
    for name in ("da", "tm"):  # the driver has no literal encoder for raw ints as date/time
        if literal_row[name] is not None:
            literal_row[name] = normalise(name, literal_row[name])
    if row["de"] is not None:  # the driver renders a Decimal literal through float(): expect what it sent
        as_float = float(row["de"])
        row = {**row, "de": decimal.Decimal(repr(as_float)) if math.isfinite(as_float) else None}
        literal_row["de"] = row["de"]
    if row["ip"] is not None:  # a literal is read as Java's InetAddress.getByName reads it: an IPv4-mapped IPv6
        mapped = ipaddress.ip_address(row["ip"])  # address is the IPv4 one (a bound value keeps its 16 bytes)
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
            row = {**row, "ip": str(mapped.ipv4_mapped)}
    tp = literal_row.pop("tp")  # the driver renders a Python tuple as a list literal (for IN): write it by hand
    names = list(literal_row)
    table.execute(f"INSERT INTO t (k, {', '.join(names)}) VALUES (%s{', %s' * len(names)})",
                  (key, *literal_row.values()))
    if tp is not None:
        encode = Encoder().cql_encode_all_types
        table.execute(f"UPDATE t SET tp = ({', '.join(encode(v) for v in tp)}) WHERE k = {key}")
    _check(table, key, row)


def test_special_literals(table: Session) -> None:
    table.execute("INSERT INTO t (k, f, d, ts, da, tm, u, tu, bl, de, vi, ip) VALUES (-1, NaN, -Infinity, "
                  "'2024-01-02 03:04:05.678+0100', '2024-02-29', '12:34:56.789', "
                  "550e8400-e29b-41d4-a716-446655440000, now(), 0x, -1.5e-3, -12345678901234567890, '::1')")
    r = table.execute("SELECT f, d, ts, da, tm, u, tu, bl, de, vi, ip FROM t WHERE k = -1").one()
    assert r.f != r.f and r.d == float("-inf")
    assert r.ts == dt.datetime(2024, 1, 2, 2, 4, 5, 678000)  # noqa: DTZ001 (the driver returns naive UTC)
    assert r.da == Date(dt.date(2024, 2, 29)) and r.tm == Time("12:34:56.789")
    assert r.u == uuid.UUID("550e8400-e29b-41d4-a716-446655440000") and r.tu.version == 1
    assert r.bl == b"" and r.de == decimal.Decimal("-0.0015") and r.vi == -12345678901234567890
    assert r.ip == "::1"


@pytest.mark.parametrize(("column", "literal", "message"), [
    ("i", "2147483648", "int"),
    ("ti", "128", "tinyint"),
    ("u", "'not-a-uuid'", "uuid"),
    ("da", "'2024-13-01'", "date"),
    ("li", "{1, 2}", "list"),
])
def test_bad_literals_are_invalid(table: Session, column: str, literal: str, message: str) -> None:
    from cassandra import InvalidRequest
    with pytest.raises(InvalidRequest, match=message):
        table.execute(f"INSERT INTO t (k, {column}) VALUES (1, {literal})")


def test_a_bound_frozen_set_is_stored_sorted_and_deduplicated(session: Session) -> None:
    """Cassandra 4 binds a set by deserializing it into a set ordered by the element comparator and serializing
    that (Sets.Marker.bind, Sets.Value.fromSerialized: a TreeSet), so a frozen set is one value whatever the order
    and repetitions its client wrote: a key written as ['b', 'a', 'b'] is found by {'a', 'b'}, bound or literal. The
    driver writes a set in its iteration order, which for strings changes from one process to the next."""
    session.execute("CREATE TABLE fs (k frozen<set<text>> PRIMARY KEY, v int)")
    session.execute(session.prepare("INSERT INTO fs (k, v) VALUES (?, ?)"), (["b", "a", "b"], 1))
    assert [r.v for r in session.execute(session.prepare("SELECT v FROM fs WHERE k = ?"), (["a", "b"],))] == [1]
    assert [r.v for r in session.execute(session.prepare("SELECT v FROM fs WHERE k IN ?"), ([["b", "a"]],))] == [1]
    assert [(list(r.k), r.v) for r in session.execute("SELECT k, v FROM fs WHERE k = {'b', 'a'}")] == [(["a", "b"], 1)]


def test_a_bound_frozen_map_is_stored_in_key_order_and_nested_sets_sorted(session: Session) -> None:
    """A bound map is rebuilt ordered by its key comparator (Maps.Marker.bind, Maps.Value.fromSerialized: a TreeMap),
    so Cassandra stores and returns a frozen map's entries in key order; the driver returns them in the order they
    come (OrderedMapSerializedKey). A set inside a frozen collection is re-serialized sorted too (its element type's
    SetSerializer), so a key holding one is found whatever order its elements were bound in."""
    session.execute("CREATE TABLE fm (k int PRIMARY KEY, m frozen<map<int, text>>)")
    session.execute(session.prepare("INSERT INTO fm (k, m) VALUES (?, ?)"), (1, {2: "x", 1: "y", 3: "z"}))
    assert list(session.execute("SELECT m FROM fm WHERE k = 1").one().m.items()) == [(1, "y"), (2, "x"), (3, "z")]
    session.execute("CREATE TABLE fn (k frozen<list<frozen<set<int>>>> PRIMARY KEY, v int)")
    session.execute(session.prepare("INSERT INTO fn (k, v) VALUES (?, ?)"), ([[3, 1, 2], [5, 4]], 1))
    assert [r.v for r in session.execute("SELECT v FROM fn WHERE k = [{1, 2, 3}, {4, 5}]")] == [1]


def test_a_timestamp_literal_reads_the_digits_after_the_seconds_as_milliseconds(session: Session) -> None:
    """As Cassandra 4's TimestampSerializer (an 'S' field of its "...ss.SSSX" patterns is a count of milliseconds):
    '...00.5Z' is 5 ms past the second, where a decimal fraction would make it 500."""
    session.execute("CREATE TABLE tsl (k int PRIMARY KEY, ts timestamp)")
    session.execute("INSERT INTO tsl (k, ts) VALUES (1, '2024-01-01T00:00:00.5Z')")
    session.execute("INSERT INTO tsl (k, ts) VALUES (2, '2024-01-01T00:00:00.500Z')")
    assert [r.ts.microsecond for r in session.execute("SELECT ts FROM tsl WHERE k IN (1, 2)")] == [5_000, 500_000]
