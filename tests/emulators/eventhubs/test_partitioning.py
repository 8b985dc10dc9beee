"""Partition keys map to partitions as in Azure Event Hubs (Jenkins lookup3 of the UTF-8 key).

The oracles are independent of the emulator's code: hash codes and partitions that Microsoft's
.NET and JavaScript SDK tests pin (taken from the service's own implementation), and the
azure-eventhub SDK's lookup3 (``generate_hash_code``), which reads one ``ord()`` per character:
fed the UTF-8 bytes as Latin-1 text it hashes exactly those bytes. The SDK's partition step
(``abs(hash_code % count)`` with Python's floor modulo) is not the service's
(``abs(hash_code) % count``, C#'s remainder), see :mod:`emulators.eventhubs.partitioning`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub._buffered_producer._partition_resolver import PartitionResolver, generate_hash_code
from hypothesis import given
from hypothesis import strategies as st

from emulators.eventhubs.partitioning import hash_code, partition_for_key
from tests.emulators.eventhubs import aio_helpers
from tests.emulators.eventhubs.helpers import producer
from tests.fixtures.eventhubs import IsolatedHub, start_eventhubs_emulator

pytestmark = pytest.mark.timeout(120)

# From Azure.Messaging.EventHubs' PartitionResolverTests (values produced by the service's algorithm).
SERVICE_HASH_CODES = {
    "7": -15263,
    "131": 30562,
    "7149583486996073602": 12977,
    "FWfAT": -22341,
    "sOdeEAsyQoEuEFPGerWO": -6503,
    "FAyAIctPeCgmiwLKbJcyswoHglHVjQdvtBowLACDNORsYvOcLddNJYDmhAVkbyLOrHTKLneMNcbgWVlasVywOByANjs": 5226,
    "!c*_!I@1^c": 15372,
    "p4*!jioeO/z-!-;w:dh": -3104,
    "$0cb": 26269,
    "-4189260826195535198": 453,
}
# From @azure/event-hubs' partitionKeyToIdMapper tests ("created from outputs received from the C#
# implementation of Jenkins lookup3 that the Event Hubs service uses").
SERVICE_PARTITIONS = [("alphabet", 3, 0), ("alphabet", 11, 4), ("TheBestParitionEver", 4, 2),
                      ("TheWorstParitionEver", 15, 1)]

# Lengths around the 12-byte blocks, whitespace, digits, a NUL, 2/3/4-byte UTF-8 characters. The SDK
# drops an empty key (the event goes round-robin), so "" never reaches the emulator as a key.
KEYS = [
    "device-42", "a", "0", "-1", " ", "   ", "\t", "key with spaces", "null\x00inside",
    "x" * 11, "y" * 12, "z" * 13, "w" * 24, "v" * 25, "long-" * 60,
    "alphabet", "TheBestParitionEver", "TheWorstParitionEver",
    "é", "café", "Ünïcödé-ключ", "日本語のキー", "🔑", "emoji 🚀 key", "ÿ" * 13, "mixed-é-1234567890",
    *(f"dev-{i}" for i in range(24)),
]
HUBS = {"keys-7": 7, "keys-11": 11, "keys-32": 32, "buffered-11": 11}  # name: partition count


def service_partition(key: str, count: int) -> int:
    """Where Azure puts ``key``: the SDK's lookup3 over the UTF-8 bytes, then the service's remainder."""
    return abs(generate_hash_code(key.encode("utf-8").decode("latin-1"))) % count


def sdk_resolver_partition(key: str, count: int) -> int:
    """Where azure-eventhub's producer in buffered mode puts ``key``."""
    return int(PartitionResolver([str(p) for p in range(count)]).get_partition_id_by_partition_key(key))


def test_hash_codes_and_partitions_are_the_services() -> None:
    assert {key: hash_code(key) for key in SERVICE_HASH_CODES} == SERVICE_HASH_CODES
    assert [(key, count, partition_for_key(key, count)) for key, count, _ in SERVICE_PARTITIONS] == SERVICE_PARTITIONS
    assert hash_code("") == 0 and partition_for_key("", 4) == 0  # as the service hashes an empty key
    # the Python SDK's resolver names another partition for these (negative hash codes)
    assert sdk_resolver_partition("alphabet", 11) == 7 and partition_for_key("alphabet", 11) == 4


@given(st.text(min_size=1, max_size=80))
def test_hash_code_is_lookup3_of_the_utf8_bytes(key: str) -> None:
    assert hash_code(key) == generate_hash_code(key.encode("utf-8").decode("latin-1"))


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=1, max_size=80), st.integers(1, 32))
def test_ascii_keys_agree_with_the_sdk_resolver_except_for_its_floor_modulo(key: str, count: int) -> None:
    """For ASCII keys the SDK hashes what the service hashes; with a negative hash code its floor modulo
    picks ``(-service) % count`` instead of the service's partition."""
    assert hash_code(key) == generate_hash_code(key)
    sdk = sdk_resolver_partition(key, count)
    expected = sdk if hash_code(key) >= 0 else (-sdk) % count
    assert partition_for_key(key, count) == expected


@pytest.fixture(scope="module")
def keyed_hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, IsolatedHub]]:
    """An emulator with the :data:`HUBS`, by name."""
    path = Path(tmp_path_factory.mktemp("keyed")) / "config.json"
    entities = [{"Name": name, "PartitionCount": str(count)} for name, count in HUBS.items()]
    path.write_text(json.dumps({"UserConfig": {"NamespaceConfig": [
        {"Type": "EventHub", "Name": "keyed", "Entities": entities}]}}), encoding="utf-8")
    running = start_eventhubs_emulator(config=path)
    try:
        yield {name: IsolatedHub(running, name) for name in HUBS}
    finally:
        running.stop()


async def send_keyed(hub: IsolatedHub) -> None:
    """One event per key (its index as the body): lists with ``partition_key=``, and some batches."""
    async with aio_helpers.producer(hub) as client:
        for i, key in enumerate(KEYS):
            if i % 3:
                await client.send_batch([EventData(str(i))], partition_key=key)
            else:
                batch = await client.create_batch(partition_key=key)
                batch.add(EventData(str(i)))
                await client.send_batch(batch)


async def read_all(hub: IsolatedHub, count: int, timeout: float = 40.0) -> dict[int, tuple[str, bytes | None]]:
    """Read ``count`` events with one consumer over every partition: body index -> (partition, key)."""
    seen: dict[int, tuple[str, bytes | None]] = {}
    enough = asyncio.Event()
    client = aio_helpers.consumer(hub)

    async def on_event(context: Any, event: EventData | None) -> None:
        if event is not None:
            seen[int(event.body_as_str())] = (context.partition_id, event.partition_key)
            if len(seen) >= count:
                enough.set()

    task = asyncio.create_task(client.receive(on_event, starting_position="-1", max_wait_time=0.5))
    try:
        await asyncio.wait_for(enough.wait(), timeout)
    finally:
        await client.close()
        await asyncio.wait({task}, timeout=0.5)  # receive() may outlive close() by a poll; nothing needs that
        task.cancel()
    return seen


def check_landing(hub: IsolatedHub, count: int) -> None:
    async def body() -> None:
        await send_keyed(hub)
        seen = await read_all(hub, len(KEYS))
        assert {i: key for i, (_, key) in seen.items()} == {i: key.encode() for i, key in enumerate(KEYS)}
        landed = {KEYS[i]: int(partition) for i, (partition, _) in seen.items()}
        assert landed == {key: service_partition(key, count) for key in KEYS}

    aio_helpers.run(body())


def test_keyed_events_land_where_the_service_puts_them_with_4_partitions(isolated_eventhub: IsolatedHub) -> None:
    check_landing(isolated_eventhub, 4)
    # not vacuous: the SDK resolver's floor modulo puts some of these keys elsewhere
    assert any(sdk_resolver_partition(key, 4) != service_partition(key, 4) for key in KEYS)


@pytest.mark.parametrize("name", ["keys-7", "keys-11", "keys-32"])
def test_keyed_events_land_where_the_service_puts_them(keyed_hubs: dict[str, IsolatedHub], name: str) -> None:
    check_landing(keyed_hubs[name], HUBS[name])


def test_buffered_mode_sends_where_the_sdk_resolver_says(keyed_hubs: dict[str, IsolatedHub]) -> None:
    """A producer in buffered mode picks the partition itself (its resolver) and sends there: where the resolver
    agrees with the service, buffered and keyed events of a key share a partition; where it does not
    ("alphabet" with 11 partitions: 7 against 4), they split, as they would in Azure."""
    hub = keyed_hubs["buffered-11"]
    keys = ["alphabet", "dev-2", "sensor-7"]
    assert sdk_resolver_partition("alphabet", 11) != service_partition("alphabet", 11)
    assert all(sdk_resolver_partition(k, 11) == service_partition(k, 11) for k in keys[1:])
    failures: list[Any] = []
    buffered = producer(hub, buffered_mode=True, on_success=lambda *_: None,
                        on_error=lambda *args: failures.append(args), max_wait_time=0.2)
    with buffered:
        for n, key in enumerate(keys):
            buffered.send_event(EventData(str(100 + n)), partition_key=key)
        buffered.flush(timeout=20)
    assert not failures

    async def body() -> None:
        async with aio_helpers.producer(hub) as client:
            for n, key in enumerate(keys):
                await client.send_batch([EventData(str(200 + n))], partition_key=key)
        seen = await read_all(hub, 2 * len(keys))
        for n, key in enumerate(keys):
            assert int(seen[100 + n][0]) == sdk_resolver_partition(key, 11), key
            assert int(seen[200 + n][0]) == service_partition(key, 11), key

    aio_helpers.run(body())
