"""Secrets from Azure Key Vault through azure-identity.

The credential comes from :func:`shared.adapters.identity.credential_for`:
``DefaultAzureCredential`` on Azure (on AKS: workload identity), a development
token against the local Key Vault emulator (a vault URL on 127.0.0.1, localhost
or ::1). Locally the challenge's resource is not checked either (it names
``vault.azure.net``, not the local host), and the emulator's CA bundle
(``SLUICE_KEYVAULT_CA_FILE``) verifies its HTTPS certificate.

Errors: a secret that is missing, disabled, expired, not yet valid, empty, badly
named, or that the identity may not read, a refused credential, a CA bundle that
holds no certificate or is gone since start-up, and a vault URL whose challenge
names another domain (the SDK's bare ``ValueError``: a custom DNS name, or an
emulator on a host other than the three local names), are a
:class:`ConfigurationError` naming the secret or the bundle (retrying cannot
help); a vault or sign-in endpoint that cannot be reached is
:class:`DependencyUnavailable`.
Values are never logged.

Telling "refused" from "unreachable" when signing in: a bare credential raises
``ClientAuthenticationError`` with the network error as its cause. A credential
chain (``DefaultAzureCredential`` is a ``ChainedTokenCredential``) catches its
members' errors and raises a new ``ClientAuthenticationError`` that only *describes*
them in its message, with no cause. So the adapter has each member of a chain note
the exception it raises during a read (:func:`_note_sign_in_errors`), and looks for
a network error under those, not in the message text. A member that says it does not
apply here (``CredentialUnavailableError``, e.g. no managed identity endpoint on this
host) is not counted: the chain moves on from it, and an outage shows up as the error
of the member that did try.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import cache, wraps
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.secrets import KeyVaultSecret, SecretClient

from shared.adapters.identity import credential_for, is_local
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.settings import SECRET_NAME, ca_bundle_problem

logger = logging.getLogger(__name__)

REASON_LIMIT = 2000  # characters of a service or sign-in error kept in our messages
_CHALLENGE_HINT = (
    "use the vault's own URL, under the domain its challenge names (https://<vault>.vault.azure.net/); "
    "a local Key Vault emulator must be reached on 127.0.0.1, localhost or ::1, where the challenge is not checked"
)


class KeyVaultSecrets:
    """Reads secrets by name: ``get`` once per process (cached), ``fetch`` every time (rotation)."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        credential: TokenCredential | None = None,
        timeout: float = 10.0,
        retries: int = 3,
    ) -> None:
        if credential is None:
            credential = credential_for(url)
        options: dict[str, Any] = {
            "verify_challenge_resource": not is_local(url),
            "connection_timeout": timeout,
            "read_timeout": timeout,
            "retry_total": retries,
        }
        if ca_file:
            if not os.path.isfile(ca_file):  # requests would raise a bare OSError at the first read
                raise ConfigurationError(f"the CA bundle {ca_file!r} for Key Vault {url} is not a file")
            options["connection_verify"] = ca_file
        _note_sign_in_errors(credential)
        self._client = SecretClient(vault_url=url, credential=credential, **options)
        self._url = url
        self._ca_file = ca_file
        self.get = cache(self.fetch)

    def close(self) -> None:
        self._client.close()

    def fetch(self, name: str) -> str:
        """The secret's current value, read from the vault now."""
        if not SECRET_NAME.fullmatch(name):
            raise ConfigurationError(
                f"a secret name of {len(name)} characters is not a valid Key Vault secret name (1-127 characters of "
                "0-9, a-z, A-Z and '-'; the value is not shown: is it the secret itself rather than its name?)"
            )
        try:
            with _sign_in_errors() as sign_in_errors:
                secret = self._client.get_secret(name)
        except ResourceNotFoundError:
            raise ConfigurationError(f"Key Vault {self._url} has no secret named {name!r}") from None
        except ClientAuthenticationError as exc:
            if _unreachable(exc, sign_in_errors):
                raise DependencyUnavailable(
                    "key vault", f"signing in to read secret {name!r} from {self._url}: {_reason(exc)}"
                ) from exc
            raise ConfigurationError(
                f"cannot authenticate to Key Vault {self._url} to read secret {name!r}: {_reason(exc)}"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise ConfigurationError(
                    f"Key Vault {self._url} refused to return secret {name!r}: {_reason(exc)} (a disabled secret, "
                    "or an identity without the 'Key Vault Secrets User' role)"
                ) from None
            if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 429:
                raise ConfigurationError(
                    f"Key Vault {self._url} rejected reading secret {name!r}: {_reason(exc)}"
                ) from None
            raise DependencyUnavailable(
                "key vault", f"reading secret {name!r} from {self._url}: {_reason(exc)}"
            ) from exc
        except (AzureError, OSError) as exc:
            # a CA bundle without a certificate fails every read inside the TLS set-up, and one gone since start-up
            # (requests opens it again for each new connection) fails with a bare OSError: no retry mends either
            problem = ca_bundle_problem(self._ca_file) if self._ca_file else None
            if problem:
                raise ConfigurationError(
                    f"the CA bundle {self._ca_file!r} for Key Vault {self._url} {problem}"
                ) from None
            raise DependencyUnavailable("key vault", f"reading secret {name!r} from {self._url}: {exc}") from exc
        except ValueError as exc:
            # the SDK's challenge checks (a vault URL not under the challenge's resource domain, a malformed
            # challenge) raise a bare ValueError: the URL or the vault is wrong, no retry mends that
            hint = f" ({_CHALLENGE_HINT})" if "challenge" in str(exc).lower() else ""
            raise ConfigurationError(f"Key Vault {self._url} cannot be read for secret {name!r}: {exc}{hint}") from None
        value = _valid_value(name, secret)
        logger.info("read secret %s from Key Vault", name)
        return value


def _valid_value(name: str, secret: KeyVaultSecret) -> str:
    """The value, unless the secret's own attributes say it must not be used now.

    Key Vault returns expired and not-yet-valid secrets (``exp``/``nbf`` are
    advisory on the service side), so the check is ours: an expired password is
    one whose rotation was missed, and a not-yet-valid one was staged for later.
    """
    now = datetime.now(UTC)
    expires, not_before = secret.properties.expires_on, secret.properties.not_before
    if expires is not None and expires <= now:
        raise ConfigurationError(f"Key Vault secret {name!r} expired at {expires.isoformat()}: rotate it")
    if not_before is not None and not_before > now:
        raise ConfigurationError(f"Key Vault secret {name!r} is not valid before {not_before.isoformat()}")
    if secret.value is None:
        raise ConfigurationError(f"Key Vault secret {name!r} has no value")
    if not secret.value:  # every secret Sluice reads is a password or a connection string: none may be empty
        raise ConfigurationError(f"Key Vault secret {name!r} is empty: give it a value (a password or connection "
                                 "string)")
    return secret.value


_attempts: ContextVar[list[BaseException] | None] = ContextVar("sluice_keyvault_sign_in_errors", default=None)


@contextmanager
def _sign_in_errors() -> Iterator[list[BaseException]]:
    """The exceptions the members of a credential chain raise inside the block (the SDK's sync pipeline asks for
    its token on the calling thread, so a context variable reaches them)."""
    errors: list[BaseException] = []
    token = _attempts.set(errors)
    try:
        yield errors
    finally:
        _attempts.reset(token)


def _note_sign_in_errors(credential: object) -> None:
    """Make each member of a credential chain (nested chains too) note what it raises while a read runs.

    The members' ``get_token``/``get_token_info`` are wrapped on the instance, so the chain, the member's class and
    its name in the chain's message stay as they were; outside a read the wrappers only pass the call on.
    """
    # azure-identity is a heavy import that local runs do without: if it is not loaded, there is no chain to see.
    chained = getattr(sys.modules.get("azure.identity"), "ChainedTokenCredential", None)
    if chained is None or not isinstance(credential, chained):
        return
    for member in credential.credentials:
        for method in ("get_token", "get_token_info"):
            call = getattr(member, method, None)
            if call is not None and not getattr(call, "_sluice_notes_errors", False):
                with suppress(AttributeError):  # a class with __slots__: its errors stay unseen, as before
                    setattr(member, method, _noting(call))
        _note_sign_in_errors(member)


def _noting(call: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(call)
    def noted(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            errors = _attempts.get()
            if errors is not None:
                errors.append(exc)
            raise

    noted._sluice_notes_errors = True  # type: ignore[attr-defined]
    return noted


def _network_error_under(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ServiceRequestError | ServiceResponseError):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def _unreachable(exc: ClientAuthenticationError, attempts: Sequence[BaseException] = ()) -> bool:
    """Whether signing in failed because the identity endpoint could not be reached (a network error under it),
    which a retry can mend, rather than because the credential was refused or is missing.

    ``attempts`` are the errors the members of a credential chain raised (see the module docstring); those of
    members that do not apply here (``CredentialUnavailableError``) are not counted.
    """
    if _network_error_under(exc):
        return True
    if not attempts:
        return False
    from azure.identity import CredentialUnavailableError

    return any(_network_error_under(error) for error in attempts if not isinstance(error, CredentialUnavailableError))


def _reason(exc: AzureError) -> str:
    """The service's error code and message, on one line.

    A credential chain's message lists each credential's error on its own line (the AADSTS code is there, not on
    the first line), so every line is kept, joined with "; ". A very long one keeps its start and its end: the end
    holds the error of the chain's last credential, the one that failed.
    """
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        text = f"{error.code}: {error.message}"
    else:
        text = str(exc.message if hasattr(exc, "message") else exc)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(text) > REASON_LIMIT:
        half = (REASON_LIMIT - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text
