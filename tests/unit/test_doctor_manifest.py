"""`sluice doctor keda --scaled-object`: a manifest that is not what it should be gets a ConfigurationError naming
it, never an AttributeError from deep inside."""

from __future__ import annotations

import json
import re

import pytest

from shared.exceptions import ConfigurationError
from shared.ports.lag import LagReading, PartitionLag
from sluice.commands.doctor import load_scaled_object, scaler_failure, scaling_rule, storage_account_check

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


@pytest.mark.parametrize(("spec", "trigger", "named"), [
    ({"minReplicaCount": None}, {}, "minReplicaCount is None"),
    ({"maxReplicaCount": [3]}, {}, "maxReplicaCount is [3]"),
    ({}, {"unprocessedEventThreshold": None}, "unprocessedEventThreshold is None"),
    ({}, {"activationUnprocessedEventThreshold": "many"}, "activationUnprocessedEventThreshold is 'many'"),
])
def test_a_scaling_value_that_is_no_number_is_named_not_a_traceback(spec: dict, trigger: dict, named: str) -> None:
    """A null (an empty YAML value), a list or a word in the ScaledObject raised TypeError or ValueError from
    ``int()`` out of ``lag`` and ``doctor keda``: a traceback naming no field. Each is named, with the file."""
    document = scaled("ingest", {**spec, "triggers": [{**TRIGGER, "metadata": {**TRIGGER["metadata"], **trigger}}]})
    with pytest.raises(ConfigurationError, match=f"m.json: {re.escape(named)}, not a whole number"):
        scaling_rule(document, "m.json")


AZURITE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
           "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFsNL/=;"
           "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
OTHER = AZURITE.replace("devstoreaccount1", "sluiceotherstore")


@pytest.mark.parametrize(("meta", "environ", "warned"), [
    ({"storageAccountName": "devstoreaccount1"}, {}, False),
    ({"storageAccountName": "DevStoreAccount1"}, {}, False),  # a host name: DNS ignores the case
    ({"storageAccountName": "sluiceotherstore"}, {}, True),
    ({"storageConnectionFromEnv": "AzureWebJobsStorage"}, {"AzureWebJobsStorage": AZURITE}, False),
    ({"storageConnectionFromEnv": "KEDA_STORAGE"}, {"KEDA_STORAGE": OTHER}, True),
    ({"storageConnectionFromEnv": "KEDA_STORAGE", "storageAccountName": "sluiceotherstore"},
     {"KEDA_STORAGE": AZURITE}, True),
])
def test_a_trigger_naming_another_storage_account_is_warned_about_naming_both(
        meta: dict[str, str], environ: dict[str, str], warned: bool) -> None:
    """The doctor read the checkpoints from the app's account and never compared it with the trigger's
    ``storageAccountName`` / ``storageConnectionFromEnv``: KEDA reading another account was reported healthy."""
    warnings, notes = storage_account_check(meta, "devstoreaccount1", environ)
    assert bool(warnings) == warned and not notes
    for warning in warnings:
        assert "'sluiceotherstore'" in warning and "'devstoreaccount1'" in warning


@pytest.mark.parametrize(("meta", "read", "noted"), [
    ({"storageConnectionFromEnv": "KEDA_STORAGE"}, "devstoreaccount1", "KEDA_STORAGE, which is not set here"),
    ({}, "devstoreaccount1", "names no storage account"),
    ({"storageAccountName": "sluiceotherstore"}, None, "names no account"),
])
def test_an_account_that_cannot_be_compared_is_a_note_not_silence(
        meta: dict[str, str], read: str | None, noted: str) -> None:
    warnings, notes = storage_account_check(meta, read, {})
    assert not warnings and len(notes) == 1 and noted in notes[0]


@pytest.mark.parametrize(("fallback", "replicas"), [
    ({"failureThreshold": 3, "replicas": 2}, "replicas KEDA would use: 2 (fallback)"),
    (None, "replicas: unchanged (no fallback in the ScaledObject)"),
], ids=["fallback", "fallback-left-empty"])
def test_a_scaler_failure_names_the_fallback_or_its_absence(fallback: object, replicas: str) -> None:
    """When KEDA's scaler cannot read a checkpoint, ``lag`` and ``doctor keda`` say what KEDA does: the fallback's
    replicas, or none. A ``fallback:`` left empty (null in YAML) is no fallback; ``.get("replicas")`` on it was an
    AttributeError traceback from both commands, at the moment the operator needs the answer."""
    reading = LagReading((PartitionLag("0", 0, 99, None, 100),),
                         scaler_error="azure-webjobs-eventhub/ns/hub/cg/checkpoint/0 has no 'sequencenumber' metadata")
    lines = scaler_failure(reading, scaled("ingest", {"triggers": [TRIGGER], "fallback": fallback}))
    assert lines == [f"KEDA's scaler fails: {reading.scaler_error}", replicas]
