"""`sluice doctor keda --scaled-object`: a manifest that is not what it should be gets a ConfigurationError naming
it, never an AttributeError from deep inside."""

from __future__ import annotations

import json

import pytest

from shared.exceptions import ConfigurationError
from sluice.commands.doctor import load_scaled_object, scaling_rule

TRIGGER = {"type": "azure-eventhub", "metadata": {"unprocessedEventThreshold": "64"}}


def scaled(name: str, spec: object) -> dict[str, object]:
    return {"kind": "ScaledObject", "metadata": {"name": name}, "spec": spec}


def test_the_first_scaled_object_with_an_event_hubs_trigger_is_found_in_a_list() -> None:
    document = {"kind": "List", "items": ["not an object", {"kind": "Deployment"},
                                          scaled("cpu", {"triggers": [{"type": "cpu", "metadata": {}}]}),
                                          scaled("ingest", {"triggers": ["junk", TRIGGER]})]}
    assert load_scaled_object(json.dumps(document), "m.json")["metadata"]["name"] == "ingest"


@pytest.mark.parametrize(("document", "message"), [
    (scaled("ingest", None), "m.json: ScaledObject 'ingest' has no list of spec.triggers"),
    (scaled("ingest", {"triggers": {"type": "azure-eventhub"}}), "ScaledObject 'ingest' has no list of spec.triggers"),
    (scaled("ingest", {"triggers": [{"type": "azure-eventhub", "metadata": "x"}]}),
     "ScaledObject 'ingest': its azure-eventhub trigger has no metadata"),
    ({"kind": "List", "items": "nothing"}, "m.json: no ScaledObject with an azure-eventhub trigger"),
    ([1, 2], "m.json: no ScaledObject with an azure-eventhub trigger"),
])
def test_a_malformed_manifest_is_named(document: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_scaled_object(json.dumps(document), "m.json")


def test_an_override_of_zero_is_used_not_replaced_by_the_manifests_value() -> None:
    """``scaling_rule``'s overrides apply when given, 0 included (``threshold or <file>`` took 0 for "not given"
    and used the file's threshold): a threshold of 0 is then refused like one in the manifest."""
    document = scaled("ingest", {"maxReplicaCount": 4, "triggers": [TRIGGER]})
    assert scaling_rule(document, "m.json", max_replicas=1).max_replicas == 1
    with pytest.raises(ConfigurationError, match="unprocessedEventThreshold must be a positive number, got 0"):
        scaling_rule(document, "m.json", threshold=0)
