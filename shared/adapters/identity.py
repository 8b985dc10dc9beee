"""Credentials for identity-based connections: azure-identity on Azure, a development token locally.

On Azure the credential is ``DefaultAzureCredential`` (on AKS: workload identity,
from the ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_FEDERATED_TOKEN_FILE`` the
webhook injects; on a Function App: its managed identity), or
``ManagedIdentityCredential`` when a connection's settings say ``managedidentity``,
as the Functions host reads ``<connection>__credential`` and ``__clientId``.

An endpoint on 127.0.0.1, localhost or ::1 is a local emulator, and gets
:class:`LocalDevelopmentCredential` instead: an unsigned token with an Entra ID
issuer and the audience of the scope asked for. The local Key Vault emulator takes
any bearer token, and Azurite with ``--oauth basic`` checks a token's issuer,
audience and lifetime but not its signature, so both accept it; no Azure service
would, and it is never used for an endpoint that is not local.
"""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlparse

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOCAL_TENANT = "00000000-0000-0000-0000-000000000000"
_LIFETIME = 3600


def is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOCAL_HOSTS


def _b64(document: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).rstrip(b"=").decode()


class LocalDevelopmentCredential:
    """Development tokens for local emulators only (see the module docstring)."""

    def __init__(self, *, lifetime: int = _LIFETIME, object_id: str = "sluice-local-development") -> None:
        self.lifetime = lifetime
        self.object_id = object_id

    def _token(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        now = int(time.time())
        expires = now + self.lifetime
        audience = scopes[0].removesuffix("/.default") if scopes else "https://storage.azure.com"
        claims = {"aud": audience, "iss": f"https://sts.windows.net/{LOCAL_TENANT}/", "iat": now, "nbf": now - 60,
                  "exp": expires, "tid": LOCAL_TENANT, "oid": self.object_id, "sub": "sluice-local"}
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.", expires

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(*self._token(scopes))

    def get_token_info(self, *scopes: str, options: object = None) -> AccessTokenInfo:
        return AccessTokenInfo(*self._token(scopes))


def credential_for(url: str, *, managed_identity: bool = False, client_id: str | None = None) -> TokenCredential:
    """The credential for an identity-based connection to ``url``."""
    if is_local(url):
        return LocalDevelopmentCredential()
    # Heavy imports, needed on Azure only.
    if managed_identity:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()
