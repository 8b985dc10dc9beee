"""The Functions host's blob storage as a ``BlobServiceClient``: by connection string or by identity.

Which one is decided by :class:`shared.settings.StorageSettings` (the host's own
``AzureWebJobsStorage`` variables). An identity-based connection authenticates
with :func:`shared.adapters.identity.credential_for`; the account must grant the
identity "Storage Blob Data Contributor" (the host itself needs "Owner" for its
leases: docs/deploy.md).
"""

from __future__ import annotations

from typing import Any

from azure.storage.blob import BlobServiceClient

from shared.adapters.identity import credential_for
from shared.settings import StorageSettings


def blob_service_client(cfg: StorageSettings, **options: Any) -> BlobServiceClient:
    """A client of the storage account ``cfg`` names; ``options`` go to the client (timeouts, retries)."""
    if cfg.ca_file:
        options.setdefault("connection_verify", str(cfg.ca_file))
    if cfg.connection is not None:
        return BlobServiceClient.from_connection_string(cfg.connection.get_secret_value(), **options)
    endpoint = cfg.blob_endpoint
    assert endpoint is not None  # StorageSettings requires a connection string or an identity-based endpoint
    credential = credential_for(endpoint, managed_identity=cfg.credential == "managedidentity", client_id=cfg.client_id)
    return BlobServiceClient(endpoint, credential=credential, **options)


def connection_string_account(connection: str) -> str | None:
    """The storage account a connection string names (``UseDevelopmentStorage=true``: Azurite's), or None when it
    names none or is no connection string. Nothing is contacted: the SDK only parses it."""
    try:
        return BlobServiceClient.from_connection_string(connection).account_name
    except ValueError:
        return None
