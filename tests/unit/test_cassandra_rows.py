"""Result rows: the driver's ``named_tuple_factory`` rows, from one class per column list, and their values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cassandra.cqltypes import DateType
from cassandra.marshal import int64_pack
from cassandra.query import named_tuple_factory
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.cassandra.rows import named_rows, row_type, stored_time
from shared.domain.times import from_ms, to_ms

COLUMN_LISTS = [
    ["event_id", "device_id", "measurements"],
    ["count"],  # SELECT COUNT(*)
    ["enqueued_at", "written"],  # an alias
    ["system.count(*)", "[applied]", "a b"],  # names the driver cleans
    ["a", "a"],  # a duplicate: positional names, as the driver falls back to
    ["class", "1st"],  # a keyword, a leading digit
]


@pytest.mark.parametrize("columns", COLUMN_LISTS, ids=lambda c: ",".join(c))
def test_rows_equal_the_drivers_named_tuples_field_for_field(columns: list[str]) -> None:
    raw = [tuple(f"{c}-{n}" for c in range(len(columns))) for n in range(3)]
    ours, theirs = named_rows(columns, raw), named_tuple_factory(columns, raw)
    assert ours == theirs
    assert [row._fields for row in ours] == [row._fields for row in theirs]
    assert [row._asdict() for row in ours] == [row._asdict() for row in theirs]


def test_one_class_serves_every_result_with_the_same_columns() -> None:
    first = named_rows(["event_id", "device_id"], [(1, "a")])[0]
    second = named_rows(("event_id", "device_id"), [(2, "b"), (3, "c")])
    assert all(type(row) is type(first) for row in second)
    assert type(first) is row_type(("event_id", "device_id"))
    assert second[1].device_id == "c" and type(named_rows(["device_id"], [("x",)])[0]) is not type(first)


def test_no_rows_is_an_empty_list() -> None:
    assert named_rows(["event_id"], []) == []


def test_a_map_column_becomes_the_dict_the_driver_map_holds() -> None:
    from cassandra.cqltypes import UTF8Type
    from cassandra.util import OrderedMapSerializedKey

    from shared.adapters.cassandra.rows import as_dict

    decoded = OrderedMapSerializedKey(UTF8Type, 4)  # what the driver decodes a map<text, double> into
    for key, value in {"temperature": 21.5, "humidity": 40.0, "über": -1.0}.items():
        decoded._insert_unchecked(key, UTF8Type.serialize(key, 4), value)
    assert as_dict(decoded) == dict(decoded) == {"temperature": 21.5, "humidity": 40.0, "über": -1.0}
    assert type(as_dict(decoded)) is dict
    assert as_dict(None) == {} and as_dict({"a": 1}) == {"a": 1}
    assert as_dict(decoded) is not as_dict(decoded)  # a new dict each time: callers may change theirs


def test_map_keys_are_shared_between_rows() -> None:
    # Each decoded row has strings of its own; a window of events held for enrichment keeps one per key per event.
    from cassandra.cqltypes import lookup_casstype

    from shared.adapters.cassandra.rows import as_dict

    map_type = lookup_casstype("MapType(UTF8Type, DoubleType)")
    serialized = map_type.serialize({"temperature": 21.5, "humidity": 40.0}, 4)
    first, second = map_type.deserialize(serialized, 4), map_type.deserialize(serialized, 4)
    assert not any(a is b for a, b in zip(first, second, strict=True))  # the driver's own keys are distinct objects
    ours = [as_dict(first), as_dict(second)]
    assert ours[0] == ours[1] == {"temperature": 21.5, "humidity": 40.0}
    assert all(a is b for a, b in zip(ours[0], ours[1], strict=True))
    assert all(a is b for a, b in zip(ours[0], as_dict({"temperature": 1.0, "humidity": 2.0}), strict=True))


@given(st.integers(min_value=to_ms(datetime(1, 1, 1, tzinfo=UTC)),
                   max_value=to_ms(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC))))
def test_a_timestamp_the_driver_decodes_is_the_millisecond_stored(millis: int) -> None:
    """The driver decodes a ``timestamp`` through a float of seconds, a few microseconds off far from 1970."""
    decoded = DateType.deserialize(int64_pack(millis), 4)
    assert stored_time(decoded) == from_ms(millis)


@pytest.mark.parametrize("stored", ["1500-06-01T12:00:00.123", "0800-01-01T00:00:00.001", "0001-01-01T00:00:00.999",
                                    "9999-12-31T23:59:59.999", "2026-11-23T12:00:00.123", "1970-01-01T00:00:00.000"])
def test_an_old_or_far_timestamp_reads_as_the_millisecond_stored(stored: str) -> None:
    moment = datetime.fromisoformat(stored + "+00:00")
    decoded = DateType.deserialize(int64_pack(to_ms(moment)), 4)
    assert stored_time(decoded) == moment and stored_time(decoded).tzinfo is UTC
    assert stored_time(None) is None
