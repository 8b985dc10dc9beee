"""``check_delivery`` against a small in-memory stand-in for the stores: it must catch every kind of loss."""

from __future__ import annotations

import json
import uuid
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from sluice.delivery import check_delivery, expected_windows, window_of
from sluice.loadgen import EventGenerator, LoadSpec, read_manifest

Row = namedtuple("Row", "event_id device_id event_time critical measurements")
FEATURES = {"changefeed", "enrichment"}
WINDOW = 60


class FakeProbe:
    """What a perfect pipeline would hold for a manifest; tests then break one thing."""

    def __init__(self, expected) -> None:
        self.settings = SimpleNamespace(enrichment=SimpleNamespace(window_seconds=WINDOW))
        self.rows = [Row(uuid.UUID(r["event_id"]), r["device_id"], None, r["critical"], r["measurements"])
                     for r in expected.valid.values()]
        self.letters = [{"kind": "rejected", "original_text": r["body"], "reason": f"event is invalid: {r['reason']}: x",
                         "blob": f"rejected/{i}"} for i, r in enumerate(expected.invalid)]
        self.latest_ids = {d: r["event_id"] for d, r in expected.latest_by_device().items()}
        self.redis_ids = set(expected.critical)
        wanted = expected_windows(expected, WINDOW)
        self.windows = {w for w, _ in wanted}
        self.stats = {key: {"count": v["count"], "critical": v["critical"], "measurements": {"temperature": v["temperature"]}}
                      for key, v in wanted.items()}

    def stored_rows(self, start, end):
        return list(self.rows)

    def dead_letters(self, since):
        return list(self.letters)

    def latest(self, devices):
        return {d: self.latest_ids[d] for d in devices if d in self.latest_ids}

    def critical_in_redis(self, ids):
        return {i for i in ids if i in self.redis_ids}

    def enriched_windows(self, windows):
        return set(windows) & self.windows

    def window_stats(self, windows):
        return {k: v for k, v in self.stats.items() if k[0] in set(windows)}


@pytest.fixture
def expected(tmp_path):
    clock = iter(datetime(2026, 11, 23, 12, 0, tzinfo=UTC) + timedelta(milliseconds=250 * i) for i in range(10_000))
    generator = EventGenerator(LoadSpec(seed=9, devices=8, critical_ratio=0.1, duplicate_ratio=0.05,
                                        invalid_ratio=0.05, out_of_order_ratio=0.1), clock=lambda: next(clock))
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(p.manifest_record(1.0, "0")) + "\n" for p in generator.take(800)))
    return read_manifest(path)


def _check(expected, probe):
    return check_delivery(expected, probe, features=FEATURES, since=datetime(2026, 11, 23, tzinfo=UTC))


def test_a_complete_delivery_passes_with_its_figures(expected):
    report = _check(expected, FakeProbe(expected))
    assert report.ok, report.problems
    assert report.figures["stored"] == len(expected.valid)
    assert report.figures["dead_lettered"] == len(expected.invalid) > 0
    assert report.figures["critical_in_redis"] == len(expected.critical) > 0
    assert report.figures["windows_enriched"] == report.figures["windows"] > 1


def test_expected_windows_are_computed_from_the_events():
    records = {
        "a": {"event_id": "a", "device_id": "d", "timestamp": "2026-11-23T12:00:01.000+00:00", "critical": False,
              "measurements": {"temperature": 10.0}},
        "b": {"event_id": "b", "device_id": "d", "timestamp": "2026-11-23T12:00:59.999+00:00", "critical": True,
              "measurements": {"temperature": 95.0}},
        "c": {"event_id": "c", "device_id": "d", "timestamp": "2026-11-23T12:00:30.000+00:00", "critical": False,
              "measurements": {"temperature": 20.0}},
        "e": {"event_id": "e", "device_id": "d", "timestamp": "2026-11-23T12:01:00.000+00:00", "critical": False,
              "measurements": {"temperature": 1.0}},
    }
    wanted = expected_windows(SimpleNamespace(valid=records), 60)
    first = window_of(datetime(2026, 11, 23, 12, 0, tzinfo=UTC), 60)
    assert wanted[(first, "d")] == {"count": 3, "critical": 1, "temperature": {
        "count": 3, "min": 10.0, "max": 95.0, "avg": 125.0 / 3, "last": 95.0}}
    assert wanted[(first + timedelta(minutes=1), "d")]["count"] == 1


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda p, e: p.rows.pop(), "valid events are not stored"),
        (lambda p, e: p.rows.append(p.rows[0]), "stored more than once"),
        (lambda p, e: p.rows.__setitem__(0, p.rows[0]._replace(device_id="elsewhere")), "under another device"),
        (lambda p, e: p.letters.pop(), "invalid events are not dead-lettered"),
        (lambda p, e: p.letters[0].update(reason="something else"), "do not name the problem"),
        (lambda p, e: p.letters.append({"kind": "batch", "blob": "batches/x"}), "whole batches were dead-lettered"),
        (lambda p, e: p.latest_ids.update({next(iter(p.latest_ids)): "an older one"}), "latest state is not"),
        (lambda p, e: p.redis_ids.discard(next(iter(e.critical))), "critical events are not in Redis"),
        (lambda p, e: p.windows.discard(min(p.windows)), "windows are not enriched"),
        (lambda p, e: p.stats[next(iter(p.stats))].update(count=0), "device windows differ"),
        (lambda p, e: p.stats[next(iter(p.stats))]["measurements"]["temperature"].update(avg=-1.0), "differ"),
    ],
)
def test_each_kind_of_loss_is_reported(expected, breakage, message):
    probe = FakeProbe(expected)
    breakage(probe, expected)
    report = _check(expected, probe)
    assert not report.ok
    assert any(message in problem for problem in report.problems), report.problems
