"""Azure's documented limits of a secret's properties ("About Azure Key Vault secrets",
https://learn.microsoft.com/azure/key-vault/secrets/about-secrets), through the real azure-keyvault-secrets SDK:
a content type of at most 255 characters, tags of 512-character names and values. Over them the emulator answers
400 BadParameter, as Azure answers a property over its limit; at them it stores the secret. A text the emulator
cannot measure (a lone UTF-16 surrogate, which JSON carries) is a 400 too, never a 500 the SDK would retry.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient

from shared.adapters.identity import LocalDevelopmentCredential
from tests.fixtures.keyvault import KeyVaultEmulator, unique_secret_name

pytestmark = pytest.mark.timeout(60)

OVER_THE_LIMITS = {
    "content-type-256-chars": {"content_type": "c" * 256},
    "tag-name-513-chars": {"tags": {"n" * 513: "v"}},
    "tag-value-513-chars": {"tags": {"n": "v" * 513}},
}
AT_THE_LIMITS = {"content_type": "c" * 255, "tags": {"n" * 512: "v" * 512}}


@pytest.fixture
def no_retry_client(keyvault_emulator: KeyVaultEmulator) -> Iterator[SecretClient]:
    """A real SecretClient as Sluice builds one for a local vault, without retries (a 5xx is seen at once)."""
    client = SecretClient(keyvault_emulator.url, LocalDevelopmentCredential(), verify_challenge_resource=False,
                          connection_verify=str(keyvault_emulator.ca_file), retry_total=0)
    yield client
    client.close()


def _refused(call) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as caught:
        call()
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "BadParameter"
    return caught.value


@pytest.mark.parametrize("props", list(OVER_THE_LIMITS.values()), ids=list(OVER_THE_LIMITS))
def test_a_set_over_a_length_limit_is_bad_parameter(keyvault_client: SecretClient, props: dict) -> None:
    name = unique_secret_name("limits")
    error = _refused(lambda: keyvault_client.set_secret(name, "value", **props))
    assert ("contentType" if "content_type" in props else "tag") in str(error.message)
    assert [p.name for p in keyvault_client.list_properties_of_secrets() if p.name == name] == []


@pytest.mark.parametrize("props", list(OVER_THE_LIMITS.values()), ids=list(OVER_THE_LIMITS))
def test_an_update_over_a_length_limit_is_bad_parameter_and_changes_nothing(
        keyvault_client: SecretClient, props: dict) -> None:
    name = unique_secret_name("limits")
    keyvault_client.set_secret(name, "value", content_type="text/plain", tags={"kept": "yes"})
    _refused(lambda: keyvault_client.update_secret_properties(name, **props))
    kept = keyvault_client.get_secret(name).properties
    assert (kept.content_type, kept.tags) == ("text/plain", {"kept": "yes"})


def test_properties_at_the_limits_are_stored(keyvault_client: SecretClient) -> None:
    name = unique_secret_name("limits")
    keyvault_client.set_secret(name, "value", **AT_THE_LIMITS)
    stored = keyvault_client.get_secret(name).properties
    assert (stored.content_type, stored.tags) == (AT_THE_LIMITS["content_type"], AT_THE_LIMITS["tags"])


@pytest.mark.parametrize("where", ["value", "content type", "tag value"])
def test_a_lone_surrogate_is_bad_parameter_not_a_500(no_retry_client: SecretClient, where: str) -> None:
    """``"a\\ud800b"`` is valid JSON but no UTF-8 text: measuring it raised in the handler, a 500 that azure-core
    retries with the same body for minutes."""
    name, odd = unique_secret_name("surrogate"), "a\ud800b"
    call = {"value": lambda: no_retry_client.set_secret(name, odd),
            "content type": lambda: no_retry_client.set_secret(name, "v", content_type=odd),
            "tag value": lambda: no_retry_client.set_secret(name, "v", tags={"t": odd})}[where]
    assert "surrogate" in str(_refused(call).message)
