"""``bench._e2e_sdk_floor``: the Event Hubs SDK alone reads exactly what was sent, checkpoints it, and says so.

Against the Event Hubs emulator and Azurite, through the real SDK: ``bench e2e`` divides
its CPU by these event counts, so a count that stopped early or read twice would make the
host's floor wrong without anyone noticing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.eventhub import EventData, EventHubProducerClient
from azure.storage.blob import ContainerClient

from bench._e2e_sdk_floor import checkpoint_store

ROOT = Path(__file__).resolve().parents[2]


def _send(connection: str, hub: str, per_partition: int) -> dict[str, int]:
    """``per_partition`` events to every partition; the last sequence number of each."""
    with EventHubProducerClient.from_connection_string(connection, eventhub_name=hub) as producer:
        partitions = producer.get_partition_ids()
        for partition in partitions:
            batch = producer.create_batch(partition_id=partition)
            for number in range(per_partition):
                batch.add(EventData(json.dumps({"partition": partition, "n": number})))
            producer.send_batch(batch)
    return {partition: per_partition - 1 for partition in partitions}


def _floor(hub: Any, storage: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SDK_FLOOR_EVENTHUB": hub.connection_string, "SDK_FLOOR_STORAGE": storage}
    return subprocess.run([sys.executable, "-m", "bench._e2e_sdk_floor", "--hub", hub.name, "--batch", "8",
                           "--prefetch", "100", *args], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.timeout(180)
def test_it_reads_every_event_once_and_checkpoints_each_partition_to_its_last(
        isolated_eventhub: Any, azurite_connection_string: str) -> None:
    last = _send(isolated_eventhub.connection_string, isolated_eventhub.name, per_partition=10)
    total = 10 * len(last)

    receive = _floor(isolated_eventhub, azurite_connection_string, "--events", str(total))
    assert receive.returncode == 0, receive.stderr
    figures = json.loads(receive.stdout.strip().splitlines()[-1])
    assert figures["events"] == total
    assert figures["batches"] >= total // 8
    assert figures["cpu"] >= 0.0

    checkpointed = _floor(isolated_eventhub, azurite_connection_string, "--events", str(total),
                          "--checkpoint-container", "sdk-floor-test")
    assert checkpointed.returncode == 0, checkpointed.stderr
    assert json.loads(checkpointed.stdout.strip().splitlines()[-1])["events"] == total
    container = ContainerClient.from_connection_string(azurite_connection_string, "sdk-floor-test")
    sequence = {blob.name.rsplit("/", 1)[1]: int(blob.metadata["sequencenumber"])
                for blob in container.list_blobs(include=["metadata"]) if "/checkpoint/" in blob.name}
    assert sequence == last


@pytest.mark.timeout(120)
def test_fewer_events_than_asked_for_is_an_error_that_says_how_many(
        isolated_eventhub: Any, azurite_connection_string: str) -> None:
    last = _send(isolated_eventhub.connection_string, isolated_eventhub.name, per_partition=2)
    total = 2 * len(last)

    done = _floor(isolated_eventhub, azurite_connection_string, "--events", str(total + 1), "--timeout", "5")

    assert done.returncode != 0
    assert f"read {total} of {total + 1} events" in done.stderr


def test_its_checkpoint_store_reads_the_environment_for_proxies_once_as_the_dev_hosts(
        azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor built its blob store without the dev host's ``storage_options``, so requests walked the whole
    environment for proxies on every blob request (about 870 against 740 us of CPU per checkpoint), which the dev
    host does not: "the dev host's part is X times the SDK alone" was measured against a dearer SDK."""
    store = checkpoint_store(azurite_connection_string, "sdk-floor-options")
    walks: list[str] = []
    walk = requests.sessions.get_environ_proxies  # type: ignore[attr-defined]  # requests.utils', imported there

    def counted(url: str, no_proxy: str | None = None) -> dict[str, str]:
        walks.append(url)
        return walk(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counted)
    assert list(asyncio.run(store.list_ownership("namespace", "hub", "$Default"))) == []
    assert walks == []
    # the container is the floor's; a blob client with the default options walks the environment on each request
    assert ContainerClient.from_connection_string(azurite_connection_string, "sdk-floor-options").exists()
    assert walks
