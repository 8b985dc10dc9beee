"""Settings: validated at start-up, every problem named, secrets never shown, the sample kept complete."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import get_args

import pytest
import trustme
from pydantic import SecretStr

from shared.exceptions import ConfigurationError
from shared.settings import GROUPS, env_names, load_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
HOST_ONLY = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags", "EventHubConnection"}


def test_the_sample_lists_exactly_the_settings_sluice_reads():
    expected = {name for group in GROUPS.values() for name in env_names(group)}
    listed = set(SAMPLE) - HOST_ONLY
    assert sorted(expected - listed) == [], "settings missing from local.settings.sample.json"
    assert sorted(listed - expected) == [], "sample lists settings that nothing reads"


def test_the_sample_is_valid_as_it_stands():
    settings = load_settings(SAMPLE)
    assert settings.cassandra.hosts == ["127.0.0.1"]
    assert settings.rules.critical_rules[0].measurement == "temperature"


def test_every_missing_or_bad_value_is_listed_in_one_error():
    values = dict(
        SAMPLE, SLUICE_CASSANDRA_PORT="ninety", SLUICE_REDIS_URL="http://cache", SLUICE_INGEST_MAX_BODY_BYTES="1"
    )
    del values["AzureWebJobsStorage"]
    with pytest.raises(ConfigurationError) as caught:
        load_settings(values)
    message = str(caught.value)
    for variable in (
        "AzureWebJobsStorage",
        "SLUICE_CASSANDRA_PORT",
        "SLUICE_REDIS_URL",
        "SLUICE_INGEST_MAX_BODY_BYTES",
    ):
        assert variable in message


def test_a_key_vault_secret_name_needs_a_vault():
    with pytest.raises(
        ConfigurationError, match="SLUICE_KEYVAULT_URL is required because SLUICE_POSTGRES_PASSWORD_SECRET"
    ):
        load_settings(dict(SAMPLE, SLUICE_POSTGRES_PASSWORD_SECRET="pg-password", SLUICE_POSTGRES_SSLMODE="verify-full",
                           SLUICE_POSTGRES_SSLROOTCERT="system"))


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"SLUICE_POSTGRES_PASSWORD_SECRET": "pg", "SLUICE_POSTGRES_SSLMODE": "require"},
     "SLUICE_POSTGRES_PASSWORD_SECRET names a Key Vault secret, which is only ever sent over verified TLS"),
    # verify-ca checks the chain, not the host name: anyone with a certificate from the same CA could pose as it
    ({"SLUICE_POSTGRES_PASSWORD_SECRET": "pg", "SLUICE_POSTGRES_SSLMODE": "verify-ca"},
     "SLUICE_POSTGRES_PASSWORD_SECRET names a Key Vault secret.*verify-ca does not check the server's host name"),
    ({"SLUICE_CASSANDRA_USERNAME": "sluice", "SLUICE_CASSANDRA_PASSWORD_SECRET": "cs"},
     "SLUICE_CASSANDRA_PASSWORD_SECRET names a Key Vault secret.*SLUICE_CASSANDRA_TLS=true"),
    ({"SLUICE_REDIS_URL": "redis://cache.example:6379/0", "SLUICE_REDIS_PASSWORD_SECRET": "rs"},
     "SLUICE_REDIS_PASSWORD_SECRET names a Key Vault secret.*rediss://"),
], ids=["postgres", "postgres-verify-ca", "cassandra", "redis"])
def test_a_password_from_the_vault_is_only_sent_over_verified_tls(overrides, expected):
    with pytest.raises(ConfigurationError, match=expected):
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL="https://vault.example/", **overrides))


@pytest.mark.parametrize(("store", "tls"), [
    ("POSTGRES", {"SLUICE_POSTGRES_SSLMODE": "verify-full", "SLUICE_POSTGRES_SSLROOTCERT": "system"}),
    ("REDIS", {"SLUICE_REDIS_URL": "rediss://cache.example:6380/0"}),
    ("CASSANDRA", {"SLUICE_CASSANDRA_USERNAME": "sluice", "SLUICE_CASSANDRA_TLS": "true"}),
])
def test_a_plain_password_and_a_vault_secret_for_one_store_are_refused(store: str, tls: dict[str, str]):
    # with both, bootstrap would use the plain value and never read the vault: a rotation there would go unseen
    with pytest.raises(ConfigurationError, match=f"set SLUICE_{store}_PASSWORD or SLUICE_{store}_PASSWORD_SECRET, "
                                                 "not both"):
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL="https://vault.example/", **tls,
                           **{f"SLUICE_{store}_PASSWORD": "plain-value", f"SLUICE_{store}_PASSWORD_SECRET": "pw"}))


@pytest.mark.parametrize(("overrides", "missing"), [
    ({"SLUICE_CASSANDRA_USERNAME": "sluice"}, "SLUICE_CASSANDRA_PASSWORD or SLUICE_CASSANDRA_PASSWORD_SECRET"),
    ({"SLUICE_CASSANDRA_PASSWORD": "plain-value"}, "SLUICE_CASSANDRA_USERNAME"),
    ({"SLUICE_CASSANDRA_PASSWORD_SECRET": "cs", "SLUICE_CASSANDRA_TLS": "true"}, "SLUICE_CASSANDRA_USERNAME"),
], ids=["user-only", "password-only", "secret-only"])
def test_a_cassandra_login_needs_both_user_name_and_password(overrides: dict[str, str], missing: str):
    # a user name alone logs in with an empty password, which Cassandra's PasswordAuthenticator and Cosmos DB refuse
    # ("Password must not be null") at the first connection, or is silently unused by a server without authentication
    with pytest.raises(ConfigurationError, match=missing):
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL="https://vault.example/", **overrides))
    both = load_settings(dict(SAMPLE, SLUICE_CASSANDRA_USERNAME="sluice", SLUICE_CASSANDRA_PASSWORD="plain-value"))
    assert both.cassandra.username == "sluice"


def test_a_pool_min_size_above_its_max_size_is_refused_naming_both():
    # psycopg_pool would raise a bare ValueError naming neither, at the first enrichment run or status request
    with pytest.raises(ConfigurationError, match=r"SLUICE_POSTGRES_POOL_MIN_SIZE \(8\) is above "
                                                 r"SLUICE_POSTGRES_POOL_MAX_SIZE \(4\)"):
        load_settings(dict(SAMPLE, SLUICE_POSTGRES_POOL_MIN_SIZE="8", SLUICE_POSTGRES_POOL_MAX_SIZE="4"))
    assert load_settings(dict(SAMPLE, SLUICE_POSTGRES_POOL_MIN_SIZE="4", SLUICE_POSTGRES_POOL_MAX_SIZE="4"))


def test_a_critical_cap_above_what_any_lookup_lists_is_refused():
    # each critical event the change feed adds scans the device's capped set, in Redis's one thread: a cap of a
    # million would hold Redis on every page, for events no lookup (limit 1-1000) can list
    with pytest.raises(ConfigurationError, match="SLUICE_REDIS_CRITICAL_PER_DEVICE_MAX"):
        load_settings(dict(SAMPLE, SLUICE_REDIS_CRITICAL_PER_DEVICE_MAX="1001"))
    capped = load_settings(dict(SAMPLE, SLUICE_REDIS_CRITICAL_PER_DEVICE_MAX="1000"))
    assert capped.redis.critical_per_device_max == 1000


def test_a_change_feed_budget_that_could_outlive_the_function_timeout_is_refused():
    # the last page a run starts gets its whole read timeout (then its save): budget + 3 reads must fit 8 minutes
    with pytest.raises(ConfigurationError, match=r"SLUICE_CHANGEFEED_TIME_BUDGET_SECONDS \+ 3 x "
                                                 r"SLUICE_CHANGEFEED_READ_TIMEOUT_SECONDS must be at most 480 s"):
        load_settings(dict(SAMPLE, SLUICE_CHANGEFEED_TIME_BUDGET_SECONDS="600"))
    assert load_settings(dict(SAMPLE, SLUICE_CHANGEFEED_TIME_BUDGET_SECONDS="450",
                              SLUICE_CHANGEFEED_READ_TIMEOUT_SECONDS="10")).changefeed.time_budget_seconds == 450


def test_a_dead_letter_deadline_shorter_than_one_storage_request_is_refused():
    """No attempt of a letter starts that could end past its deadline, so one request must fit in it; by default one
    takes at most 3 x (5 + 20) + 4 + 6 = 85 s, and a letter at most 180 s, well under the 10-minute functionTimeout."""
    storage = load_settings(dict(SAMPLE)).storage
    assert (storage.longest_request_seconds, storage.deadletter_deadline_seconds) == (85, 180)
    with pytest.raises(ConfigurationError, match=r"SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS=60 is shorter than one "
                                                 r"storage request may take \(85 s"):
        load_settings(dict(SAMPLE, SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS="60"))
    with pytest.raises(ConfigurationError, match="SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS"):
        load_settings(dict(SAMPLE, SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS="900"))  # past functionTimeout


@pytest.mark.parametrize(("url", "expected"), [
    ("rediss://cache.example:6380/0?ssl_cert_reqs=none", "ssl_cert_reqs must be 'required'"),
    ("rediss://cache.example:6380/0?ssl_check_hostname=false", "ssl_check_hostname must not be off"),
    # every spelling redis-py's URL parser reads as false (to_bool: 0, F, FALSE, N, NO in any case); of an option
    # given twice it takes the first
    ("rediss://cache.example:6380/0?ssl_check_hostname=n", "ssl_check_hostname must not be off"),
    ("rediss://cache.example:6380/0?ssl_check_hostname=F", "ssl_check_hostname must not be off"),
    ("rediss://cache.example:6380/0?ssl_check_hostname=no&ssl_check_hostname=true",
     "ssl_check_hostname must not be off"),
    ("rediss://cache.example:6380/0?ssl_cert_reqs=optional", "ssl_cert_reqs must be 'required'"),
    ("rediss://cache.example:6380/0?%70assword=hunter2", "must not carry a password"),
    ("rediss://cache.example:6380/0?PASSWORD=hunter2", "must not carry a password"),
    ("redis://cache.example:6379/0?ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt", "not a rediss:// URL"),
    ("rediss://cache.example:6380/0?ssl_ca_certs=/nowhere/ca.pem", "does not point to a file"),
], ids=["cert-reqs-none", "hostname-off", "hostname-n", "hostname-F", "hostname-first", "cert-reqs-optional",
        "encoded-password", "upper-case-password", "tls-options-on-plain",
        "missing-ca"])
def test_a_redis_url_cannot_weaken_tls_or_smuggle_a_password(url, expected):
    with pytest.raises(ConfigurationError, match=expected) as caught:
        load_settings(dict(SAMPLE, SLUICE_REDIS_URL=url))
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0?health_check_interval=", "redis://127.0.0.1:6379/0?max_connections=",
    "redis://127.0.0.1:6379/0?protocol=", "redis://127.0.0.1:6379/0?db=",
    "redis://127.0.0.1:6379/0?health_check_interval=30&health_check_interval=",
    "redis://127.0.0.1:6379/0?health_check_interval=30&health_check_interval=soon",
    "rediss://cache.example:6380/0?ssl_min_version=", "rediss://cache.example:6380/0?ssl_certfile=",
    "rediss://cache.example:6380/0?ssl_check_hostname=",
    "rediss://cache.example:6380/0?ssl_check_hostname=true&ssl_check_hostname=false",
])
def test_a_redis_url_is_read_as_redis_py_reads_it(url: str) -> None:
    """redis-py (blocking and asyncio) reads the query with parse_qs's defaults: a blank option is dropped (its
    default holds: host names are checked) and only an option's first value counts. The settings refused such URLs,
    which redis-py takes as they stand, with an error saying redis-py would not take the blank value."""
    import redis
    import redis.asyncio

    for client in (redis.Redis, redis.asyncio.Redis):
        kwargs = client.from_url(url).connection_pool.connection_kwargs
        assert kwargs.get("ssl_check_hostname", True) is True
    assert load_settings(dict(SAMPLE, SLUICE_REDIS_URL=url)).redis.url == url


def test_secrets_are_redacted_everywhere_they_could_be_printed():
    settings = load_settings(dict(SAMPLE, SLUICE_POSTGRES_PASSWORD="hunter2-pg", SLUICE_REDIS_PASSWORD="hunter2-redis"))
    assert settings.postgres.password.get_secret_value() == "hunter2-pg"
    for text in (str(settings.as_dict()), repr(settings), str(settings)):
        assert "hunter2" not in text
        assert "AccountKey" not in text and "UseDevelopmentStorage" not in text


SECRET_VALUED = [variable for group in GROUPS.values()
                 for variable, field in zip(env_names(group), group.model_fields.values(), strict=True)
                 if SecretStr in (field.annotation, *get_args(field.annotation))]
UNRESOLVED = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/pg-password/)"


@pytest.mark.parametrize("variable", SECRET_VALUED)
def test_an_unresolved_key_vault_reference_is_not_taken_as_the_secret_itself(variable: str):
    # the Function App platform passes a reference it could not resolve on as text: as a password every log-in
    # would be refused (read as an outage); as SLUICE_DASHBOARD_TOKEN_KEY, anyone reading the app's settings
    # could forge history page tokens
    assert {"SLUICE_POSTGRES_PASSWORD", "SLUICE_DASHBOARD_TOKEN_KEY", "AzureWebJobsStorage"} <= set(SECRET_VALUED)
    login = {"SLUICE_CASSANDRA_USERNAME": "sluice"} if variable == "SLUICE_CASSANDRA_PASSWORD" else {}
    with pytest.raises(ConfigurationError, match=f"{variable}: is a Key Vault reference.* could not resolve") as caught:
        load_settings(dict(SAMPLE, **login, **{variable: UNRESOLVED}))
    assert "pg-password" not in str(caught.value)


def test_critical_rules_are_parsed_and_checked():
    with pytest.raises(ConfigurationError, match="SLUICE_CRITICAL_RULES"):
        load_settings(dict(SAMPLE, SLUICE_CRITICAL_RULES='[{"measurement": "t", "op": "~", "value": 1}]'))


@pytest.mark.parametrize(("rule", "problem"), [
    ('{"measurement": "t", "op": ">", "value": NaN}', "[1][value]: Input should be a finite number"),
    ('{"measurement": "t", "op": "<", "value": Infinity}', "[1][value]: Input should be a finite number"),
    ('{"measurement": "t", "op": "!=", "value": "nan"}', "[1][value]: Input should be a finite number"),
    ('{"measurement": "", "op": ">", "value": 1}', "[1][measurement]: String should have at least 1 character"),
])
def test_a_critical_rule_with_a_threshold_not_finite_or_a_name_no_event_carries_is_refused(rule, problem):
    """``json.loads`` reads ``NaN`` and ``Infinity`` and pydantic the text ``"nan"``: ``temperature > NaN`` never
    held (no event critical, no alert) and ``!= NaN`` always did. Refused at start-up, as the settings' own
    numbers are (``allow_inf_nan=False``), which the rule model did not inherit."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(dict(SAMPLE, SLUICE_CRITICAL_RULES=f'[{{"measurement": "t", "op": ">", "value": 1}}, {rule}]'))
    assert f"SLUICE_CRITICAL_RULES{problem}" in str(caught.value)  # the rule named by its place


def _storage(**values: str):
    return load_settings({**SAMPLE, "AzureWebJobsStorage": "", **values}).storage


def test_storage_takes_an_identity_based_connection_as_the_functions_host_does():
    by_name = _storage(AzureWebJobsStorage__accountName="sluicefleet")
    assert by_name.connection is None
    assert by_name.blob_endpoint == "https://sluicefleet.blob.core.windows.net"
    by_uri = _storage(AzureWebJobsStorage__blobServiceUri="https://fleet.blob.core.usgovcloudapi.net/",
                      AzureWebJobsStorage__credential="managedidentity", AzureWebJobsStorage__clientId="0f1e")
    assert (by_uri.blob_endpoint, by_uri.credential, by_uri.client_id) == (
        "https://fleet.blob.core.usgovcloudapi.net", "managedidentity", "0f1e")
    assert load_settings(SAMPLE).storage.blob_endpoint is None  # a connection string: no identity endpoint


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "AzureWebJobsStorage is not set"),
        (
            {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "AzureWebJobsStorage__accountName": "fleet1"},
            "AzureWebJobsStorage (a connection string) and AzureWebJobsStorage__accountName are both set",
        ),
        (
            {
                "AzureWebJobsStorage__accountName": "fleet1",
                "AzureWebJobsStorage__blobServiceUri": "https://fleet1.example",
            },
            "AzureWebJobsStorage__accountName and AzureWebJobsStorage__blobServiceUri are both set",
        ),
        (
            {"AzureWebJobsStorage__blobServiceUri": "http://127.0.0.1:10000/devstoreaccount1"},
            "AzureWebJobsStorage__blobServiceUri: must be an https:// URL",
        ),
        ({"AzureWebJobsStorage__accountName": "Fleet_1"}, "AzureWebJobsStorage__accountName: String should match"),
        (
            {"AzureWebJobsStorage__accountName": "fleet1", "AzureWebJobsStorage__clientId": "0f1e"},
            "AzureWebJobsStorage__clientId needs AzureWebJobsStorage__credential=managedidentity",
        ),
        (
            {"AzureWebJobsStorage__accountName": "fleet1", "AzureWebJobsStorage__credential": "secret"},
            "AzureWebJobsStorage__credential: Input should be 'managedidentity'",
        ),
    ],
    ids=[
        "neither",
        "both kinds",
        "two endpoints",
        "plain http",
        "bad account name",
        "client id alone",
        "bad credential",
    ],
)
def test_a_storage_connection_that_cannot_work_is_named(values: dict[str, str], message: str):
    with pytest.raises(ConfigurationError) as caught:
        _storage(**values)
    assert message in str(caught.value)


@pytest.mark.parametrize("uri", [
    # a "Blob SAS URL" copied from the portal: its sig is a credential to the account
    "https://fleet.blob.core.windows.net/?sv=2022-11-02&ss=b&srt=sco&sp=rwdl&se=2030-01-01&sig=S1gN4tur3Xy%3D",
    "https://fleet:S1gN4tur3Xy@fleet.blob.core.windows.net/",
], ids=["sas-query", "user-info"])
def test_a_credential_in_the_blob_service_uri_is_refused_without_being_echoed(uri: str):
    # bootstrap logs the settings at every start ("settings loaded: ..."), the blob endpoint with them
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage__blobServiceUri: must not carry a") as caught:
        _storage(AzureWebJobsStorage__blobServiceUri=uri)
    assert "S1gN4tur3Xy" not in str(caught.value)
    assert _storage(AzureWebJobsStorage__blobServiceUri="https://127.0.0.1:10000/devstoreaccount1/").blob_endpoint == (
        "https://127.0.0.1:10000/devstoreaccount1")  # a path (Azurite's account) is the endpoint's own


@pytest.mark.parametrize("variable", ["SLUICE_CASSANDRA_REPLICATION", "SLUICE_CRITICAL_RULES"])
def test_malformed_json_is_named_with_every_other_bad_value(variable: str):
    with pytest.raises(ConfigurationError) as caught:
        load_settings(dict(SAMPLE, **{variable: "{not json", "SLUICE_CASSANDRA_PORT": "ninety"}))
    message = str(caught.value)
    assert f"{variable}: Value is not valid JSON" in message or f"{variable}: is not valid JSON" in message
    assert "SLUICE_CASSANDRA_PORT" in message


def test_json_settings_still_take_json():
    replication = '{"class": "NetworkTopologyStrategy", "dc1": 3}'
    settings = load_settings(dict(SAMPLE, SLUICE_CASSANDRA_REPLICATION=replication))
    assert settings.cassandra.replication == {"class": "NetworkTopologyStrategy", "dc1": 3}


def test_the_application_insights_secret_needs_a_vault_too():
    with pytest.raises(ConfigurationError, match="SLUICE_KEYVAULT_URL is required because SLUICE_APPINSIGHTS_"
                                                 "CONNECTION_STRING_SECRET names a Key Vault secret"):
        load_settings(dict(SAMPLE, SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET="appinsights-connection"))


@pytest.mark.parametrize("name", ["pg_password", "pg.password", "a" * 128])
def test_a_secret_name_the_vault_would_refuse_is_refused_at_start_up(name: str):
    """Key Vault names are 1 to 127 letters, digits and hyphens. Accepted here, a bad name surfaced only when a
    store first connected (ingest batches retried, then dead-lettered; telemetry retried every minute)."""
    with pytest.raises(ConfigurationError, match=r"SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET: a Key Vault secret "
                                                 r"name is 1 to 127 letters, digits and hyphens"):
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL="https://vault.example.net",
                           SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET=name))
    load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL="https://vault.example.net",
                       SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET="appinsights-connection-2"))


@pytest.mark.parametrize(("variable", "mistake"), [
    # the store's password pasted into the variable that should name its secret
    ("SLUICE_POSTGRES_PASSWORD_SECRET", "Pg-P@ssw0rd!2024"),
    # the connection string itself instead of the name of the secret holding it
    ("SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET",
     "InstrumentationKey=7c1e0c2a-1111-2222-3333-444455556666;IngestionEndpoint=https://westeurope-5.in."
     "applicationinsights.azure.com/"),
], ids=["postgres-password", "appinsights-connection-string"])
def test_a_secret_pasted_where_its_name_belongs_is_refused_without_being_echoed(variable: str, mistake: str):
    # a *_SECRET value that is no secret name is most often the secret itself in the wrong variable; the start-up
    # error is logged by the host and the startup probe, so it names the variable and the rule only
    tls = {"SLUICE_POSTGRES_SSLMODE": "verify-full", "SLUICE_POSTGRES_SSLROOTCERT": "system"}
    with pytest.raises(ConfigurationError, match=f"{variable}: a Key Vault secret name is") as caught:
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL="https://kv.vault.azure.net/", **tls, **{variable: mistake}))
    assert mistake not in str(caught.value)


@pytest.mark.parametrize("url", ["rediss://sluice:pw-4c1e@cache.example.net:6380/0", "redis://:pw-4c1e@127.0.0.1:6379",
                                 "redis://127.0.0.1:6379/0?password=pw-4c1e"])
def test_a_password_in_the_redis_url_is_refused_without_being_echoed(url: str):
    with pytest.raises(ConfigurationError, match="SLUICE_REDIS_URL: must not carry a password") as caught:
        load_settings(dict(SAMPLE, SLUICE_REDIS_URL=url))
    assert "pw-4c1e" not in str(caught.value)


def test_a_redis_url_with_a_user_name_only_is_accepted():
    assert load_settings(dict(SAMPLE, SLUICE_REDIS_URL="rediss://sluice@cache:6380")).redis.url == "rediss://sluice@cache:6380"


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"SLUICE_REDIS_PASSWORD": "pw-4c1e"}, "unset SLUICE_REDIS_PASSWORD and SLUICE_REDIS_PASSWORD_SECRET"),
    ({"SLUICE_REDIS_PASSWORD_SECRET": "redis-access-key", "SLUICE_KEYVAULT_URL": "https://vault.example/"},
     "unset SLUICE_REDIS_PASSWORD and SLUICE_REDIS_PASSWORD_SECRET"),
    ({"SLUICE_REDIS_URL": "rediss://sluice@cache.example.net:10000"}, "remove the user from SLUICE_REDIS_URL"),
    ({"SLUICE_REDIS_URL": "redis://cache.example.net:10000"}, "needs a rediss:// URL"),
], ids=["password", "password-secret", "user-name", "plain-redis"])
def test_entra_sign_in_to_redis_takes_no_password_user_or_plain_connection(overrides, expected):
    values = {**SAMPLE, "SLUICE_REDIS_URL": "rediss://cache.example.net:10000", "SLUICE_REDIS_AUTH": "entra",
              "SLUICE_REDIS_PASSWORD": "", **overrides}
    with pytest.raises(ConfigurationError, match=expected) as caught:
        load_settings({name: value for name, value in values.items() if value != ""})
    assert "pw-4c1e" not in str(caught.value)


def test_entra_sign_in_to_redis_is_accepted_over_tls_and_locally():
    for url in ("rediss://cache.example.net:10000", "redis://127.0.0.1:6379/0"):
        values = {**SAMPLE, "SLUICE_REDIS_URL": url, "SLUICE_REDIS_AUTH": "entra", "SLUICE_REDIS_PASSWORD": ""}
        settings = load_settings({name: value for name, value in values.items() if value != ""})
        assert settings.redis.auth == "entra"


@pytest.mark.parametrize("hosts", [" ", " , ", ","])
def test_blank_contact_points_are_refused(hosts: str):
    with pytest.raises(ConfigurationError, match="SLUICE_CASSANDRA_HOSTS: List should have at least 1 item"):
        load_settings(dict(SAMPLE, SLUICE_CASSANDRA_HOSTS=hosts))


@pytest.mark.parametrize(("value", "threshold"), [("-2", None), ("-1", None), (" -10 ", None), ("off", None),
                                                   ("0", 0), ("7", 7)])
def test_a_negative_prepare_threshold_turns_prepared_statements_off(value: str, threshold: int | None):
    assert load_settings(dict(SAMPLE, SLUICE_POSTGRES_PREPARE_THRESHOLD=value)).postgres.prepare_threshold == threshold


@pytest.mark.parametrize("variable", ["SLUICE_REDIS_SOCKET_TIMEOUT_SECONDS", "SLUICE_LOOKUP_CASSANDRA_TIMEOUT_SECONDS",
                                      "SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS"])
@pytest.mark.parametrize("value", ["inf", "Infinity", "nan"])
def test_an_infinite_or_nan_duration_is_refused(variable: str, value: str):
    with pytest.raises(ConfigurationError, match=f"{variable}: Input should be a finite number"):
        load_settings(dict(SAMPLE, **{variable: value}))


@pytest.mark.parametrize(("variable", "extra"), [
    ("SLUICE_KEYVAULT_CA_FILE", {"SLUICE_KEYVAULT_URL": "https://127.0.0.1:8443/"}),
    ("SLUICE_CASSANDRA_TLS_CA_FILE", {"SLUICE_CASSANDRA_TLS": "true"}),
    ("SLUICE_STORAGE_CA_FILE", {}),
    ("SLUICE_POSTGRES_SSLROOTCERT", {"SLUICE_POSTGRES_SSLMODE": "verify-full"}),
])
def test_a_ca_bundle_must_be_a_file(variable: str, extra: dict[str, str], tmp_path: Path):
    with pytest.raises(ConfigurationError, match=f"{variable}: Path does not point to a file"):
        load_settings(dict(SAMPLE, **extra, **{variable: str(tmp_path / "no-such-ca.pem")}))
    with pytest.raises(ConfigurationError, match=f"{variable}: Path does not point to a file"):
        load_settings(dict(SAMPLE, **extra, **{variable: str(tmp_path)}))
    load_settings(dict(SAMPLE, **extra, **{variable: _ca_bundle(tmp_path)}))


def _ca_bundle(directory: Path) -> str:
    """A CA bundle holding one certificate, as a path."""
    bundle = directory / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    return str(bundle)


@pytest.mark.parametrize(("variable", "extra"), [
    ("SLUICE_KEYVAULT_CA_FILE", {"SLUICE_KEYVAULT_URL": "https://127.0.0.1:8443/"}),
    ("SLUICE_CASSANDRA_TLS_CA_FILE", {"SLUICE_CASSANDRA_TLS": "true"}),
    ("SLUICE_STORAGE_CA_FILE", {}),
    ("SLUICE_POSTGRES_SSLROOTCERT", {"SLUICE_POSTGRES_SSLMODE": "verify-full"}),
    ("SLUICE_REDIS_URL", {}),
])
@pytest.mark.parametrize("content", ["this file holds no PEM certificate\n", "", "-----BEGIN CERTIFICATE-----\n"])
def test_a_ca_bundle_that_holds_no_certificate_is_refused(variable: str, extra: dict[str, str], content: str,
                                                          tmp_path: Path):
    # else found at the first connection: a bare ssl.SSLError out of the Cassandra driver, every PostgreSQL and
    # Redis connection refused (an outage for ever), every Key Vault read reported as the vault being down
    bundle = tmp_path / "ca.pem"
    bundle.write_text(content)
    value = f"rediss://127.0.0.1:6380/0?ssl_ca_certs={bundle}" if variable == "SLUICE_REDIS_URL" else str(bundle)
    with pytest.raises(ConfigurationError, match=f"{variable}: .*holds no PEM certificate"):
        load_settings(dict(SAMPLE, **extra, **{variable: value}))


def test_postgres_may_verify_with_the_system_certificate_authorities(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    # libpq would load psycopg-binary's own OpenSSL's CA locations for `system`, which exist nowhere: the
    # conninfo names the system's CA file instead, as Python's ssl finds it (SSL_CERT_FILE first)
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    settings = load_settings(dict(SAMPLE, SLUICE_POSTGRES_SSLMODE="verify-full", SLUICE_POSTGRES_SSLROOTCERT="system"))
    assert str(settings.postgres.sslrootcert) == "system"
    assert f"sslrootcert={bundle}" in settings.postgres.conninfo()
    nowhere = ssl.DefaultVerifyPaths(None, None, "SSL_CERT_FILE", "/nowhere/cert.pem", "SSL_CERT_DIR", "/nowhere")
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: nowhere)
    assert "sslrootcert=system" in settings.postgres.conninfo()  # no CA file found: libpq's own `system`


@pytest.mark.parametrize("mode", ["require", "verify-ca"])
def test_the_system_certificate_authorities_need_a_host_name_check(mode: str):
    # any customer of a public CA holds a certificate it signed: libpq too refuses `system` below verify-full
    with pytest.raises(ConfigurationError, match=f"SLUICE_POSTGRES_SSLROOTCERT=system .* \\(not {mode}\\)"):
        load_settings(dict(SAMPLE, SLUICE_POSTGRES_SSLMODE=mode, SLUICE_POSTGRES_SSLROOTCERT="system"))


def test_a_ca_bundle_that_would_go_unused_is_refused(tmp_path: Path):
    bundle = _ca_bundle(tmp_path)
    with pytest.raises(ConfigurationError, match="SLUICE_CASSANDRA_TLS_CA_FILE is set but SLUICE_CASSANDRA_TLS is f"):
        load_settings(dict(SAMPLE, SLUICE_CASSANDRA_TLS="false", SLUICE_CASSANDRA_TLS_CA_FILE=bundle))
    for mode in ("disable", "allow", "prefer"):
        with pytest.raises(ConfigurationError, match=f"SLUICE_POSTGRES_SSLMODE={mode} may connect without checking"):
            load_settings(dict(SAMPLE, SLUICE_POSTGRES_SSLMODE=mode, SLUICE_POSTGRES_SSLROOTCERT=bundle))
    for mode in ("require", "verify-ca", "verify-full"):  # libpq checks the server against it from require on
        assert load_settings(dict(SAMPLE, SLUICE_POSTGRES_SSLMODE=mode,
                                  SLUICE_POSTGRES_SSLROOTCERT=bundle)).postgres.sslmode == mode


@pytest.mark.parametrize(("variable", "url"), [("SLUICE_KEYVAULT_URL", "https://"),
                                               ("SLUICE_KEYVAULT_URL", "https:///secrets"),
                                               ("AzureWebJobsStorage__blobServiceUri", "https://")])
def test_an_https_url_without_a_host_is_refused(variable: str, url: str):
    values = dict(SAMPLE, **{variable: url})
    if variable.startswith("AzureWebJobsStorage"):
        del values["AzureWebJobsStorage"]
    with pytest.raises(ConfigurationError, match=f"{variable}: names no host"):
        load_settings(values)


@pytest.mark.parametrize("variable", ["SLUICE_KEYVAULT_URL", "AzureWebJobsStorage__blobServiceUri"])
@pytest.mark.parametrize(("port", "named"), [("99999", "port '99999' is not a port"), ("0", "port 0 is not a port")])
def test_an_https_url_with_a_port_that_is_no_port_is_refused(variable: str, port: str, named: str):
    # 99999: the transport raises a bare ValueError at the first request; 0: it drops the port and connects to 443
    values = dict(SAMPLE, **{variable: f"https://endpoint.example.net:{port}/"})
    if variable.startswith("AzureWebJobsStorage"):
        del values["AzureWebJobsStorage"]
    with pytest.raises(ConfigurationError, match=f"{variable}: {named}"):
        load_settings(values)


@pytest.mark.parametrize("url", ["https://ops:Hunter2-Pw@kv.vault.azure.net/", "https://:Hunter2-Pw@kv.vault.azure.net",
                                 "https://Hunter2-Pw@kv.vault.azure.net/"])
def test_a_password_in_the_key_vault_url_is_refused_without_being_echoed(url: str):
    # the URL is logged with the settings at start-up, as SLUICE_REDIS_URL would be (which refuses a password too)
    with pytest.raises(ConfigurationError,
                       match="SLUICE_KEYVAULT_URL: must not carry a user name or password") as caught:
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL=url))
    assert "Hunter2-Pw" not in str(caught.value)


@pytest.mark.parametrize("url", ["https://kv.vault.azure.net/secrets/pg-password/", "https://kv.vault.azure.net/secrets",
                                 "https://kv.vault.azure.net/?tenant=contoso", "https://kv.vault.azure.net/#x"])
def test_a_key_vault_url_with_more_than_the_vault_is_refused(url: str):
    # the SDK appends /secrets/<name> to the whole URL: a secret's own URI (what a Key Vault reference carries) or a
    # query there passed start-up and then failed every read at the first store connection; an integration test
    # (tests/integration/test_keyvault_adapter.py) shows the SDK failing on such a URL
    with pytest.raises(ConfigurationError, match=r"SLUICE_KEYVAULT_URL: must be the endpoint alone.*"
                                                 r"https://<vault>\.vault\.azure\.net/"):
        load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL=url))
    for good in ("https://kv.vault.azure.net/", "https://kv.vault.azure.net", "https://127.0.0.1:8443/"):
        assert load_settings(dict(SAMPLE, SLUICE_KEYVAULT_URL=good)).keyvault.url == good


@pytest.mark.parametrize("variable", ["SLUICE_KEYVAULT_URL", "AzureWebJobsStorage__blobServiceUri"])
def test_an_https_url_is_taken_with_its_scheme_in_any_case(variable: str):
    # a URL's scheme is case-insensitive (RFC 3986 3.1), and the SDKs take HTTPS:// as https://
    values = dict(SAMPLE, **{variable: "HTTPS://endpoint.example.net/"})
    if variable.startswith("AzureWebJobsStorage"):
        del values["AzureWebJobsStorage"]
    load_settings(values)
    with pytest.raises(ConfigurationError, match=f"{variable}: must be an https:// URL"):
        load_settings(dict(values, **{variable: "HTTP://endpoint.example.net/"}))


def test_traced_clients_are_named_in_any_case():
    assert load_settings(dict(SAMPLE, SLUICE_TRACE_CLIENTS="Redis, CASSANDRA")).telemetry.trace_clients == [
        "redis", "cassandra"]
    assert load_settings(dict(SAMPLE, SLUICE_TRACE_CLIENTS="NONE")).telemetry.trace_clients == []


def test_the_redis_wait_guard_is_off_by_default_and_bounded():
    """``SLUICE_REDIS_WAIT_REPLICAS`` (docs/redis-layout.md, "Failover") is opt-in; a bad value is named at start-up."""
    assert load_settings(SAMPLE).redis.wait_replicas == 0
    assert load_settings(dict(SAMPLE, SLUICE_REDIS_WAIT_REPLICAS="1")).redis.wait_replicas == 1
    with pytest.raises(ConfigurationError) as caught:
        load_settings(dict(SAMPLE, SLUICE_REDIS_WAIT_REPLICAS="-1", SLUICE_REDIS_WAIT_TIMEOUT_MS="0"))
    assert "SLUICE_REDIS_WAIT_REPLICAS" in str(caught.value) and "SLUICE_REDIS_WAIT_TIMEOUT_MS" in str(caught.value)


@pytest.mark.parametrize(("url", "named"), [
    ("redis://:6379/0", "names no host"),
    ("redis://127.0.0.1:0/0", "port 0"),
    ("rediss://cache.example:70000/0", "'70000' is not a port"),
    ("redis://127.0.0.1:6379/0?ssl=true", "options redis-py does not take (ssl)"),
    ("rediss://cache.example:6380/0?socket_timeout=inf", "set SLUICE_REDIS_SOCKET_TIMEOUT_SECONDS instead"),
    # each taken by redis-py's URL parser, then refused at every connection:
    ("redis://127.0.0.1:6379/0?protocol=4", "protocol='4'"),  # ConnectionError 'protocol must be either 2 or 3'
    ("redis://127.0.0.1:6379/0?client_name=sluice%20worker", "client_name='sluice worker'"),  # 'cannot contain spaces'
    ("redis://127.0.0.1:6379/0?db=-1", "database -1"),  # ResponseError 'DB index is out of range'
    ("redis://127.0.0.1:6379/-1", "database -1"),
    ("rediss://127.0.0.1:6380/0?ssl_ciphers=NOT-A-CIPHER", "ssl_ciphers='NOT-A-CIPHER'"),  # 'No cipher can be selected'
])
def test_a_redis_url_redis_py_would_read_otherwise_is_refused_naming_what(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match="SLUICE_REDIS_URL") as caught:
        load_settings({**SAMPLE, "SLUICE_REDIS_URL": url})
    assert named in str(caught.value)


def test_redis_url_options_redis_py_takes_are_kept() -> None:
    url = ("rediss://cache.example:6380/0?ssl_check_hostname=true&health_check_interval=30&client_name=sluice"
           "&protocol=2&ssl_ciphers=ECDHE%2BAESGCM")
    assert load_settings({**SAMPLE, "SLUICE_REDIS_URL": url}).redis.url == url


def test_names_are_trimmed_and_a_blank_one_is_refused() -> None:
    settings = load_settings({**SAMPLE, "SLUICE_POSTGRES_HOST": " db.example ",
                              "SLUICE_CASSANDRA_LOCAL_DC": " West Europe "})
    assert (settings.postgres.host, settings.cassandra.local_dc) == ("db.example", "West Europe")
    with pytest.raises(ConfigurationError, match="SLUICE_POSTGRES_HOST"):
        load_settings({**SAMPLE, "SLUICE_POSTGRES_HOST": "  "})


@pytest.mark.parametrize("name", ["SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS", "SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS"])
def test_a_postgres_timeout_is_one_postgresql_can_apply(name: str) -> None:
    """statement_timeout takes whole milliseconds from 1 (0 is no timeout) to 2^31 - 1 (enrichment's, which must end
    within functionTimeout, at most 480 s)."""
    for bad in ("0.0004", "3600000"):
        with pytest.raises(ConfigurationError, match=name):
            load_settings({**SAMPLE, name: bad})
    top = "480" if name == "SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS" else "2147483"
    assert load_settings({**SAMPLE, name: "0.001"}) and load_settings({**SAMPLE, name: top})


def test_the_default_critical_limit_is_one_a_request_could_give() -> None:
    """No request may ask for more than ``limit`` 1000 (docs/api.md): a default above it would serve pages no
    request can, reading that many rows per miss."""
    from functions.parameters import MAX_LIMIT

    assert load_settings({**SAMPLE, "SLUICE_LOOKUP_CRITICAL_DEFAULT_LIMIT": str(MAX_LIMIT)})
    with pytest.raises(ConfigurationError, match="SLUICE_LOOKUP_CRITICAL_DEFAULT_LIMIT"):
        load_settings({**SAMPLE, "SLUICE_LOOKUP_CRITICAL_DEFAULT_LIMIT": str(MAX_LIMIT + 1)})


AZURE_HUB = "Endpoint=sb://fleet.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=hunter2"


@pytest.mark.parametrize(("values", "messages"), [
    ({"EventHubConnection": "Endpoint=;SharedAccessKeyName=k;SharedAccessKey=hunter2",
      "EventHubConnection__credential": "secret"},
     ["EventHubConnection is set but names no endpoint", "EventHubConnection__credential='secret'"]),
    ({"EventHubConnection": "garbage"}, ["EventHubConnection is set but names no endpoint"]),
    ({"EventHubConnection": "Endpoint=sb://fleet.servicebus.windows.net/;SharedAccessKey=hunter2"},
     ["EventHubConnection names a SharedAccessKey or a SharedAccessKeyName without the other"]),
    ({"EventHubConnection": "Endpoint=sb://fleet.servicebus.windows.net/;SharedAccessKeyName=listen"},
     ["EventHubConnection names a SharedAccessKey or a SharedAccessKeyName without the other"]),
    ({"EventHubConnection": AZURE_HUB + ";SharedAccessKey=hunter3"}, ["key=value pairs with no key twice"]),
    ({"EventHubConnection": "", "EventHubConnection__fullyQualifiedNamespace": "fleet.servicebus.windows.net",
      "EventHubConnection__clientId": "0f1e"}, ["EventHubConnection__clientId needs"]),
    # the host binds AzureWebJobsEventHubConnection first: the variable set is named, not EventHubConnection
    ({"AzureWebJobsEventHubConnection": "garbage hunter2", "EventHubConnection": AZURE_HUB},
     ["AzureWebJobsEventHubConnection is set but names no endpoint"]),
    ({"AzureWebJobsEventHubConnection__fullyQualifiedNamespace": "fleet.servicebus.windows.net",
      "AzureWebJobsEventHubConnection__credential": "workload"},
     ["AzureWebJobsEventHubConnection__credential='workload'"]),
    ({"ConnectionStrings__AzureWebJobsEventHubConnection": AZURE_HUB + ";EntityPath=other"},
     ["ConnectionStrings__AzureWebJobsEventHubConnection's EntityPath names hub 'other'"]),
], ids=["no endpoint and a bad credential", "no pairs", "key without its name", "name without its key",
        "a key twice", "client id alone", "prefixed, named as set", "prefixed credential, named as set",
        "entity path of a connection string, named as set"])
def test_an_event_hubs_connection_the_host_would_refuse_stops_the_start_naming_it(
        values: dict[str, str], messages: list[str]) -> None:
    """The ingest trigger and every pod's lag readers (the status page, the ``sluice.eventhub.lag`` gauge) connect
    with the host's ``EventHubConnection``. It was not validated: a malformed one let every pod start, then failed
    ``/api/status`` whole (500) when its lag reader was built. It stops the start, each problem named, the key never
    shown."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(dict(SAMPLE, **values))
    message = str(caught.value)
    for expected in messages:
        assert expected in message
    assert "hunter" not in message


@pytest.mark.parametrize("values", [
    {"EventHubConnection": AZURE_HUB},
    {"EventHubConnection": "endpoint=sb://127.0.0.1:5672;sharedaccesskeyname=k;sharedaccesskey=v;"
                           "UseDevelopmentEmulator=true"},
    {"EventHubConnection": "Endpoint=sb://fleet.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature "
                           "sr=fleet&sig=s&se=1&skn=listen"},
    {"EventHubConnection": "", "EventHubConnection__fullyQualifiedNamespace": "fleet.servicebus.windows.net",
     "EventHubConnection__credential": "managedidentity", "EventHubConnection__clientId": "0f1e"},
    {"EventHubConnection": ""},
    {"EventHubConnection": AZURE_HUB + "; entitypath = Telemetry "},
], ids=["azure key", "emulator, keys in any case", "signature", "identity", "none", "entity path of the same hub"])
def test_an_event_hubs_connection_the_sdk_takes_is_accepted(values: dict[str, str]) -> None:
    load_settings(dict(SAMPLE, **values))


@pytest.mark.parametrize("entity_path", ["EntityPath=orders", " entitypath = orders "])
def test_an_entity_path_naming_another_hub_than_the_ingest_setting_stops_the_start(entity_path: str) -> None:
    """The Functions host's Event Hubs extension (EventHubClientFactory.NormalizeEventHubName), and the dev host
    after it, let a connection string's ``EntityPath`` win over the trigger's ``eventHubName``
    (``%SLUICE_INGEST_EVENTHUB_NAME%``); azure-eventhub lets the ``eventhub_name`` Sluice's readers pass (the lag,
    the status page, the audit, ``sluice lag``) win over it. With ``EntityPath=orders`` and ``telemetry`` ingest
    consumed ``orders`` while every lag reading came from ``telemetry`` and its checkpoints: a silent wrong answer.
    The pair stops the start, naming both settings, never the key."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(dict(SAMPLE, EventHubConnection=f"{AZURE_HUB};{entity_path}",
                           SLUICE_INGEST_EVENTHUB_NAME="telemetry"))
    message = str(caught.value)
    assert "EntityPath" in message and "SLUICE_INGEST_EVENTHUB_NAME" in message and "'orders'" in message
    assert "hunter" not in message


@pytest.mark.parametrize(("mode", "overlap", "timeout", "refused"), [
    ("portable", "5", "10", True),  # a delay note landing 8 s after its stamp was never read: its batch never in Redis
    ("portable", "19", "10", True),
    ("portable", "20", "10", False),
    ("portable", "60", "30", False),
    ("cosmos", "5", "10", False),  # Cosmos' feed reads by write: the overlap is not used
])
def test_a_portable_overlap_must_cover_a_delay_notes_insert_and_the_clocks(mode: str, overlap: str, timeout: str,
                                                                           refused: bool):
    values = dict(SAMPLE, SLUICE_CHANGEFEED_MODE=mode, SLUICE_CHANGEFEED_OVERLAP_SECONDS=overlap,
                  SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS=timeout)
    if not refused:
        assert load_settings(values).changefeed.overlap_seconds == int(overlap)
        return
    with pytest.raises(ConfigurationError, match=rf"SLUICE_CHANGEFEED_OVERLAP_SECONDS \({overlap}\) must be at least "
                                                 rf"twice SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS \({timeout}\)"):
        load_settings(values)


# --- Timer schedules: refused at start-up when the host would not run them ----------------------------------------

@pytest.mark.parametrize("variable", ["SLUICE_ENRICH_SCHEDULE", "SLUICE_CHANGEFEED_SCHEDULE"])
@pytest.mark.parametrize(("value", "why"), [
    ("every minute", "fields"),  # the host refuses it: the timer function does not load, that stage never runs
    ("0 0 0 30 2 *", "never fires"),  # February 30: NCrontab accepts it, and the timer never fires
    ("0 0 0 31 4,6,9,11 *", "never fires"),
    ("0 0 0 L * *", "NCRONTAB"),  # croniter's extensions: the host refuses them
    ("0 0 12 ? * MON", "NCRONTAB"),
    ("0 0 12 * * 7", "NCRONTAB"),
])
def test_a_schedule_the_host_would_not_run_is_refused_naming_the_variable(variable: str, value: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=variable) as caught:
        load_settings(dict(SAMPLE, **{variable: value}))
    assert why in str(caught.value)


# What the dev host (which parses as the host does) and the settings must agree on: a valid, a refused, or a
# never-firing expression.
SCHEDULES = ["0 */1 * * * *", "*/5 * * * * *", "*/10 * * * * *", "*/1 * * * * *", "*/2 * * * * *", "*/5 * * * *",
             "0 30 9 * * Mon-Fri", "0 0 0 29 2 *", "0 0 0 31 1-12 *", "0 0 0 1-31/2 jan,feb *", "0 0 0 5-1 * *",
             "0 */0 * * * *", "0 0 0 30 2 *", "0 0 0 31 2 *", "0 0 0 31 4 *", "0 0 0 31 jun *", "0 0 0 31 9,11 *",
             "0 0 0 30,31 2 *", "every minute", "* * * *", "* * * * * * *", "0 0 0 L * *", "0 0 0 15W * *",
             "0 0 0 * * 5#3", "0 0 0 ? * *", "H * * * * *", "0 0 0 * * 7", "60 * * * * *", "0 0 24 * * *",
             "0 0 0 0 * *", "0 0 0 * 13 *", "0 0 0 1,,2 * *", "0 0 0 * xyz *", "0 0 0 * * 1-"]


@pytest.mark.parametrize("expression", SCHEDULES)
def test_the_settings_read_a_schedule_as_the_dev_host_does(expression: str) -> None:
    from devhost.errors import DevHostError
    from devhost.schedule import Schedule

    try:
        host = "never" if Schedule.parse(expression).never_occurs else "runs"
    except DevHostError:
        host = "refused"
    try:
        load_settings(dict(SAMPLE, SLUICE_ENRICH_SCHEDULE=expression))
        ours = "runs"
    except ConfigurationError as exc:
        ours = "never" if "never fires" in str(exc) else "refused"
    assert ours == host


# --- One setting, two spellings ------------------------------------------------------------------------------------

def test_a_setting_given_in_two_spellings_is_refused_naming_both() -> None:
    """pydantic-settings reads names ignoring case and keeps the last spelling, while the host's ``%SETTING%``
    binding reads the exact one first: with ``SLUICE_INGEST_EVENTHUB_NAME=telemetry`` and a stray
    ``sluice_ingest_eventhub_name=other`` ingest would consume ``telemetry`` while the lag and audit read ``other``.
    Refused, naming both variables, not the values."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(dict(SAMPLE, SLUICE_INGEST_EVENTHUB_NAME="telemetry", sluice_ingest_eventhub_name="other"))
    message = str(caught.value)
    assert "SLUICE_INGEST_EVENTHUB_NAME" in message and "sluice_ingest_eventhub_name" in message
    assert "=telemetry" not in message and "'other'" not in message and "=other" not in message
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage and azurewebjobsstorage"):
        load_settings(dict(SAMPLE, azurewebjobsstorage=SAMPLE["AzureWebJobsStorage"]))


# --- Values wrapped in quotes --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "value"), [
    ("SLUICE_POSTGRES_HOST", '"127.0.0.1"'), ("SLUICE_CASSANDRA_HOSTS", "'127.0.0.1'"),
    ("SLUICE_REDIS_KEY_PREFIX", '"sluice:"'), ("SLUICE_POSTGRES_PASSWORD", '"hunter2"'),
    ("SLUICE_CASSANDRA_REPLICATION", '"{}"'),
])
def test_a_value_wrapped_in_quotes_is_refused_naming_the_variable_not_the_value(variable: str, value: str) -> None:
    """A .env file or ``docker run --env-file`` hands quotes on as part of the value: a host looked up with its
    quotes fails every connection as if the store were down; a key prefix silently changes."""
    with pytest.raises(ConfigurationError, match=variable) as caught:
        load_settings(dict(SAMPLE, **{variable: value}))
    assert value.strip("'\"") not in str(caught.value).replace(variable, "")


def test_json_and_inner_quotes_are_no_quoted_value() -> None:
    settings = load_settings(dict(SAMPLE, SLUICE_CASSANDRA_REPLICATION='{"class": "SimpleStrategy", '
                                                                       '"replication_factor": 1}',
                                  SLUICE_POSTGRES_PASSWORD='pa"ss"', SLUICE_REDIS_KEY_PREFIX='"'))
    assert settings.cassandra.replication["class"] == "SimpleStrategy"


# --- Timeouts that must end within host.json's functionTimeout -----------------------------------------------------

@pytest.mark.parametrize(("timeout", "deadline", "refused"), [
    ("900", "180", True), ("300", "181", True), ("300", "180", False), ("10", "180", False)])
def test_ingest_final_attempt_must_store_then_dead_letter_within_the_function_timeout(
        timeout: str, deadline: str, refused: bool) -> None:
    """The final attempt writes its batch (one request may take the whole request timeout, throttling waits
    included), then dead-letters it: past functionTimeout the host checkpoints a batch neither stored nor
    dead-lettered."""
    values = dict(SAMPLE, SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS=timeout,
                  SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS=deadline)
    if not refused:
        assert load_settings(values)
        return
    with pytest.raises(ConfigurationError, match=r"SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS \(\d+\) \+ "
                                                 r"SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS \(\d+\) must be at most "
                                                 r"480 s"):
        load_settings(values)


def test_an_enrichment_statement_timeout_must_end_within_the_function_timeout() -> None:
    """One window's transaction may wait out the statement timeout: past functionTimeout the host fails the
    invocation and restarts the worker, with every other invocation of that worker."""
    assert load_settings(dict(SAMPLE, SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS="480"))
    with pytest.raises(ConfigurationError, match=r"SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS \(900\) must be at most "
                                                 r"480 s"):
        load_settings(dict(SAMPLE, SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS="900"))
