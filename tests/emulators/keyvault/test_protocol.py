"""The wire protocol under the SDK: the auth challenge, api-version, error shapes, unsupported paths."""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient

from shared.adapters.identity import LocalDevelopmentCredential
from tests.fixtures.keyvault import KeyVaultEmulator, unique_secret_name

pytestmark = pytest.mark.timeout(60)

API = {"api-version": "2026-04-01"}
AUTH = {"Authorization": "Bearer any-token-at-all"}


def call(emulator: KeyVaultEmulator, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, emulator.url.rstrip("/") + path, verify=str(emulator.ca_file), timeout=10,
                            **kwargs)


def test_tls_is_verified_with_the_written_ca_bundle(keyvault_emulator: KeyVaultEmulator) -> None:
    assert keyvault_emulator.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(keyvault_emulator.url + "secrets", params=API, timeout=10)  # system CAs do not trust it


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}])
def test_requests_without_a_bearer_token_get_the_key_vault_challenge(
        keyvault_emulator: KeyVaultEmulator, headers: dict[str, str]) -> None:
    response = call(keyvault_emulator, "GET", "/secrets/anything/", params=API, headers=headers)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'authorization="https://login.microsoftonline.com/' in challenge
    assert 'resource="https://vault.azure.net"' in challenge
    assert response.json()["error"]["code"] == "Unauthorized"


def test_the_challenge_comes_before_anything_else(keyvault_emulator: KeyVaultEmulator) -> None:
    # Even an unsupported path and a missing api-version answer 401 first, as the SDK's first call expects.
    assert call(keyvault_emulator, "GET", "/keys/k").status_code == 401


def test_api_version_is_required_and_checked(keyvault_emulator: KeyVaultEmulator) -> None:
    missing = call(keyvault_emulator, "GET", "/secrets", headers=AUTH)
    assert missing.status_code == 400 and "api-version" in missing.json()["error"]["message"]
    unknown = call(keyvault_emulator, "GET", "/secrets", headers=AUTH, params={"api-version": "1999-01-01"})
    assert unknown.status_code == 400 and "1999-01-01" in unknown.json()["error"]["message"]
    older = call(keyvault_emulator, "GET", "/secrets", headers=AUTH, params={"api-version": "7.4"})
    assert older.status_code == 200


def test_unknown_paths_and_methods_are_json_errors_naming_them(keyvault_emulator: KeyVaultEmulator) -> None:
    keys = call(keyvault_emulator, "GET", "/keys/my-key", headers=AUTH, params=API)
    assert keys.status_code == 400
    assert keys.json()["error"]["code"] == "NotSupported" and "/keys/my-key" in keys.json()["error"]["message"]

    wrong = call(keyvault_emulator, "POST", "/secrets/some-name", headers=AUTH, params=API)
    assert wrong.status_code == 405
    error = wrong.json()["error"]
    assert (
        error["code"] == "MethodNotAllowed" and "POST" in error["message"] and "/secrets/some-name" in error["message"]
    )


@pytest.mark.parametrize(("body", "named"), [
    ({}, "'value'"),
    ({"value": 5}, "'value'"),
    ({"value": "v", "attributes": {"enabled": "yes"}}, "'enabled'"),
    ({"value": "v", "attributes": {"exp": "tomorrow"}}, "'exp'"),
    ({"value": "v", "tags": {"a": 1}}, "'tags'"),
    ({"value": "v", "colour": "red"}, "colour"),
    ({"value": "x" * (25 * 1024 + 1)}, "'value'"),
])
def test_bad_bodies_are_400_naming_the_property(keyvault_emulator: KeyVaultEmulator, body: dict, named: str) -> None:
    response = call(keyvault_emulator, "PUT", f"/secrets/{unique_secret_name()}", headers=AUTH, params=API,
                    json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadParameter" and named in response.json()["error"]["message"]


def test_a_body_over_the_size_limit_is_400_naming_the_value_limit_not_a_500(
        keyvault_emulator: KeyVaultEmulator) -> None:
    # Over aiohttp's client_max_size (1 MiB) request.json() raises HTTPRequestEntityTooLarge, which used to reach the
    # errors middleware as a 500 InternalServerError: the SDK's retry policy then sends the same oversized request
    # again, and the caller gets a server error instead of "the value is too large".
    client = SecretClient(keyvault_emulator.url, LocalDevelopmentCredential(), verify_challenge_resource=False,
                          connection_verify=str(keyvault_emulator.ca_file), retry_total=0)
    try:
        with pytest.raises(HttpResponseError) as caught:
            client.set_secret(unique_secret_name("big"), "x" * (1024 * 1024 + 64))
    finally:
        client.close()
    error = caught.value
    code = error.error.code if error.error is not None else None
    assert error.status_code in (400, 413), f"got {error.status_code} {code}: {error.message.splitlines()[0]}"
    assert code != "InternalServerError"
    assert error.status_code == 400 and code == "BadParameter"
    assert "'value'" in error.message and "25 KiB" in error.message


def test_a_body_that_is_not_json_is_400(keyvault_emulator: KeyVaultEmulator) -> None:
    response = call(keyvault_emulator, "PUT", f"/secrets/{unique_secret_name()}", headers=AUTH, params=API,
                    data=b"{not json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_a_bad_page_size_or_skip_token_is_400(keyvault_emulator: KeyVaultEmulator) -> None:
    too_big = call(keyvault_emulator, "GET", "/secrets", headers=AUTH, params={**API, "maxresults": "26"})
    assert too_big.status_code == 400 and "maxresults" in too_big.json()["error"]["message"]
    forged = call(keyvault_emulator, "GET", "/secrets", headers=AUTH, params={**API, "$skiptoken": "garbage!"})
    assert forged.status_code == 400 and "$skiptoken" in forged.json()["error"]["message"]


def test_the_secret_id_names_the_vault_the_client_used(keyvault_emulator: KeyVaultEmulator) -> None:
    name = unique_secret_name()
    body = call(keyvault_emulator, "PUT", f"/secrets/{name}", headers=AUTH, params=API, json={"value": "v"}).json()
    assert body["id"].startswith(f"{keyvault_emulator.url}secrets/{name}/")
    assert body["value"] == "v" and body["attributes"]["enabled"] is True
    assert isinstance(body["attributes"]["created"], int)
