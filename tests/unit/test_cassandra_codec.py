"""The event store's fast serializers make exactly the driver's bytes, or hand the value to the driver."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from cassandra import cqltypes
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.cassandra.codec import serializer
from shared.adapters.cassandra.layout import bucket_start, bucket_start_millis, day_of, day_of_millis
from shared.domain.times import EPOCH
from shared.domain.times import to_ms as milliseconds

PROTOCOL = 4
TIMESTAMP = cqltypes.DateType
DATE = cqltypes.SimpleDateType
TEXT_DOUBLE = cqltypes.lookup_casstype("MapType(UTF8Type, DoubleType)")
TEXT_TEXT = cqltypes.lookup_casstype("MapType(UTF8Type, UTF8Type)")

zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None,
                         timezone(timedelta(seconds=-1, microseconds=500))])
moments = st.builds(
    lambda moment, zone: moment.replace(tzinfo=zone),
    # hypothesis takes naive bounds and adds the zone itself; here the zone is added by hand.
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),  # noqa: DTZ001
    zones,
)
whole_millis = moments.map(lambda m: m.replace(microsecond=m.microsecond // 1000 * 1000))
names = st.text(min_size=0, max_size=20)
numbers = st.one_of(st.floats(allow_nan=False), st.integers(-(2**53), 2**53), st.booleans())


def both(cql_type: type, value: object) -> tuple[bytes, bytes]:
    return serializer(cql_type, PROTOCOL)(value), cql_type.serialize(value, PROTOCOL)


@given(st.one_of(moments, whole_millis, st.integers(-(2**63), 2**63 - 1)))
def test_timestamps_match_the_driver(moment: datetime | int) -> None:
    ours, drivers = both(TIMESTAMP, moment)
    assert ours == drivers


def test_a_timestamp_with_a_utc_offset_of_a_fraction_of_a_second_is_the_drivers() -> None:
    """The driver drops the sub-second part of the UTC time and adds the local microsecond back: with an offset that
    has a fraction of a second (legal in Python) that is up to a second away from the exact milliseconds."""
    serialize = serializer(TIMESTAMP, PROTOCOL)
    for moment in (datetime(2020, 1, 1, tzinfo=timezone(timedelta(microseconds=500))),
                   datetime(2020, 1, 1, 0, 0, 0, 1000, tzinfo=timezone(timedelta(seconds=1, microseconds=999000)))):
        assert serialize(moment) == TIMESTAMP.serialize(moment, PROTOCOL), moment


@given(st.dates(min_value=date(1, 1, 1)))
def test_dates_match_the_driver(day: date) -> None:
    ours, drivers = both(DATE, day)
    assert ours == drivers


@given(st.dictionaries(names, numbers, max_size=40))
def test_text_double_maps_match_the_driver(values: dict[str, float]) -> None:
    ours, drivers = both(TEXT_DOUBLE, values)
    assert ours == drivers


def test_a_text_double_map_layout_is_reused_only_for_the_same_keys_in_the_same_order() -> None:
    serialize = serializer(TEXT_DOUBLE, PROTOCOL)
    first, swapped, other = {"a": 1.0, "bb": 2.5}, {"bb": 2.5, "a": 1.0}, {"a": 1.0, "cc": 2.5}
    for values in (first, swapped, other, first, {"a": -0.0, "bb": 1e308}):
        assert serialize(values) == TEXT_DOUBLE.serialize(values, PROTOCOL)


SCALARS = {
    cqltypes.Int32Type: st.integers(-(2**31), 2**31 - 1),
    cqltypes.LongType: st.integers(-(2**63), 2**63 - 1),
    cqltypes.BooleanType: st.booleans(),
    cqltypes.UTF8Type: st.text(),
    cqltypes.VarcharType: st.text(),
}


@pytest.mark.parametrize("cql_type", list(SCALARS), ids=lambda t: t.__name__)
@given(data=st.data())
def test_scalars_match_the_driver(cql_type: type, data: st.DataObject) -> None:
    ours, drivers = both(cql_type, data.draw(SCALARS[cql_type]))
    assert ours == drivers


@given(st.dictionaries(names, st.text(max_size=30), max_size=20))
def test_text_text_maps_match_the_driver(values: dict[str, str]) -> None:
    ours, drivers = both(TEXT_TEXT, values)
    assert ours == drivers


@pytest.mark.parametrize(
    ("cql_type", "value"),
    [
        (TIMESTAMP, 1_763_900_000_123.9),  # a float of milliseconds
        (TIMESTAMP, date(2026, 11, 23)),
        (DATE, 20_000 + 2**31),  # an already offset int, as CQL writes it
        (DATE, datetime(2026, 11, 23, 12, tzinfo=UTC)),
        (TEXT_DOUBLE, {"a": None}),
        (TEXT_DOUBLE, {}),
        (TEXT_TEXT, {"a": None, "b": "x"}),
    ],
    ids=repr,
)
def test_values_outside_the_fast_path_get_the_drivers_bytes(cql_type: type, value: object) -> None:
    ours, drivers = both(cql_type, value)
    assert ours == drivers


@pytest.mark.parametrize(
    ("cql_type", "value"),
    [
        (TIMESTAMP, "yesterday"),
        (TIMESTAMP, 2**63),
        (TIMESTAMP, True),
        (DATE, object()),
        (TEXT_DOUBLE, {"a": "hot"}),
        (TEXT_DOUBLE, [1.0]),
        (TEXT_TEXT, {1: "x"}),
        (cqltypes.Int32Type, 2**31),
        (cqltypes.Int32Type, "7"),
        (cqltypes.LongType, 2**63),
        (cqltypes.BooleanType, None),
        (cqltypes.UTF8Type, b"bytes"),
        (cqltypes.VarcharType, 7),
        (cqltypes.UTF8Type, "\ud800"),
    ],
    ids=lambda v: "object()" if type(v) is object else repr(v),  # no address: pytest-xdist's workers must agree
)
def test_values_the_driver_refuses_are_refused_alike(cql_type: type, value: object) -> None:
    with pytest.raises(Exception) as drivers:
        cql_type.serialize(value, PROTOCOL)
    with pytest.raises(drivers.type):
        serializer(cql_type, PROTOCOL)(value)


@given(moments.filter(lambda m: m.tzinfo is not None), st.sampled_from([1, 7, 60, 300, 3600, 86400]))
def test_bucket_start_is_the_aligned_utc_start_of_the_span_holding_the_moment(moment: datetime, seconds: int) -> None:
    start = bucket_start(moment, seconds)
    assert start.tzinfo is UTC
    assert start <= moment < start + timedelta(seconds=seconds)
    _whole, rest = divmod(start - EPOCH, timedelta(seconds=seconds))
    assert rest == timedelta(0)


@given(moments.filter(lambda m: m.tzinfo is not None), st.sampled_from([1, 7, 60, 300, 3600, 86400]))
def test_bucket_and_day_on_milliseconds_are_those_of_the_moment(moment: datetime, seconds: int) -> None:
    millis = milliseconds(moment)
    whole = EPOCH + timedelta(milliseconds=millis)  # the moment as Cassandra keeps it
    assert bucket_start_millis(millis, seconds) == (bucket_start(whole, seconds) - EPOCH) // timedelta(milliseconds=1)
    assert day_of_millis(millis) == day_of(whole)
