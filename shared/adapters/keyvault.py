"""Secrets from Azure Key Vault through azure-identity.

In Azure the credential is ``DefaultAzureCredential`` (the Function App's managed
identity). Against the local Key Vault emulator (a vault URL on 127.0.0.1 or
localhost) a fixed development token is used instead, and the emulator's CA
bundle (``SLUICE_KEYVAULT_CA_FILE``) verifies its HTTPS certificate.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from urllib.parse import urlparse

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from shared.exceptions import ConfigurationError, DependencyUnavailable

logger = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class LocalEmulatorCredential:
    """A fixed token for the local Key Vault emulator only (it does not validate tokens)."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("local-emulator-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: object = None) -> AccessTokenInfo:
        return AccessTokenInfo("local-emulator-token", int(time.time()) + 3600)


def is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOCAL_HOSTS


class KeyVaultSecrets:
    """Reads secrets by name; each is fetched once per process."""

    def __init__(self, url: str, *, ca_file: str | None = None, credential: TokenCredential | None = None) -> None:
        if credential is None:
            if is_local(url):
                credential = LocalEmulatorCredential()
            else:
                from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - heavy import, Azure only

                credential = DefaultAzureCredential()
        options: dict = {"verify_challenge_resource": not is_local(url)}
        if ca_file:
            options["connection_verify"] = ca_file
        self._client = SecretClient(vault_url=url, credential=credential, **options)
        self._url = url
        self.get = cache(self._get)

    def _get(self, name: str) -> str:
        try:
            value = self._client.get_secret(name).value
        except ResourceNotFoundError:
            raise ConfigurationError(f"Key Vault {self._url} has no secret named {name!r}") from None
        except AzureError as exc:
            raise DependencyUnavailable("key vault", f"reading secret {name!r} from {self._url}: {exc}") from exc
        if value is None:
            raise ConfigurationError(f"Key Vault secret {name!r} has no value")
        logger.info("read secret %s from Key Vault", name)
        return value
