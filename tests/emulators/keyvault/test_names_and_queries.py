"""The Key Vault emulator refuses what Azure refuses: a name ending in a newline, a query parameter it lacks."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient

from tests.fixtures.keyvault import unique_secret_name
from tests.unit.test_telemetry import collected, sdk  # noqa: F401 (sdk: a fixture)

pytestmark = pytest.mark.timeout(90)



def test_kv_a_secret_name_ending_in_a_newline_is_refused(keyvault_client: SecretClient) -> None:
    """Key Vault secret names are 1-127 characters of [0-9a-zA-Z-] (docs/emulators/keyvault.md, "Names"; Azure's
    "About keys, secrets and certificates"): anything else is 400 BadParameter naming the name.

    Before, the emulator's check (``emulators/keyvault/store.py`` ``NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")``
    with ``NAME.match``) lets a name ending in "\\n" through, because ``$`` also matches before a trailing newline:
    ``set_secret("name\\n", ...)`` (sent as ``/secrets/name%0A``) answers 200 and creates a second, distinct secret
    whose id contains a raw newline, next to ``name``. A silent wrong answer where Azure refuses.
    """
    name = unique_secret_name("nl")
    keyvault_client.set_secret(name, "right")
    with pytest.raises(HttpResponseError) as caught:
        keyvault_client.set_secret(name + "\n", "wrong")
    assert caught.value.status_code == 400
    assert caught.value.error.code == "BadParameter"


@pytest.mark.parametrize("out_content_type", ["text/plain", "application/x-pem-file"])
def test_kv_get_with_out_content_type_is_not_silently_ignored(keyvault_client: SecretClient,
                                                               out_content_type: str) -> None:
    """``SecretClient.get_secret(..., out_content_type=...)`` (azure-keyvault-secrets 4.12, query parameter
    ``outContentType`` since api-version 2025-06-01-preview) asks the vault to convert a certificate-backed secret:
    "If a supported format is specified, the certificate content is converted to the requested format. Currently,
    only PFX to PEM conversion is supported. If an unsupported format is specified, the request is rejected."
    The emulator models no certificate-backed secrets and no conversion, so by its own rule ("a clear error for
    anything unsupported") the parameter must be refused (400, naming ``outContentType``), never ignored.

    Before, ``server.py:get_secret`` never looked at the query: a secret stored as PFX
    (contentType application/x-pkcs12) asked for as PEM comes back as the unconverted PFX value with 200, and an
    unsupported format such as text/plain is also 200 where Azure rejects the request.
    """
    name = unique_secret_name("pfx")
    keyvault_client.set_secret(name, "MIIKcQIBAzCCCi0GCSqGSIb3DQEHAaCCCh4EggoaMIIKFjCCBg8GCSqGSIb3DQEH",
                               content_type="application/x-pkcs12")
    with pytest.raises(HttpResponseError) as caught:
        got = keyvault_client.get_secret(name, out_content_type=out_content_type)
        pytest.fail(f"200 with the value unconverted: {got.value[:20]}... (content type {got.properties.content_type})")
    assert caught.value.status_code == 400
    assert "outContentType" in caught.value.error.message
