"""shared.adapters.keyvault and shared.bootstrap.secret() against the Key Vault emulator (real SDK, HTTPS).

Secret values are compared, never printed: assertion messages show names only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import ChainedTokenCredential, ClientSecretCredential, CredentialUnavailableError
from azure.keyvault.secrets import SecretClient

from shared import bootstrap
from shared.adapters.identity import LocalDevelopmentCredential
from shared.adapters.keyvault import KeyVaultSecrets
from shared.exceptions import ConfigurationError, DependencyUnavailable, SluiceError
from shared.settings import load_settings
from sluice.localstack import free_port
from tests.fixtures.keyvault import KeyVaultEmulator, start_keyvault_emulator, unique_secret_name

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def secrets(keyvault_emulator: KeyVaultEmulator) -> Iterator[KeyVaultSecrets]:
    adapter = KeyVaultSecrets(keyvault_emulator.url, ca_file=str(keyvault_emulator.ca_file))
    yield adapter
    adapter.close()


def _fetch_failure(emulator: KeyVaultEmulator, credential: TokenCredential) -> SluiceError:
    """What reading a secret with ``credential`` (no retries) raised."""
    adapter = KeyVaultSecrets(emulator.url, ca_file=str(emulator.ca_file), credential=credential, retries=0)
    try:
        with pytest.raises(SluiceError) as caught:
            adapter.fetch("any-secret")
    finally:
        adapter.close()
    return caught.value


def test_reads_a_secret_once_per_process(keyvault_emulator: KeyVaultEmulator, secrets: KeyVaultSecrets,
                                        keyvault_client: SecretClient, caplog: pytest.LogCaptureFixture) -> None:
    name = unique_secret_name("db")
    keyvault_client.set_secret(name, "first-value")
    with caplog.at_level(logging.DEBUG):
        assert secrets.get(name) == "first-value", f"wrong value for {name}"
    assert name in caplog.text, "the read is logged by name"
    assert "first-value" not in caplog.text, "a secret value reached the logs"
    keyvault_client.set_secret(name, "rotated-value")
    assert secrets.get(name) == "first-value", "the value is cached for the life of the process"
    restarted = KeyVaultSecrets(keyvault_client.vault_url, ca_file=str(keyvault_emulator.ca_file))
    try:
        assert restarted.get(name) == "rotated-value", "a new process reads the rotated value"
    finally:
        restarted.close()


def test_a_missing_secret_is_a_configuration_error_naming_it(secrets: KeyVaultSecrets) -> None:
    name = unique_secret_name("missing")
    with pytest.raises(ConfigurationError, match=name):
        secrets.get(name)


def test_a_ca_bundle_that_is_not_a_file_is_a_configuration_error(keyvault_emulator: KeyVaultEmulator,
                                                                    tmp_path: Path) -> None:
    # requests would raise a bare OSError at the first read, which the stores' rotation code does not expect
    with pytest.raises(ConfigurationError, match=r"no-such-ca\.pem.*is not a file"):
        KeyVaultSecrets(keyvault_emulator.url, ca_file=str(tmp_path / "no-such-ca.pem"))


def test_an_unreachable_sign_in_endpoint_is_retryable_and_a_refused_credential_is_not(
        keyvault_emulator: KeyVaultEmulator) -> None:
    # ClientSecretCredential raises ClientAuthenticationError for both; only the first can mend by itself
    unreachable = ClientSecretCredential(str(uuid.UUID(int=0)), "client", "secret",
                                         authority=f"https://127.0.0.1:{free_port()}",
                                         disable_instance_discovery=True, retry_total=0)
    failure = _fetch_failure(keyvault_emulator, unreachable)
    assert isinstance(failure, DependencyUnavailable), failure
    assert re.search("signing in to read secret 'any-secret'", str(failure)), failure

    class Refused:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")

    failure = _fetch_failure(keyvault_emulator, Refused())
    assert isinstance(failure, ConfigurationError), failure
    assert re.search(r"cannot authenticate.*AADSTS7000215", str(failure)), failure


def test_an_unreachable_sign_in_endpoint_behind_a_credential_chain_is_retryable(
        keyvault_emulator: KeyVaultEmulator) -> None:
    # On Azure the credential is DefaultAzureCredential, a ChainedTokenCredential: it catches its members' errors and
    # raises a new ClientAuthenticationError with no cause, so the network error is not under the exception it
    # raises. An Entra ID (or IMDS / workload-identity endpoint) outage must still be retryable, not "retrying
    # cannot help". Same credential and endpoint as the test above, only wrapped in a chain.
    unreachable = ClientSecretCredential(str(uuid.UUID(int=0)), "client", "secret",
                                         authority=f"https://127.0.0.1:{free_port()}",
                                         disable_instance_discovery=True, retry_total=0)
    failure = _fetch_failure(keyvault_emulator, ChainedTokenCredential(unreachable))
    assert isinstance(failure, DependencyUnavailable), (
        f"an unreachable sign-in endpoint behind a credential chain gave {type(failure).__name__}: "
        f"{str(failure).splitlines()[0]}")
    assert "any-secret" in str(failure)


def test_a_chain_member_that_does_not_apply_here_is_no_outage(keyvault_emulator: KeyVaultEmulator) -> None:
    # DefaultAzureCredential's managed identity member says "unavailable" when no IMDS endpoint answers (off Azure):
    # the chain moves on, and when no member applies the credential is missing, which retrying cannot mend.
    class NoEndpoint:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            try:
                raise ServiceRequestError("no response from the IMDS endpoint")
            except ServiceRequestError as exc:
                raise CredentialUnavailableError("no managed identity endpoint here") from exc

    failure = _fetch_failure(keyvault_emulator, ChainedTokenCredential(NoEndpoint()))
    assert isinstance(failure, ConfigurationError), failure
    assert re.search(r"cannot authenticate to Key Vault .* secret 'any-secret'", str(failure)), failure


def test_a_refused_credential_behind_a_credential_chain_keeps_its_reason(
        keyvault_emulator: KeyVaultEmulator) -> None:
    # A chain's message names each member's error on a line of its own after "failed to retrieve a token from the
    # included credentials."; the AADSTS code an operator needs is there, not on the first line.
    class Refused:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")

    failure = _fetch_failure(keyvault_emulator, ChainedTokenCredential(Refused()))
    assert "any-secret" in str(failure)
    assert "AADSTS7000215" in str(failure), f"the reason was dropped: {failure}"
    assert "\n" not in str(failure), "the reason is kept on one line"


def test_a_disabled_secret_is_a_configuration_error_naming_it(secrets: KeyVaultSecrets,
                                                              keyvault_client: SecretClient) -> None:
    name = unique_secret_name("off")
    keyvault_client.set_secret(name, "value", enabled=False)
    with pytest.raises(ConfigurationError, match=rf"{name}.*SecretDisabled|{name}.*disabled"):
        secrets.get(name)


def test_expired_and_not_yet_valid_secrets_are_refused(secrets: KeyVaultSecrets,
                                                       keyvault_client: SecretClient) -> None:
    now = datetime.now(UTC)
    expired = unique_secret_name("expired")
    keyvault_client.set_secret(expired, "value", expires_on=now - timedelta(hours=1))
    with pytest.raises(ConfigurationError, match=rf"{expired}.*expired"):
        secrets.get(expired)
    staged = unique_secret_name("staged")
    keyvault_client.set_secret(staged, "value", not_before=now + timedelta(days=1))
    with pytest.raises(ConfigurationError, match=rf"{staged}.*not valid before"):
        secrets.get(staged)
    current = unique_secret_name("current")
    keyvault_client.set_secret(current, "value", not_before=now - timedelta(days=1), expires_on=now + timedelta(days=1))
    assert secrets.get(current) == "value"


def test_an_empty_secret_value_is_a_configuration_error_not_a_password(secrets: KeyVaultSecrets,
                                                                      keyvault_client: SecretClient) -> None:
    # Key Vault stores an empty value. Handed on as a store password, every log-in fails (libpq: "no password
    # supplied", no refusal to re-read the secret for) and the store reads as down: batches retried, dead-lettered
    name = unique_secret_name("empty")
    keyvault_client.set_secret(name, "")
    with pytest.raises(ConfigurationError, match=rf"{name}.*is empty"):
        secrets.fetch(name)


@pytest.mark.parametrize("bad", ["under_score", "", "x" * 128, "Pg-P@ssw0rd!2024"])
def test_a_bad_secret_name_is_refused_before_any_request(secrets: KeyVaultSecrets, bad: str) -> None:
    # not echoed: a value that is no name is most often the secret itself, given where its name belongs
    with pytest.raises(ConfigurationError, match="not a valid Key Vault secret name") as caught:
        secrets.get(bad)
    assert not bad or bad not in str(caught.value)


def test_a_ca_bundle_without_a_certificate_is_a_configuration_error(keyvault_emulator: KeyVaultEmulator,
                                                                     tmp_path: Path) -> None:
    # every read would fail inside the TLS set-up: not an outage a retry could mend
    bundle = tmp_path / "ca.pem"
    bundle.write_text("this is not a PEM certificate\n")
    adapter = KeyVaultSecrets(keyvault_emulator.url, ca_file=str(bundle), retries=0, timeout=5)
    try:
        with pytest.raises(ConfigurationError, match=r"ca\.pem.*holds no PEM certificate"):
            adapter.fetch(unique_secret_name())
    finally:
        adapter.close()


def test_a_wrong_ca_bundle_is_a_dependency_error(keyvault_emulator: KeyVaultEmulator, tmp_path: Path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    adapter = KeyVaultSecrets(keyvault_emulator.url, ca_file=str(other), retries=0)
    try:
        with pytest.raises(DependencyUnavailable, match="key vault"):
            adapter.get("anything")
    finally:
        adapter.close()


def test_a_ca_bundle_gone_after_start_is_a_configuration_error_not_a_bare_oserror(
        keyvault_emulator: KeyVaultEmulator, keyvault_client: SecretClient, tmp_path: Path) -> None:
    # the bundle is checked at construction, but requests opens it again for every new connection: once it is gone
    # (a re-made certificate directory, an unmounted volume), a read raised requests' bare OSError, which escaped
    # RotatingSecret.refresh (it keeps the cached value for a SluiceError) into the stores' log-in code
    name = unique_secret_name("ca-gone")
    keyvault_client.set_secret(name, "value")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(keyvault_emulator.ca_file.read_bytes())
    adapter = KeyVaultSecrets(keyvault_emulator.url, ca_file=str(bundle), retries=0)
    try:
        bundle.unlink()  # after start-up: the next new connection (here the first) opens the bundle again
        with pytest.raises(ConfigurationError, match=r"ca\.pem.*cannot be read"):
            adapter.fetch(name)
    finally:
        adapter.close()


def test_a_vault_whose_challenge_names_another_domain_is_a_configuration_error(tmp_path: Path) -> None:
    # A vault URL neither under the challenge's resource domain (vault.azure.net) nor on one of the three names
    # treated as local (a custom DNS name or proxy, the emulator on another loopback address or a container's host
    # name): the SDK refuses the challenge with a bare ValueError, which escaped fetch (its contract: a SluiceError)
    emulator = start_keyvault_emulator(tmp_path / "certs", "--host", "127.0.0.2")
    try:
        url = f"https://127.0.0.2:{emulator.running.port}/"
        adapter = KeyVaultSecrets(url, ca_file=str(emulator.ca_file), credential=LocalDevelopmentCredential(),
                                  retries=0)
        try:
            with pytest.raises(ConfigurationError, match=r"'any-secret'.*challenge resource.*vault\.azure\.net"):
                adapter.fetch("any-secret")
        finally:
            adapter.close()
    finally:
        emulator.running.stop()


def test_a_vault_url_with_an_upper_case_scheme_is_read_and_accepted(keyvault_emulator: KeyVaultEmulator) -> None:
    # a URL's scheme is case-insensitive (RFC 3986 3.1): the SDK reads through HTTPS://, so the settings take it
    name = unique_secret_name()
    client = keyvault_emulator.client()
    try:
        client.set_secret(name, "value")
    finally:
        client.close()
    secrets = KeyVaultSecrets(keyvault_emulator.url.replace("https://", "HTTPS://"),
                              ca_file=str(keyvault_emulator.ca_file))
    try:
        assert secrets.fetch(name) == "value"
    finally:
        secrets.close()
    assert load_settings(_sample_environ(SLUICE_KEYVAULT_URL="HTTPS://kv.vault.azure.net/")).keyvault.url


@pytest.mark.parametrize("suffix", ["secrets/{name}/", "secrets/{name}", "?tenant=contoso"])
def test_a_vault_url_the_sdk_cannot_read_through_is_refused_at_start_up(
        suffix: str, keyvault_emulator: KeyVaultEmulator) -> None:
    """The SDK appends ``/secrets/<name>`` to the whole vault URL: one holding a secret's own URI (what a
    ``@Microsoft.KeyVault(SecretUri=...)`` reference carries, easy to paste) or a query reads nothing, even a
    secret that exists. Accepted at start-up, every secret failed at the first store connection."""
    name = unique_secret_name("pg")
    client = keyvault_emulator.client()
    try:
        client.set_secret(name, "the-password")
    finally:
        client.close()
    url = keyvault_emulator.url + suffix.format(name=name)
    reader = KeyVaultSecrets(url, ca_file=str(keyvault_emulator.ca_file), retries=0)
    try:
        with pytest.raises(ConfigurationError):
            reader.fetch(name)
    finally:
        reader.close()
    with pytest.raises(ConfigurationError, match="SLUICE_KEYVAULT_URL: must be the endpoint alone"):
        load_settings(_sample_environ(SLUICE_KEYVAULT_URL=url,
                                      SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file)))
    assert load_settings(_sample_environ(SLUICE_KEYVAULT_URL=keyvault_emulator.url,
                                         SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file))).keyvault.url


def test_an_unreachable_vault_is_a_dependency_error_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    adapter = KeyVaultSecrets(f"https://127.0.0.1:{port}/", timeout=1.0, retries=0)
    try:
        with pytest.raises(DependencyUnavailable, match="key vault unavailable: reading secret 'pg'"):
            adapter.get("pg")
    finally:
        adapter.close()


def _sample_environ(**overrides: str) -> dict[str, str]:
    values = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    return {**values, **overrides}


@pytest.fixture
def bootstrap_settings(monkeypatch: pytest.MonkeyPatch):
    """Point shared.bootstrap at settings built from an explicit mapping (never os.environ)."""

    def use(environ: dict[str, str]):
        loaded = load_settings(environ)
        monkeypatch.setattr(bootstrap, "settings", cache(lambda: loaded))
        bootstrap.reset()
        return loaded

    yield use
    bootstrap.reset()


def test_bootstrap_resolves_the_postgres_password_secret_through_the_vault(
        keyvault_emulator: KeyVaultEmulator, keyvault_client: SecretClient, bootstrap_settings) -> None:
    name = unique_secret_name("postgres-password")
    keyvault_client.set_secret(name, "pg-from-the-vault")
    settings = bootstrap_settings(_sample_environ(
        SLUICE_POSTGRES_PASSWORD_SECRET=name,
        SLUICE_POSTGRES_SSLMODE="verify-full", SLUICE_POSTGRES_SSLROOTCERT="system",  # a vault password needs it
        SLUICE_KEYVAULT_URL=keyvault_emulator.url,
        SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
    ))
    assert settings.postgres.password is None and settings.postgres.password_secret == name
    resolved = bootstrap.secret(settings.postgres.password, settings.postgres.password_secret)
    assert resolved == "pg-from-the-vault", "the password secret did not resolve to the stored value"
    assert "pg-from-the-vault" not in json.dumps(settings.as_dict())


def test_bootstrap_names_a_missing_password_secret(keyvault_emulator: KeyVaultEmulator, bootstrap_settings) -> None:
    name = unique_secret_name("postgres-password")
    settings = bootstrap_settings(_sample_environ(
        SLUICE_POSTGRES_PASSWORD_SECRET=name,
        SLUICE_POSTGRES_SSLMODE="verify-full", SLUICE_POSTGRES_SSLROOTCERT="system",  # a vault password needs it
        SLUICE_KEYVAULT_URL=keyvault_emulator.url,
        SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
    ))
    with pytest.raises(ConfigurationError, match=name):
        bootstrap.secret(settings.postgres.password, settings.postgres.password_secret)


def test_a_plain_password_wins_without_touching_the_vault(bootstrap_settings) -> None:
    settings = bootstrap_settings(_sample_environ(SLUICE_POSTGRES_PASSWORD="plain"))
    assert bootstrap.secret(settings.postgres.password, settings.postgres.password_secret) == "plain"
    assert bootstrap.keyvault.cache_info().currsize == 0


def test_the_appinsights_connection_string_comes_from_its_secret_unless_the_host_set_one(
        keyvault_emulator: KeyVaultEmulator, keyvault_client: SecretClient, bootstrap_settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_secret_name("appinsights-connection-string")
    value = f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=https://127.0.0.1:1/"
    keyvault_client.set_secret(name, value)
    settings = bootstrap_settings(_sample_environ(
        SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET=name,
        SLUICE_KEYVAULT_URL=keyvault_emulator.url,
        SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
    ))
    # Set, then removed, through monkeypatch: whatever the code under test writes is undone after the test
    # (a connection string left behind would send every later test's telemetry to Azure Monitor).
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", "placeholder")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING")
    bootstrap.appinsights_from_vault(settings.telemetry.appinsights_connection_string_secret)
    assert os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING") == value, f"{name} was not put in the environment"

    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", "set-by-the-host")
    keyvault_client.set_secret(name, "not-this-one")
    bootstrap.appinsights_from_vault(name)
    assert os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "set-by-the-host"

    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING")
    missing = unique_secret_name("no-such-connection-string")
    with pytest.raises(ConfigurationError, match=missing):
        bootstrap.appinsights_from_vault(missing)
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in os.environ


def test_no_connection_string_outlives_the_test_above() -> None:
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in os.environ
