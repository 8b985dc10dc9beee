"""Which credential an identity-based connection gets, and what the local development token claims."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from shared import bootstrap
from shared.adapters.eventhub_lag import HostEventHubConnection
from shared.adapters.identity import LOCAL_TENANT, LocalDevelopmentCredential, credential_for
from shared.exceptions import ConfigurationError
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def _claims(token: str) -> dict:
    header, payload, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "none", "typ": "JWT"}
    assert signature == ""  # unsigned: nothing outside a local emulator accepts it
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.mark.parametrize("url", ["https://127.0.0.1:10000/devstoreaccount1", "https://localhost:8443",
                                 "https://[::1]:8443/"])
def test_local_endpoints_get_the_development_token(url: str):
    assert isinstance(credential_for(url), LocalDevelopmentCredential)
    assert isinstance(credential_for(url, managed_identity=True, client_id="abc"), LocalDevelopmentCredential)


def test_azure_endpoints_get_azure_identity():
    url = "https://fleet.blob.core.windows.net"
    assert isinstance(credential_for(url), DefaultAzureCredential)
    managed = credential_for(url, managed_identity=True, client_id="0f1e")
    assert isinstance(managed, ManagedIdentityCredential)
    # Look-alikes of a local name are not local.
    assert isinstance(credential_for("https://127.0.0.1.example.com"), DefaultAzureCredential)
    assert isinstance(credential_for("https://localhost.blob.core.windows.net"), DefaultAzureCredential)


def test_the_development_token_claims_the_scope_it_was_asked_for():
    credential = LocalDevelopmentCredential()
    token = credential.get_token("https://storage.azure.com/.default")
    claims = _claims(token.token)
    assert claims["aud"] == "https://storage.azure.com"
    assert claims["iss"] == f"https://sts.windows.net/{LOCAL_TENANT}/"
    assert claims["nbf"] < claims["iat"] < claims["exp"] == token.expires_on
    info = credential.get_token_info("https://vault.azure.net/.default")
    assert _claims(info.token)["aud"] == "https://vault.azure.net"
    assert info.expires_on == _claims(info.token)["exp"]


class _ManagedIdentityEndpoint(BaseHTTPRequestHandler):
    """The App Service / Functions managed identity endpoint (``IDENTITY_ENDPOINT``): hands out a token and
    records what each request asked for (``client_id`` names a user-assigned identity)."""

    asked: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        self.asked.append(query)
        body = json.dumps({"access_token": "token", "expires_on": str(int(time.time()) + 3600),
                           "resource": query.get("resource", [""])[0], "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def managed_identity_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, list[str]]]]:
    """A Function App's managed identity endpoint on a local port; yields the queries it was asked."""
    server = HTTPServer(("127.0.0.1", 0), _ManagedIdentityEndpoint)
    _ManagedIdentityEndpoint.asked = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
                 "AZURE_USERNAME", "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{server.server_port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "functions-host")
    try:
        yield _ManagedIdentityEndpoint.asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_event_hubs_readers_sign_in_as_the_user_assigned_identity_the_host_is_told(
        managed_identity_endpoint: list[dict[str, list[str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Sluice's Event Hubs readers (the lag, the audit) sign in as the Functions host does: with
    ``EventHubConnection__credential=managedidentity`` and ``__clientId``, as the user-assigned identity named.

    Was: ``bootstrap._host_eventhub`` (and ``sluice lag``, ``sluice doctor keda``) read only the namespace and got
    ``DefaultAzureCredential()``, whose managed identity member asked for the system-assigned identity's token: on an
    app with only the user-assigned identity the lag gauge, ``/api/status`` lag and the audit failed to sign in;
    with both, they read as another identity.
    """
    client_id = str(uuid.uuid4())
    monkeypatch.setenv("EventHubConnection__fullyQualifiedNamespace", "sluice-ns.servicebus.windows.net")
    monkeypatch.setenv("EventHubConnection__credential", "managedidentity")
    monkeypatch.setenv("EventHubConnection__clientId", client_id)
    monkeypatch.delenv("EventHubConnection", raising=False)
    values = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    loaded = load_settings({name: value for name, value in values.items() if value})
    monkeypatch.setattr(bootstrap, "settings", cache(lambda: loaded))
    found = bootstrap._host_eventhub()
    assert found is not None
    _, hub, _ = found
    try:
        hub._credential.get_token("https://eventhubs.azure.net/.default")  # what the client's AMQP sign-in asks
    finally:
        hub.close()
    asked = [query.get("client_id", [None])[0] for query in managed_identity_endpoint]
    assert asked == [client_id], (f"the Event Hubs client asked the managed identity endpoint for client ids "
                                  f"{asked}, not the user-assigned identity {client_id} the host is told to use")


def test_an_event_hubs_client_id_without_managedidentity_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="EventHubConnection__clientId needs"):
        HostEventHubConnection.from_environ({"EventHubConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net",
                                             "EventHubConnection__clientId": "0f1e"})
    with pytest.raises(ConfigurationError, match="EventHubConnection__credential='secret'"):
        HostEventHubConnection.from_environ({"EventHubConnection__credential": "secret"})
    assert not HostEventHubConnection.from_environ({}).configured


def test_the_host_event_hub_connection_never_shows_its_key() -> None:
    """``HostEventHubConnection``'s generated ``repr`` (and ``str``) held the whole connection string: a ``%r``, an
    assertion message or a traceback with locals printed the namespace's SharedAccessKey."""
    key = "c2VjcmV0LWtleS1vZi10aGUtbmFtZXNwYWNlPQ=="
    connection = HostEventHubConnection.from_environ({
        "EventHubConnection": f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey={key}"})
    assert connection.configured
    assert key not in repr(connection) and key not in str(connection), repr(connection)


def test_the_host_event_hub_connection_is_found_as_the_host_binds_the_name() -> None:
    """The Functions host (and the dev host's ``connection_section``) binds the connection ``EventHubConnection`` to
    ``AzureWebJobsEventHubConnection`` first (the AzureWebJobs prefix), ``__`` read as ``:``, names ignoring case. Was:
    only ``EventHubConnection`` was read, so with the prefixed setting ``ingest_hub``, the lag and the audit found
    no connection (or another namespace than the trigger consumes)."""
    trigger = "Endpoint=sb://trigger.servicebus.windows.net/;SharedAccessKeyName=l;SharedAccessKey=k"
    other = "Endpoint=sb://other.servicebus.windows.net/;SharedAccessKeyName=l;SharedAccessKey=k"
    assert HostEventHubConnection.from_environ({"AzureWebJobsEventHubConnection": trigger}).connection_string == trigger
    assert HostEventHubConnection.from_environ({"AzureWebJobsEventHubConnection": trigger,
                                                "EventHubConnection": other}).connection_string == trigger
    assert HostEventHubConnection.from_environ({
        "ConnectionStrings__EventHubConnection": trigger}).connection_string == trigger
    connection = HostEventHubConnection.from_environ({
        "AZUREWEBJOBSEVENTHUBCONNECTION__FULLYQUALIFIEDNAMESPACE": "ns.servicebus.windows.net",
        "AzureWebJobsEventHubConnection__credential": "managedidentity",
        "AzureWebJobsEventHubConnection__clientId": "0f1e", "EventHubConnection": other})
    assert (connection.connection_string, connection.fully_qualified_namespace, connection.managed_identity,
            connection.client_id) == (None, "ns.servicebus.windows.net", True, "0f1e")
    # named as the variable set, not as the plain EventHubConnection__clientId the readers take
    with pytest.raises(ConfigurationError, match=r"^AzureWebJobsEventHubConnection__clientId needs"):
        HostEventHubConnection.from_environ({"AzureWebJobsEventHubConnection__fullyQualifiedNamespace": "ns.x",
                                             "AzureWebJobsEventHubConnection__clientId": "0f1e"})
    with pytest.raises(ConfigurationError, match=r"^AzureWebJobsEventHubConnection is set but names no endpoint"):
        HostEventHubConnection.from_environ({"AzureWebJobsEventHubConnection": "garbage",
                                             "EventHubConnection": other}).checkpoint_source("hub", "sluice")
