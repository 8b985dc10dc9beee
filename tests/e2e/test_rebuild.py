"""``sluice rebuild redis`` on a running stack: Event Hubs emulator -> dev host (ingest, change feed) -> stores.

Events go through the real pipeline; once the change feed has written them,
every key under the test's Redis prefix is deleted while the dev host keeps
running, ``python -m sluice rebuild redis`` runs as an operator would run it, and
every key (full dumps compared) and every lookup over HTTP answers as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

from sluice.loadgen import EventGenerator, EventHubSender, LoadSpec
from tests.e2e.test_pipeline import ROOT, pipeline  # noqa: F401 - fixture
from tests.integration.test_rebuild import delete_prefix, dump


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class _Keys:
    """What ``dump`` needs of a cache: the live generation's prefix."""

    def __init__(self, client, prefix: str) -> None:
        self._client, self._prefix = client, prefix

    @property
    def keys(self):
        live = self._client.hget(f"{self._prefix}generation", "live")
        return type("K", (), {"prefix": self._prefix if not live or live == b"0" else f"{self._prefix}g{int(live)}:"})


@pytest.mark.timeout(240)
def test_rebuild_after_deleting_every_key_answers_every_lookup_as_before(pipeline, isolated_eventhub):  # noqa: F811
    start, _probe, values = pipeline
    host = start()
    events = EventGenerator(LoadSpec(seed=20, devices=15, critical_ratio=0.3, duplicate_ratio=0, invalid_ratio=0,
                                     out_of_order_ratio=0.2)).take(120)
    sender = EventHubSender(isolated_eventhub.connection_string, isolated_eventhub.name)
    try:
        assert all(sent.error is None for sent in sender.send(events))
    finally:
        sender.close()
    prefix = values["SLUICE_REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(values["SLUICE_REDIS_URL"])
    try:
        _rebuild_and_compare(client, prefix, events, host, values)
    finally:
        client.close()


def _rebuild_and_compare(client, prefix, events, host, values) -> None:
    view = _Keys(client, prefix)
    devices = sorted({e.device_id for e in events})
    critical = {str(e.event_id) for e in events if e.critical}

    deadline, before = time.monotonic() + 120, None
    while time.monotonic() < deadline:  # until the change feed wrote every event and the keys stopped changing
        state = dump(client, view)
        on_stream = {entry.decode() for name, entries in state.items() if name.startswith("critical:stream:")
                     for entry in entries}
        if state == before and on_stream == critical and all(f"d:{{{d}}}:latest" in state for d in devices):
            break
        before = state
        time.sleep(2)
    else:
        pytest.fail("the change feed did not write every event in time")

    base = f"http://{host.host}:{host.port}/api/devices"
    lookups = {d: (_get(f"{base}/{d}/latest"), _get(f"{base}/{d}/critical?limit=100")) for d in devices}
    delete_prefix(client, prefix)
    assert dump(client, view) == {}

    done = subprocess.run([sys.executable, "-m", "sluice", "rebuild", "redis", "--no-progress"], cwd=ROOT,
                          env={**os.environ, **{k: v for k, v in values.items() if v != ""}}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["devices"] == len(devices) and figures["events_per_second"] > 0

    assert dump(client, view) == before
    time.sleep(1.5)  # the dev host's cached generation pointer (1 s) moves to the rebuilt generation
    for device, answers in lookups.items():
        assert (_get(f"{base}/{device}/latest"), _get(f"{base}/{device}/critical?limit=100")) == answers, device
