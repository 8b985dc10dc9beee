"""``bench cache_sync``: its raw side does the Redis work ``RedisChangeSink`` and the change feed do.

Against the machine's real Redis: a baseline that sent other commands, or fewer pipelines, than
the change feed for the same rows would print a ratio of different work.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from bench import cache_sync
from bench._stats import percentile
from shared.adapters.redis import RedisChangeSink
from shared.domain.stored import StoredEvent


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[Any, ...]]]:
    """Every pipeline redis-py executes from now on, as the list of its commands' arguments."""
    pipelines: list[list[tuple[Any, ...]]] = []
    execute = Pipeline.execute

    def recording(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        pipelines.append([args for args, _ in self.command_stack])
        return execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", recording)
    return pipelines


def _unprefixed(pipelines: list[list[tuple[Any, ...]]], prefix: str) -> list[list[tuple[Any, ...]]]:
    """Each pipeline's commands, in their order, with the side's key prefix taken out."""
    return [[tuple(a.replace(prefix, "<prefix>:") if isinstance(a, str) else a for a in args) for args in pipeline]
            for pipeline in pipelines]


def _rows() -> list[StoredEvent]:
    """Four pages of 100 rows, 20 devices, with corrections: critical events of the first page re-sent as not
    critical (in that page and in the next), under another device id (one new to the run, so its latest key is
    missing in a later page), and critical again under a third device after being made not critical."""
    events = cache_sync.make_events(396, 20, 0.1)
    first, second, third = [e for e in events[:99] if e.critical][:3]
    later = timedelta(seconds=1)

    def resent(e: StoredEvent, by: int, **changes: Any) -> StoredEvent:
        return replace(e, enqueued_time=e.enqueued_time + by * later, **changes)

    return [*events[:99], resent(first, 1, critical=False, severity="info"),
            *events[99:198], resent(second, 1, critical=False, severity="info"),
            *events[198:297], resent(third, 1, device_id="device-moved"),
            *events[297:], resent(second, 2, device_id="device-other")]


def test_the_raw_side_sends_the_change_feeds_commands_in_the_same_pipelines(
        redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw side sent ``latest`` without the change feed's ``present`` flag, so it created every device's
    missing latest key in its one pipeline while the sink left it alone and paid a second pipeline
    (``put_latest``) for it; and it never sent the ``uncritical`` pipeline the sink sends when a correction takes a
    critical copy from its device. Since the change feed drops the latest state a correction moved an event away
    from (``unlatest``, with the device ``fill_event`` is sent to tell it), the raw side sent neither: it did less
    Redis work than the feed on every event. Now both sides send the same commands in the same pipelines."""
    client = redis.Redis.from_url(redis_url)
    events = _rows()
    args = argparse.Namespace(per_device_max=100, stream_max=10_000)
    sent = {}
    try:
        for side, run in (("ours", cache_sync.run_ours), ("raw", cache_sync.run_raw)):
            pipelines = _recorded(monkeypatch)
            run(client, f"{redis_prefix}{side}:", events, 100, args)
            sent[side] = _unprefixed(pipelines, f"{redis_prefix}{side}:")
            monkeypatch.undo()
        sha = RedisChangeSink(client).sha
        names = {value: name for name, value in sha.items()}
        scripts = [sorted({names[command[1]] for command in pipeline}) for pipeline in sent["ours"]]
        page = ["critical", "fill_event", "latest", "stream"]
        assert scripts == [page, ["uncritical"], ["latest"],  # a same-page correction; every device's key missing
                           page, ["uncritical"],  # a correction of the first page's event
                           # the copy moved to device-moved, its key missing; the old device's latest state dropped
                           page, ["uncritical", "unlatest"], ["latest"],
                           page, ["uncritical", "unlatest"], ["latest"]]  # the second's copy leaves again
        assert sent["raw"] == sent["ours"]
        for side in ("ours", "raw"):  # every device's latest state is there
            assert len(list(client.scan_iter(match=f"{redis_prefix}{side}:d:*:latest"))) == 22
    finally:
        client.close()


def test_the_raw_side_sends_the_change_feeds_fill_event_arguments_on_plain_rows(
        redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 plain rows of the bench's own generator, no correction: the change feed sends ``fill_event`` with the
    copy's device (and a critical copy's enqueued time), which the script keeps in field ``o`` of every
    ``e:<id>``. The raw side sent the older, shorter arguments, so its scripts skipped that write on every event
    and the ratio compared a cheaper baseline with ours."""
    client = redis.Redis.from_url(redis_url)
    args = argparse.Namespace(per_device_max=100, stream_max=10_000)
    sent = {}
    try:
        for side, run in (("ours", cache_sync.run_ours), ("raw", cache_sync.run_raw)):
            pipelines = _recorded(monkeypatch)
            run(client, f"{redis_prefix}{side}:", cache_sync.make_events(200, 20, 0.1), 100, args)
            sent[side] = _unprefixed(pipelines, f"{redis_prefix}{side}:")
            monkeypatch.undo()
        assert sent["raw"] == sent["ours"]
    finally:
        client.close()


def test_the_per_slice_median_is_the_nearest_rank_p50(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The per-slice median was ``ordered[len(ordered) // 2]``: for an even number of slices (20 by default) the
    upper middle one, where every other bench prints the nearest-rank p50 (``bench._stats.percentile``). The two
    runners return set durations (two slices of raw/ours 1.0 and 3.0: the median is 1.0, not the max)."""
    calls = {"raw": 0}
    raw_times = iter([1.0, 3.0])

    def fake_raw(*_: Any, **__: Any) -> float:
        calls["raw"] += 1
        return 1.0 if calls["raw"] == 1 else next(raw_times)  # the first call is the untimed warm-up

    monkeypatch.setattr(cache_sync, "run_ours", lambda *_, **__: 1.0)
    monkeypatch.setattr(cache_sync, "run_raw", fake_raw)
    assert cache_sync.main(["--events", "20", "--devices", "5", "--slices", "2", "--page-size", "10"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"per-slice raw/ours: min ([\d.]+), median ([\d.]+), max ([\d.]+)", out)
    assert match, out
    assert float(match.group(2)) == percentile([1.0, 3.0], 0.5) == 1.0, out
