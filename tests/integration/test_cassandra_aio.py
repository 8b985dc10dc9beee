"""The asyncio Cassandra reader against the emulator: the driver's futures awaited, concurrent point reads coalesced.

Coalescing must be invisible in the answers: each caller gets its own row (or
``None``), and a failure names each caller's own device.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.cassandra.aio import CassandraAsyncEventReader
from shared.adapters.cassandra.reader import CassandraEventReader
from shared.exceptions import DependencyUnavailable
from tests.integration import test_changefeed as cf

session, keyspace, store = cf.session, cf.keyspace, cf.store
NOW = datetime.now(UTC).replace(microsecond=0)


class CountingReader(CassandraEventReader):
    """The real reader, counting the requests it sends per statement."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, int]] = []

    def start(self, name, params, *, timeout=None):
        self.sent.append((name, len(params[0]) if name.endswith("_in") else 1))
        return super().start(name, params, timeout=timeout)


@pytest.mark.timeout(60)
def test_concurrent_point_reads_share_one_request_and_each_gets_its_own_answer(session, keyspace, store) -> None:
    events = [cf.make_event(f"co-{i}", NOW - timedelta(minutes=i)) for i in range(40)]
    store.write(events)
    counting = CountingReader(session, keyspace, timeout=5)
    reader = CassandraAsyncEventReader(counting, batch_keys=32)

    async def scenario():
        assert (await reader.latest("co-0")).event_id == events[0].event_id  # alone: the point read
        devices = [f"co-{i}" for i in range(40)] + ["nobody", "co-3"]
        latest = await asyncio.gather(*(reader.latest(d) for d in devices))
        ids = [events[0].event_id, events[5].event_id, uuid.uuid4()]
        by_id = await asyncio.gather(*(reader.event(i) for i in ids))
        return latest, by_id

    latest, by_id = asyncio.run(scenario())
    assert [e.event_id for e in latest[:40]] == [e.event_id for e in events]
    assert latest[40] is None and latest[41].event_id == events[3].event_id
    assert [e.event_id if e else None for e in by_id] == [events[0].event_id, events[5].event_id, None]
    # 41 distinct devices asked in one turn: the first goes at once (nothing in flight), the 40 others while it
    # is in flight, as 32 + 8 keys in two requests; of the 3 events, the first alone and the others together
    assert counting.sent == [("latest", 1), ("latest", 1), ("latest_in", 32), ("latest_in", 8), ("event", 1),
                             ("event_in", 2)]


@pytest.mark.timeout(60)
def test_a_failed_shared_request_names_each_callers_device(cassandra_emulator, session, keyspace, store) -> None:
    from emulators.cassandra.faults import clear_faults, inject_faults

    store.write([cf.make_event("f-1", NOW)])
    reader = CassandraAsyncEventReader(CassandraEventReader(session, keyspace, timeout=2))

    async def scenario():
        await reader.latest("f-1")  # prepared before the fault
        inject_faults(cassandra_emulator.host, cassandra_emulator.port, error="overloaded", ratio=1.0,
                      retry_after_ms=1, applies_to="reads")
        try:
            return await asyncio.gather(*(reader.latest(d) for d in ("f-1", "f-2", "f-3")), return_exceptions=True)
        finally:
            clear_faults(cassandra_emulator.host, cassandra_emulator.port)

    answers = asyncio.run(scenario())
    for device, answer in zip(("f-1", "f-2", "f-3"), answers, strict=True):
        assert isinstance(answer, DependencyUnavailable) and answer.dependency == "cassandra"
        assert repr(device) in str(answer) and "Overloaded" in str(answer)
