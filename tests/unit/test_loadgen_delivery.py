"""``check_delivery`` against a small in-memory stand-in for the stores: it must catch every kind of loss."""

from __future__ import annotations

import json
import uuid
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from sluice.delivery import check_delivery, window_figures, window_of
from sluice.loadgen import EventGenerator, LoadSpec, read_manifest

Row = namedtuple("Row", "event_id device_id event_time critical measurements")
FEATURES = {"changefeed", "enrichment"}
WINDOW = 60


class FakeProbe:
    """What a perfect pipeline would hold for a manifest; tests then break one thing."""

    def __init__(self, expected) -> None:
        self.settings = SimpleNamespace(enrichment=SimpleNamespace(window_seconds=WINDOW))
        self.rows = [Row(uuid.UUID(r["event_id"]), r["device_id"],
                         datetime.fromisoformat(r["timestamp"]).replace(tzinfo=None), r["critical"], r["measurements"])
                     for r in expected.valid.values()]
        self.letters = [
            {
                "kind": "rejected",
                "original_text": r["body"],
                "reason": f"event is invalid: {r['reason']}: x",
                "blob": f"rejected/{i}",
            }
            for i, r in enumerate(expected.invalid)
        ]
        self.latest_ids = {d: r["event_id"] for d, r in expected.latest_by_device().items()}
        self.redis_ids = set(expected.critical)
        # What enrichment writes, computed here independently of window_figures.
        groups: dict = {}
        for r in sorted(expected.valid.values(), key=lambda r: (r["timestamp"], r["event_id"])):
            key = (window_of(datetime.fromisoformat(r["timestamp"]), WINDOW), r["device_id"])
            group = groups.setdefault(key, {"count": 0, "critical": 0, "measurements": {}})
            group["count"] += 1
            group["critical"] += r["critical"]
            for name, value in r["measurements"].items():
                values = group["measurements"].setdefault(name, [])
                values.append(value)
        self.stats = {key: {"count": g["count"], "critical": g["critical"], "measurements": {
            name: {"count": len(v), "min": min(v), "max": max(v), "avg": sum(v) / len(v), "last": v[-1]}
            for name, v in g["measurements"].items()}} for key, g in groups.items()}
        self.windows = {w for w, _ in self.stats}
        self.downloads: list[bool] = []

    def stored_rows(self, start, end):
        return list(self.rows)

    def dead_letters(self, since, *, download=True):
        self.downloads.append(download)
        return list(self.letters) if download else [{"blob": letter["blob"]} for letter in self.letters]

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


def test_window_figures_are_computed_from_the_stored_rows():
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    rows = [
        Row(uuid.UUID(int=1), "d", at + timedelta(seconds=1), False, {"temperature": 10.0}),
        Row(uuid.UUID(int=3), "d", at + timedelta(seconds=59.999), True, {"temperature": 95.0, "pressure": 1.0}),
        Row(uuid.UUID(int=2), "d", (at + timedelta(seconds=59.999)).replace(tzinfo=None), False, {"temperature": 20.0}),
        Row(uuid.UUID(int=4), "d", at + timedelta(seconds=60), False, {"temperature": 1.0}),
        Row(uuid.UUID(int=5), "x", at - timedelta(seconds=1), False, {"temperature": 1.0}),
    ]
    figures = window_figures(rows, {at, at + timedelta(minutes=1)}, 60)
    # Two events share the newest millisecond: the larger event id is the last one.
    assert figures[(at, "d")] == {"count": 3, "critical": 1, "measurements": {
        "temperature": {"count": 3, "min": 10.0, "max": 95.0, "avg": 125.0 / 3, "last": 95.0},
        "pressure": {"count": 1, "min": 1.0, "max": 1.0, "avg": 1.0, "last": 1.0}}}
    assert figures[(at + timedelta(minutes=1), "d")]["count"] == 1
    assert (at - timedelta(minutes=1), "x") not in figures  # not a window asked for


def test_a_whole_dead_lettered_batch_is_reported_when_no_invalid_event_was_sent(tmp_path):
    """docs/local-stack.md (bounded mode): no whole batch dead-lettered, also for a run with ``--invalid-ratio 0``
    (its events may be stored anyway, e.g. an exact redelivery of a batch stored before). The letters are then
    listed by name only: there is no invalid event to match with their bodies."""
    clock = iter(datetime(2026, 11, 23, 12, 0, tzinfo=UTC) + timedelta(milliseconds=250 * i) for i in range(1_000))
    generator = EventGenerator(LoadSpec(seed=9, devices=4, invalid_ratio=0), clock=lambda: next(clock))
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(p.manifest_record(1.0, "0")) + "\n" for p in generator.take(50)))
    expected = read_manifest(path)
    assert expected.valid and not expected.invalid
    probe = FakeProbe(expected)
    assert _check(expected, probe).ok

    probe.letters.append({"kind": "batch", "blob": "batches/2026/11/23/p0/10-19-hub.0123456789.json"})
    report = _check(expected, probe)

    assert not report.ok
    assert any("1 whole batches were dead-lettered" in problem for problem in report.problems), report.problems
    assert probe.downloads == [False, False]


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
        (lambda p, e: p.stats[next(iter(p.stats))]["measurements"].pop("humidity"), "differ"),
        (lambda p, e: p.stats.update({(min(p.windows), "ghost"): p.stats[next(iter(p.stats))]}), "no such events"),
        (lambda p, e: p.rows.__setitem__(0, p.rows[0]._replace(measurements={"temperature": -5.0})), "measurements"),
        (lambda p, e: p.rows.__setitem__(0, p.rows[0]._replace(critical=not p.rows[0].critical)), "critical flag"),
    ],
)
def test_each_kind_of_loss_is_reported(expected, breakage, message):
    probe = FakeProbe(expected)
    breakage(probe, expected)
    report = _check(expected, probe)
    assert not report.ok
    assert any(message in problem for problem in report.problems), report.problems
