"""Identity-based ``AzureWebJobsStorage``: dead letters written with a bearer token, against Azurite with OAuth.

Azurite with ``--oauth basic`` over HTTPS checks each token's issuer, audience and
lifetime (not its signature), so these tests show that the identity path sends a
token a storage account accepts, and that a token for anything else is refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobServiceClient

from shared import bootstrap
from shared.adapters.identity import LocalDevelopmentCredential
from shared.domain.events import EventMetadata, Rejected
from tests.fixtures.azurite import OAuthAzurite

# The other settings without defaults (nothing here connects to them).
REQUIRED = {"SLUICE_CASSANDRA_HOSTS": "127.0.0.1", "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "SLUICE_POSTGRES_HOST": "127.0.0.1"}


@pytest.fixture
def identity_environment(azurite_oauth: OAuthAzurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Settings with no connection string: the blob endpoint and the CA only. Yields the dead-letter container."""
    container = f"dl-{uuid.uuid4().hex[:12]}"
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    for name, value in {
        "AzureWebJobsStorage__blobServiceUri": azurite_oauth.blob_service_uri,
        "SLUICE_STORAGE_CA_FILE": str(azurite_oauth.ca_file),
        "SLUICE_STORAGE_DEADLETTER_CONTAINER": container,
        **REQUIRED,
    }.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield container
    bootstrap.reset()


def test_dead_letters_are_written_and_read_with_an_identity(identity_environment: str,
                                                             azurite_oauth: OAuthAzurite) -> None:
    assert bootstrap.settings().storage.connection is None
    body = b'{"device_id": "dev-1", "temperature": "hot"}'
    meta = EventMetadata(partition_id="3", offset="4096", sequence_number=17, partition_key="dev-1")
    bootstrap.dead_letter_sink().put_rejected([Rejected("timestamp: field required", body, meta)])

    # Read back with a client of our own (same kind of token): the blob holds the reason and the original bytes.
    reader = BlobServiceClient(azurite_oauth.blob_service_uri, credential=LocalDevelopmentCredential(),
                               connection_verify=str(azurite_oauth.ca_file))
    container = reader.get_container_client(identity_environment)
    names = [blob.name for blob in container.list_blobs()]
    assert len(names) == 1 and names[0].startswith("rejected/") and "/p3/17" in names[0]
    stored = json.loads(container.download_blob(names[0]).readall())
    assert stored["reason"] == "timestamp: field required"
    assert stored["original_text"] == body.decode()

    letters = list(bootstrap.dead_letter_sink().read())
    assert [letter.records[0].body for letter in letters] == [body]


class _TokenFor:
    """A credential whose tokens claim another audience: what a storage account must refuse."""

    def __init__(self, audience: str) -> None:
        self._audience = audience

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return LocalDevelopmentCredential().get_token(f"{self._audience}/.default")


@pytest.mark.parametrize(("credential", "refusal"), [(None, "AuthorizationFailure"),
                                                    (_TokenFor("https://vault.azure.net"), "audience")],
                         ids=["no token", "a Key Vault token"])
def test_storage_refuses_requests_without_a_storage_token(azurite_oauth: OAuthAzurite, credential: object,
                                                         refusal: str) -> None:
    # The control for the test above: Azurite does check tokens, so passing there means a storage token was sent.
    client = BlobServiceClient(azurite_oauth.blob_service_uri, credential=credential,
                               connection_verify=str(azurite_oauth.ca_file), retry_total=0)
    with pytest.raises((ClientAuthenticationError, HttpResponseError), match=refusal):
        client.create_container(f"nope-{uuid.uuid4().hex[:8]}")


def test_an_account_name_means_the_public_blob_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    monkeypatch.setenv("AzureWebJobsStorage__accountName", "sluicefleet")
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    try:
        client = bootstrap.blob_service()
        assert client.url.rstrip("/") == "https://sluicefleet.blob.core.windows.net"
        assert client.account_name == "sluicefleet"
        assert type(client.credential).__name__ == "DefaultAzureCredential"  # not the local development token
    finally:
        bootstrap.reset()
