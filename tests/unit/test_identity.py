"""Which credential an identity-based connection gets, and what the local development token claims."""

from __future__ import annotations

import base64
import json

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from shared.adapters.identity import LOCAL_TENANT, LocalDevelopmentCredential, credential_for


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
