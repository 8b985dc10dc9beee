"""Event Hubs trigger: a batch of events from one partition -> the ingest service.

Decodes the binding into ``RawRecord``s (body bytes + Event Hubs metadata), calls
the ingest service and lets a store failure propagate so the ``@retry`` policy
runs the batch again; on the last attempt the service dead-letters the batch
instead, because the host checkpoints after every invocation either way. The
store connects on its first write, inside the service, so a Cassandra that is
down when the worker starts is handled the same way.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared import bootstrap
from shared.services.ingest import EventMetadata, RawRecord

logger = logging.getLogger(__name__)

bp = func.Blueprint()

MAX_RETRIES = 5


def _partition_id(events: list[func.EventHubEvent]) -> str | None:
    metadata = events[0].metadata if events else None
    context = (metadata or {}).get("PartitionContext") or {}
    return context.get("PartitionId") if isinstance(context, dict) else None


def to_records(events: list[func.EventHubEvent]) -> list[RawRecord]:
    partition = _partition_id(events)
    return [
        RawRecord(
            event.get_body(),
            EventMetadata(
                partition_id=partition,
                offset=None if event.offset is None else str(event.offset),  # the host passes a long for "many"
                sequence_number=event.sequence_number,
                enqueued_time=event.enqueued_time,
                partition_key=event.partition_key,
            ),
        )
        for event in events
    ]


@bp.function_name("ingest")
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%SLUICE_INGEST_EVENTHUB_NAME%",
    connection="EventHubConnection",
    consumer_group="%SLUICE_INGEST_CONSUMER_GROUP%",
    cardinality="many",
    data_type="binary",
)
@bp.retry(
    strategy="exponential_backoff",
    max_retry_count=str(MAX_RETRIES),
    minimum_interval="00:00:01",
    maximum_interval="00:00:30",
)
def ingest(events: list[func.EventHubEvent], context: func.Context) -> None:
    retry = context.retry_context
    final_attempt = retry is None or retry.retry_count >= retry.max_retry_count
    result = bootstrap.ingest_service().handle(to_records(events), final_attempt=final_attempt)
    logger.info(
        "ingest partition=%s received=%d stored=%d rejected=%d duplicates=%d batch_dead_lettered=%s",
        _partition_id(events), result.received, result.stored, result.rejected, result.duplicates,
        result.batch_dead_lettered,
    )
