"""Result rows: the driver's ``named_tuple_factory`` rows, from one class per column list."""

from __future__ import annotations

import pytest
from cassandra.query import named_tuple_factory

from shared.adapters.cassandra.rows import named_rows, row_type

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
