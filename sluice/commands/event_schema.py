"""``event-schema``: print the JSON Schema of the event contract (kept in docs/event.schema.json)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def schema() -> dict[str, Any]:
    from shared.domain.events import DeviceEvent

    document = DeviceEvent.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["$id"] = "https://sluice.dev/schemas/device-event/1.json"
    document["description"] = (
        "One device event (schema_version 1). An Event Hubs body holds one such object or a non-empty array of them. "
        "Also enforced, beyond this schema: timestamp at most SLUICE_INGEST_MAX_FUTURE_SKEW_SECONDS ahead, "
        "at most SLUICE_INGEST_MAX_MEASUREMENTS measurements and SLUICE_INGEST_MAX_ATTRIBUTES attributes, "
        "body at most SLUICE_INGEST_MAX_BODY_BYTES bytes, no byte order mark."
    )
    return document


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("event-schema", help="print the event contract as JSON Schema")
    parser.set_defaults(func=lambda args: print(json.dumps(schema(), indent=2, sort_keys=True)))
