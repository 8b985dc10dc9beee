"""The Functions host's part of ``bench e2e``, done by the Event Hubs SDK alone: its CPU per event.

``python -m bench._e2e_sdk_floor --hub H --events N --batch B --prefetch P [--checkpoint-container C]``
(connection strings in ``SDK_FLOOR_EVENTHUB`` and ``SDK_FLOOR_STORAGE``, so they stay
off the command line) reads the first N events of every partition of the hub from the
start, through ``EventHubConsumerClient.receive_batch`` (batches of at most B, prefetch
P), and does nothing with them. With ``--checkpoint-container`` it also checkpoints
after every batch, through the blob checkpoint store the dev host uses (the sync
``BlobCheckpointStore`` with the dev host's blob options on the asyncio processor,
:func:`checkpoint_store`), and
the processor claims and renews partition ownership in that container, as the dev host's
does. It prints one JSON line: events, CPU seconds of this process from the first batch to
the last, batches.

That is the work the dev host does for the host (receive, checkpoint, load-balance) with
nothing of the dev host's own: no batching by ``minEventBatchSize``, no conversion, no
invocation, no timers. ``bench e2e`` runs it in the same run, after its CPU phase, on the
events that phase sent, so it shows how much of the host's part is the SDK's own floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, TypedDict

from bench._e2e_cpu import process_cpu

if TYPE_CHECKING:
    from azure.eventhub import EventData
    from azure.eventhub.aio import PartitionContext

    from devhost.eventhub_trigger import ThreadedCheckpointStore


class SdkFloorRun(TypedDict):
    """The JSON line :func:`main` prints (what ``bench e2e`` reads back)."""

    events: int
    batches: int
    cpu: float
    seconds: float


def checkpoint_store(storage: str, container: str) -> ThreadedCheckpointStore:
    """The dev host's checkpoint store in ``container`` (created if missing): the sync ``BlobCheckpointStore`` with
    the dev host's blob options (``storage_options``: the environment's proxy and CA settings resolved once, not
    walked again on every request), on the asyncio processor."""
    from azure.core.exceptions import ResourceExistsError
    from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
    from azure.storage.blob import BlobServiceClient

    from devhost.eventhub_trigger import ThreadedCheckpointStore, storage_options

    options = storage_options(storage)
    with BlobServiceClient.from_connection_string(storage, **options) as service, \
            contextlib.suppress(ResourceExistsError):
        service.create_container(container)
    return ThreadedCheckpointStore(BlobCheckpointStore.from_connection_string(storage, container, **options))


async def read(connection: str, storage: str | None, args: argparse.Namespace) -> dict[str, float]:
    from azure.eventhub.aio import EventHubConsumerClient

    store = checkpoint_store(storage, args.checkpoint_container) if storage else None
    client = EventHubConsumerClient.from_connection_string(connection, consumer_group=args.consumer_group,
                                                           eventhub_name=args.hub, checkpoint_store=store)
    done = asyncio.Event()
    figures = {"events": 0, "batches": 0, "first": 0.0}

    async def on_batch(context: PartitionContext, events: list[EventData]) -> None:
        if not events:
            return
        if store is not None:
            await context.update_checkpoint(events[-1])
        # Counted only once its checkpoint is written: the partitions' callbacks run
        # concurrently, and stopping on a count another partition's batch reached first
        # would cancel this one's checkpoint still in flight.
        figures["batches"] += 1
        figures["events"] += len(events)
        if figures["events"] >= args.events:
            figures["last"] = process_cpu()
            done.set()

    async with client:
        # The clock starts before receiving: every counted event was received and decoded on it (the prefetch
        # runs ahead of the callbacks). The connection's set-up is charged too, which only makes the floor higher.
        figures["first"] = process_cpu()
        task = asyncio.create_task(client.receive_batch(on_event_batch=on_batch, max_batch_size=args.batch,
                                                        prefetch=args.prefetch, starting_position="-1"))
        try:
            await asyncio.wait_for(done.wait(), timeout=args.timeout)
        except TimeoutError:
            raise SystemExit(f"read {figures['events']} of {args.events} events in {args.timeout:.0f}s") from None
        finally:
            task.cancel()
    return {"events": figures["events"], "batches": figures["batches"], "cpu": figures["last"] - figures["first"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._e2e_sdk_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub", required=True, help="event hub name")
    parser.add_argument("--events", type=int, required=True, help="stop after this many events in all")
    parser.add_argument("--batch", type=int, required=True, help="max_batch_size")
    parser.add_argument("--prefetch", type=int, required=True)
    parser.add_argument("--consumer-group", default="$Default")
    parser.add_argument("--checkpoint-container", default=None,
                        help="checkpoint every batch into this blob container (SDK_FLOOR_STORAGE)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    connection = os.environ["SDK_FLOOR_EVENTHUB"]
    storage = os.environ["SDK_FLOOR_STORAGE"] if args.checkpoint_container else None
    began = time.monotonic()
    figures = asyncio.run(read(connection, storage, args))
    print(json.dumps({**figures, "seconds": time.monotonic() - began}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
