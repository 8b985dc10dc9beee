"""The Functions host's blob storage as a ``BlobServiceClient``: by connection string or by identity.

Which one is decided by :class:`shared.settings.StorageSettings` (the host's own
``AzureWebJobsStorage`` variables). An identity-based connection authenticates
with :func:`shared.adapters.identity.credential_for`; the account must grant the
identity "Storage Blob Data Contributor" (the host itself needs "Owner" for its
leases: docs/deploy.md).
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import BlobServiceClient, ExponentialRetry

from shared.adapters.identity import credential_for
from shared.exceptions import ConfigurationError
from shared.settings import StorageSettings


def blob_service_client(cfg: StorageSettings, **options: Any) -> BlobServiceClient:
    """A client of the storage account ``cfg`` names; ``options`` go to the client (timeouts, retries).

    Raises ``ConfigurationError`` when ``AzureWebJobsStorage`` is no connection string the SDK can parse (a typo:
    no endpoint, no account name), saying why but not the value (it holds the account key)."""
    if cfg.ca_file:
        options.setdefault("connection_verify", str(cfg.ca_file))
    if cfg.connection is not None:
        connection = cfg.connection.get_secret_value()
        try:
            return BlobServiceClient.from_connection_string(connection, **options)
        except ValueError as exc:
            raise ConfigurationError(f"AzureWebJobsStorage is not a valid storage connection string: "
                                     f"{_reason(exc, connection)}") from None
    endpoint = cfg.blob_endpoint
    assert endpoint is not None  # StorageSettings requires a connection string or an identity-based endpoint
    credential = credential_for(endpoint, managed_identity=cfg.credential == "managedidentity", client_id=cfg.client_id)
    return BlobServiceClient(endpoint, credential=credential, **options)


def _reason(exc: ValueError, connection: str) -> str:
    """The SDK's reason for refusing ``connection``, on one line, unless it quotes a part of the connection string
    (which may be the account key or a SAS token)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    parts = {value.strip() for pair in connection.split(";") for value in pair.split("=", 1)}
    if any(len(part) >= 4 and part in reason for part in parts):
        return "the storage SDK could not parse it"
    return reason


def interactive_options() -> dict[str, Any]:
    """Client options for a person waiting at a terminal (the operator CLI): two retries, about 3 s and 5 s after
    the attempt before (the SDK's backoff is ``initial_backoff + increment_base ** retry``, +-1 s), 5 s to connect
    and 30 s per read, so a storage account that is down is an error in about 10 s (25 s when connecting hangs).
    The SDK's own policy (three retries 18, 24 and 42 s apart, 20 s connects) suits a worker that retries around
    it, but keeps an operator waiting well over a minute before it says anything."""
    return {"retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1),
            "connection_timeout": 5, "read_timeout": 30}


def worker_options(cfg: StorageSettings) -> dict[str, Any]:
    """Client options for a worker: ``cfg``'s timeouts and retries (the SDK's backoff, ``1 + 2 ** retry`` s +-1),
    so one request takes at most ``cfg.longest_request_seconds``. The SDK's defaults (20 s connects, 60 s reads,
    three retries 18, 24 and 42 s apart) hold a request to an account that accepts and never answers about five
    minutes, and a dead letter retried around it past the host's functionTimeout."""
    return {"retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=cfg.retries,
                                             random_jitter_range=1),
            "connection_timeout": cfg.connect_timeout_seconds, "read_timeout": cfg.read_timeout_seconds}


def failure(exc: AzureError) -> str:
    """One line on a failed storage request: refused, with the HTTP status and the service's error code (a rotated
    key, a missing role, a container that is not there), or the error that kept it from an answer."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = getattr(exc, "error_code", None)  # the service's error code (a StorageErrorCode), set by the SDK
        return f"refused ({exc.status_code} {getattr(code, 'value', code) or exc.reason})"
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no answer'}"


def connection_string_account(connection: str) -> str | None:
    """The storage account a connection string names (``UseDevelopmentStorage=true``: Azurite's), or None when it
    names none or is no connection string. Nothing is contacted: the SDK only parses it."""
    try:
        return BlobServiceClient.from_connection_string(connection).account_name
    except ValueError:
        return None
