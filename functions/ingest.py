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
from typing import Any, List  # noqa: UP035 - see ingest()

import azure.functions as func

from shared import bootstrap, telemetry
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
# typing.List, not list: the Python worker refuses a PEP 585 annotation on a binding and then loads no function
# of the app (azure-functions-python-worker issue 1034); the dev host runs the same check.
def ingest(events: List[func.EventHubEvent], context: func.Context) -> None:  # noqa: UP006
    retry = context.retry_context
    final_attempt = retry is None or retry.retry_count >= retry.max_retry_count
    partition = _partition_id(events)
    records = to_records(events)
    service = bootstrap.ingest_service()  # first: it configures telemetry on a cold start
    parent, parent_state = telemetry.host_trace(context)
    with telemetry.stage_span("ingest", parent=parent, parent_state=parent_state, links=lambda: _links(events),
                              attributes=_span_attributes(partition, records), consumer=True):
        result = service.handle(records, final_attempt=final_attempt)
    logger.info(
        "ingest partition=%s received=%d stored=%d rejected=%d duplicates=%d batch_dead_lettered=%s",
        partition, result.received, result.stored, result.rejected, result.duplicates, result.batch_dead_lettered,
        extra={"messaging.destination.partition.id": partition, "sluice.received": result.received,
               "sluice.stored": result.stored, "sluice.rejected": result.rejected,
               "sluice.duplicates": result.duplicates, "sluice.batch_dead_lettered": result.batch_dead_lettered},
    )


def _links(events: list[func.EventHubEvent]) -> list[Any]:
    """Links to the producers' spans, from the messages' application properties (read only when tracing)."""
    metadata = events[0].metadata if events else None
    return telemetry.message_links((metadata or {}).get("PropertiesArray"))


def _span_attributes(partition: str | None, records: list[RawRecord]) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": "eventhubs", "messaging.batch.message_count": len(records)}
    if partition is not None:
        attributes["messaging.destination.partition.id"] = partition
    if records and records[0].metadata.sequence_number is not None:
        attributes["sluice.sequence.first"] = records[0].metadata.sequence_number
        attributes["sluice.sequence.last"] = records[-1].metadata.sequence_number
    return attributes
