"""The blob checkpoint store's client options: the environment's proxy and CA settings are read once, at start.

Against Azurite: a proxy set in the environment after the store was built must not
reroute its checkpoints (requests would otherwise read the environment again on every
request), while the SDK's default store does pick it up.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import BlobServiceClient

from devhost.eventhub_trigger import storage_options
from tests.fixtures.azurite import connection_string

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_proxy_for_the_blob_endpoint_and_the_ca_bundle_come_from_the_environment(
        clean_environment: pytest.MonkeyPatch) -> None:
    storage = connection_string(10000)
    assert storage_options(storage) == {"use_env_settings": False}

    clean_environment.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert storage_options(storage)["proxies"]["http"] == "http://proxy.example:3128"

    clean_environment.setenv("NO_PROXY", "127.0.0.1")  # the endpoint is exempt: no proxy at all
    assert "proxies" not in storage_options(storage)

    clean_environment.setenv("CURL_CA_BUNDLE", "/etc/curl-ca.pem")
    assert storage_options(storage)["connection_verify"] == "/etc/curl-ca.pem"
    clean_environment.setenv("REQUESTS_CA_BUNDLE", "/etc/requests-ca.pem")  # requests' own order
    assert storage_options(storage)["connection_verify"] == "/etc/requests-ca.pem"


def _checkpoint(sequence_number: int) -> dict[str, Any]:
    return {"fully_qualified_namespace": "ns.example", "eventhub_name": "hub", "consumer_group": "$default",
            "partition_id": "0", "offset": str(sequence_number * 100), "sequence_number": sequence_number}


def test_checkpoints_ignore_a_proxy_set_after_the_store_was_built(
        azurite: Any, clean_environment: pytest.MonkeyPatch) -> None:
    storage = connection_string(azurite.port)
    container = f"ckpt-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(storage).create_container(container)
    ours = BlobCheckpointStore.from_connection_string(storage, container, **storage_options(storage))
    default = BlobCheckpointStore.from_connection_string(storage, container, retry_total=0)
    ours.update_checkpoint(_checkpoint(1))
    default.update_checkpoint(_checkpoint(2))

    clean_environment.setenv("HTTP_PROXY", DEAD_PROXY)
    ours.update_checkpoint(_checkpoint(3))
    (stored,) = ours.list_checkpoints("ns.example", "hub", "$default")
    assert stored["sequence_number"] == 3
    with pytest.raises(ServiceRequestError):  # the SDK's default reads the environment per request
        default.update_checkpoint(_checkpoint(4))
