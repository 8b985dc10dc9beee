"""Late and redelivered batches end where batches on time end: in the change feed, and in what is stored.

Real services (the Cassandra emulator, Azurite, Redis), wired through ``shared.bootstrap`` as the Functions
app wires them. A "crash" is what the host does after one: it redelivers from the last checkpoint, in
batches cut as the backlog allows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from shared import bootstrap
from shared.domain.events import EventMetadata, RawRecord
from tests.integration import test_changefeed as changefeed_tests

# fixtures shared with the change feed tests (used by name)
changefeed_env, keyspace, session = changefeed_tests.app_env, changefeed_tests.keyspace, changefeed_tests.session


@pytest.fixture
def app_env(changefeed_env: Callable[..., None], azurite_connection_string: str) -> Iterator[Callable[..., None]]:
    """The change feed tests' app settings, with a dead-letter container of this test's own."""

    def configure(**overrides: str) -> None:
        changefeed_env(AzureWebJobsStorage=azurite_connection_string,
                       SLUICE_STORAGE_DEADLETTER_CONTAINER=f"dl-{uuid.uuid4().hex[:12]}", **overrides)

    yield configure


def _body(event_id: uuid.UUID, device: str, at: datetime, **fields: object) -> bytes:
    return json.dumps({"event_id": str(event_id), "device_id": device, "event_type": "telemetry",
                       "timestamp": at.isoformat().replace("+00:00", "Z"), **fields}).encode()


def _record(body: bytes, sequence: int, enqueued: datetime, partition: str = "0") -> RawRecord:
    return RawRecord(body, EventMetadata(partition_id=partition, offset=str(sequence * 100), sequence_number=sequence,
                                         enqueued_time=enqueued, partition_key=None))


@pytest.mark.timeout(90)
def test_the_portable_feed_reads_a_batch_stored_later_than_its_overlap_whatever_the_allowed_lateness(
        app_env, redis_url, redis_prefix):
    """The portable feed rescans only ``SLUICE_CHANGEFEED_OVERLAP_SECONDS`` (60) before its watermark; a row stored
    later than that after its enqueue (ingest behind: a backlog, a host restart) must be in a batch ingest noted
    as delayed. Ingest notes at half the smaller of the overlap and the enrichment's allowed lateness, so with an
    allowed lateness of 600 s a batch stored 150 s late is noted still, and its critical event reaches the
    stream, ``e:<id>`` and the latest state. (Noted at half the allowed lateness alone, 300 s, it was not, and
    the feed's position had moved past it for good.)
    """
    app_env(SLUICE_CHANGEFEED_MODE="portable", SLUICE_ENRICH_ALLOWED_LATENESS_SECONDS="600")
    feed = bootstrap.changefeed_service()
    first = feed.run()  # the feed is caught up: its watermark is now
    assert first.stopped == "caught_up"

    now = datetime.now(UTC)
    enqueued = now - timedelta(seconds=150)  # Event Hubs enqueued it 150 s ago; ingest was behind
    event_id = uuid.uuid4()
    result = bootstrap.ingest_service().handle(
        [_record(_body(event_id, "pump-late", enqueued - timedelta(seconds=1), severity="critical"), 7, enqueued)])
    assert result.stored == 1

    feed.run()

    client = redis.Redis.from_url(redis_url)
    try:
        cache = bootstrap.redis_change_sink()
        in_event_key = client.hget(cache.keys.event(event_id), "d")
        stream = [fields[b"event_id"].decode() for key in cache.keys.streams for _, fields in client.xrange(key)]
        latest = client.hget(cache.keys.latest("pump-late"), "d")
    finally:
        client.close()
    assert str(event_id) in stream, "the critical event stored 150 s after its enqueue never reached the stream"
    assert in_event_key is not None and latest is not None


@pytest.mark.timeout(90)
def test_a_redelivery_that_batches_an_event_with_its_correction_stores_the_correction(app_env):
    """Copy A (seq 10) of an event is stored, then the host dies before its checkpoint; the correction B (seq 11)
    is enqueued meanwhile, and the redelivery from the checkpoint brings [A, B] in one batch. What is stored must
    be what it is without the crash (B: across batches the last write of an id wins), with nothing
    dead-lettered: so an in-batch correction wins over its earlier copy as a later batch would.
    """
    app_env()
    ingest = bootstrap.ingest_service()
    event_id = uuid.uuid4()
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    enqueued = datetime.now(UTC) - timedelta(seconds=5)
    a = _record(_body(event_id, "pump-9", at, measurements={"temperature": 20.0}), 10, enqueued)
    b = _record(_body(event_id, "pump-9", at, measurements={"temperature": 21.5}), 11,
                enqueued + timedelta(seconds=1))

    assert ingest.handle([a]).stored == 1  # stored, then the host dies before its checkpoint
    redelivered = ingest.handle([a, b])  # after the restart: from the checkpoint, one batch

    row = bootstrap.cassandra_session().execute(
        f"SELECT measurements FROM {bootstrap.settings().cassandra.keyspace}.events_by_id WHERE event_id = %s",
        (event_id,)).one()
    assert redelivered.rejected == 0, "the correction B was dead-lettered because the redelivery batched it with A"
    assert redelivered.duplicates == 1, "A, superseded in its batch, counts as a duplicate"
    assert dict(row.measurements) == {"temperature": 21.5}
