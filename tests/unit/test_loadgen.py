"""The load generator's events against the contract and the ingest's own parser (no Event Hubs here)."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records
from shared.domain.rules import MeasurementRule, is_critical
from sluice.loadgen import INVALID_VARIANTS, EventGenerator, LoadSpec, device_partition, read_manifest
from sluice.partitioning import partition_for_key

DEFAULT_RULE = [MeasurementRule(measurement="temperature", op=">", value=90)]


def _generate(n: int, **spec) -> list:
    return EventGenerator(LoadSpec(**{"seed": 7, **spec})).take(n)


def _parse(planned) -> tuple:
    records = [
        RawRecord(p.body, EventMetadata(partition_key=p.device_id, sequence_number=i)) for i, p in enumerate(planned)
    ]
    return parse_records(records, limits=Limits())


def test_kinds_follow_the_ratios_exactly():
    events = _generate(20_000, critical_ratio=0.01, duplicate_ratio=0.002, invalid_ratio=0.001, out_of_order_ratio=0.05)
    kinds = Counter(p.kind for p in events)
    assert kinds["duplicate"] == pytest.approx(40, abs=1)
    assert kinds["invalid"] == pytest.approx(20, abs=1)
    valid = [p for p in events if p.kind == "valid"]
    # The critical and out-of-order ratios apply to the valid events.
    assert sum(p.critical for p in valid) == pytest.approx(len(valid) * 0.01, abs=1)
    assert sum(p.out_of_order for p in valid) == pytest.approx(len(valid) * 0.05, abs=1)


def test_the_ingest_parser_accepts_valid_events_refuses_invalid_ones_and_drops_duplicates():
    events = _generate(3000, duplicate_ratio=0.01, invalid_ratio=0.01, critical_ratio=0.1)
    parsed = _parse(events)
    valid_ids = {p.event_id for p in events if p.kind == "valid"}
    assert {str(e.event_id) for e in parsed.oks} == valid_ids
    assert len(parsed.oks) == len(valid_ids)
    # Duplicates repeat the exact bytes of an earlier valid event, so the parser counts them as duplicates.
    duplicates = [p for p in events if p.kind == "duplicate"]
    assert len(duplicates) == pytest.approx(30, abs=1)
    assert parsed.duplicates == len(duplicates)
    assert all(d.event_id in valid_ids for d in duplicates)
    invalid = [p for p in events if p.kind == "invalid"]
    assert len(invalid) == pytest.approx(30, abs=1)
    assert len(parsed.errs) == len(invalid)
    by_index = {err.metadata.sequence_number: err for err in parsed.errs}
    for index, planned in enumerate(events):
        if planned.kind == "invalid":
            assert planned.reason in by_index[index].reason, (planned.body, by_index[index].reason)


@pytest.mark.parametrize(("name", "make", "fragment"), INVALID_VARIANTS, ids=[v[0] for v in INVALID_VARIANTS])
def test_every_invalid_variant_is_refused_with_its_reason(name, make, fragment):
    generator = EventGenerator(LoadSpec(seed=1))
    valid = generator.take(1)[0]
    body = make(json.loads(valid.body))
    parsed = parse_records([RawRecord(body, EventMetadata())], limits=Limits())
    assert not parsed.oks
    assert len(parsed.errs) == 1
    assert fragment in parsed.errs[0].reason


def test_all_invalid_variants_come_up_in_turn():
    events = [p for p in _generate(2000, invalid_ratio=0.01) if p.kind == "invalid"]
    assert {p.reason for p in events} == {fragment for _, _, fragment in INVALID_VARIANTS}


def test_critical_events_are_critical_by_severity_and_by_the_default_rule_and_others_are_not():
    events = [p for p in _generate(5000, critical_ratio=0.05) if p.kind == "valid"]
    for p in events:
        assert is_critical(p.severity, p.measurements, DEFAULT_RULE) == p.critical
        assert is_critical(p.severity, p.measurements, []) == p.critical
        assert DEFAULT_RULE[0].matches(p.measurements) == p.critical


def test_out_of_order_events_are_older_than_the_device_newest_and_never_its_latest():
    events = [p for p in _generate(5000, devices=50, out_of_order_ratio=0.1) if p.kind == "valid"]
    newest: dict[str, datetime] = {}
    for p in events:
        if p.out_of_order:
            assert p.timestamp < newest[p.device_id]
            assert newest[p.device_id] - p.timestamp <= timedelta(seconds=120)
        else:
            assert p.device_id not in newest or p.timestamp > newest[p.device_id]
            newest[p.device_id] = p.timestamp


def test_timestamps_carry_an_offset_and_are_stored_as_the_same_instant():
    events = [p for p in _generate(2000) if p.kind == "valid"]
    offsets = Counter(json.loads(p.body)["timestamp"][-6:] for p in events)
    assert offsets["+00:00"] > 1500 and len(offsets) > 1
    for p, event in zip(events, _parse(events).oks, strict=True):
        assert event.timestamp == p.timestamp
        assert p.timestamp.tzinfo is UTC


def test_same_seed_same_events():
    clock = lambda: datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # noqa: E731
    a = EventGenerator(LoadSpec(seed=3), clock=clock).take(500)
    b = EventGenerator(LoadSpec(seed=3), clock=clock).take(500)
    c = EventGenerator(LoadSpec(seed=4), clock=clock).take(500)
    assert [p.body for p in a] == [p.body for p in b]
    assert [p.body for p in a] != [p.body for p in c]


def test_devices_are_the_configured_number():
    events = _generate(5000, devices=20, device_prefix="bench-")
    assert {p.device_id for p in events} == {f"bench-{i:05d}" for i in range(20)}


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"devices": 0}, "devices"),
        ({"rate": 0}, "rate"),
        ({"invalid_ratio": 1.5}, "invalid-ratio"),
        ({"critical_ratio": -0.1}, "critical-ratio"),
        ({"duplicate_ratio": 0.6, "invalid_ratio": 0.6}, "duplicate-ratio + invalid-ratio"),
    ],
)
def test_bad_specs_are_refused_naming_the_option(spec, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        LoadSpec(**spec)


def test_total_comes_from_count_or_rate_times_duration():
    assert LoadSpec(rate=500, duration=3).total == 1500
    assert LoadSpec(rate=500, duration=3, count=10).total == 10
    assert LoadSpec(duration=None).total is None


def test_devices_go_where_event_hubs_puts_their_partition_key_and_spread():
    partitions = ["0", "1", "2", "3"]
    devices = [f"dev-{i:05d}" for i in range(1000)]
    placed = [device_partition(d, partitions) for d in devices]
    assert placed == [partitions[partition_for_key(d, 4)] for d in devices]
    assert all(count > 150 for count in Counter(placed).values())
    # A key with a negative hash code: the service (and so the emulator) says 4, the Python SDK's resolver 7.
    assert device_partition("alphabet", [str(i) for i in range(11)]) == "4"


def test_manifest_round_trip_and_latest_by_device(tmp_path):
    events = _generate(3000, devices=30, duplicate_ratio=0.01, invalid_ratio=0.01, out_of_order_ratio=0.2)
    path = tmp_path / "manifest.jsonl"
    with path.open("w") as handle:
        for p in events:
            handle.write(json.dumps(p.manifest_record(1.0, "0")) + "\n")
    expected = read_manifest(path)
    valid = [p for p in events if p.kind == "valid"]
    assert set(expected.valid) == {p.event_id for p in valid}
    assert expected.duplicates == sum(p.kind == "duplicate" for p in events) > 0
    assert [r["body"].encode() for r in expected.invalid] == [p.body for p in events if p.kind == "invalid"]
    latest = expected.latest_by_device()
    for device in {p.device_id for p in valid}:
        newest = max((p for p in valid if p.device_id == device), key=lambda p: p.timestamp)
        assert latest[device]["event_id"] == newest.event_id
        assert not latest[device]["out_of_order"]
    assert set(expected.critical) == {p.event_id for p in valid if p.critical}


def test_a_bad_manifest_line_is_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "valid", "event_id": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_manifest(path)
