"""Typed, frozen settings, validated once at start-up (pydantic-settings).

Every value comes from an environment variable (Azure app settings, or the
``Values`` of ``local.settings.json`` locally). :func:`load_settings` validates
every group and raises one :class:`ConfigurationError` listing every missing or
bad variable by name. Secrets are ``SecretStr``: they print as ``**********``
and :meth:`Settings.as_dict` redacts them. A secret may instead name a Key Vault
secret (``*_SECRET`` variables, resolved at bootstrap through azure-identity).

``local.settings.sample.json`` lists every variable with local values; a test
keeps the two in step.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import ssl
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from shared import eventhub_connection, ncrontab, telemetry_environment
from shared.domain.events import Limits
from shared.domain.rules import MeasurementRule
from shared.exceptions import ConfigurationError

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")]
# A host or a data center's name: a space at either end is a slip (YAML, a quoted app setting), never part of it.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# PostgreSQL's statement_timeout and lock_timeout: whole milliseconds from 1 (0 turns them off) to 2^31 - 1.
PostgresTimeout = Annotated[float, Field(ge=0.001, le=2_147_483)]


def _fires(value: str) -> str:
    """A timer schedule's validator: refuse what the Functions host would not run (its timer function then does not
    load, or never fires), see :mod:`shared.ncrontab`."""
    problem = ncrontab.problem(value)
    if problem:
        raise ValueError(problem)
    return value


Ncrontab = Annotated[str, AfterValidator(_fires)]
# Blob storage's name for a container: 3-63 of a-z 0-9 -, a letter or digit at either end; storage refuses others
# (400 InvalidResourceName), which would read as an outage. `reference upload --container` checks its flag with it.
BlobContainerName = Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")]

# A trigger binding in functions/ names these settings as `%SETTING%`. The Functions host (and the dev host) resolves
# such a reference when it indexes the app, with no default: unset, the function does not load. Sluice's own code
# (bootstrap, the `sluice` commands) falls back to the field's default, but the setting is required all the same,
# and the settings table says so.
_BINDING_EXPRESSION: dict[str, Any] = {"binding_expression": True}


def read_by_a_binding(field: FieldInfo) -> bool:
    """Whether a trigger binding reads this setting as a ``%SETTING%`` reference (then it has no default)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("binding_expression") is True


_environ: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("sluice_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """Reads from the mapping given to :func:`load_settings` (``os.environ`` by default)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        source = _environ.get()
        if source is None:
            return super()._load_env_vars()
        return parse_env_vars(source, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


# An app setting written as a Key Vault reference (App Service / Functions); resolved, the process sees the value.
_KEY_VAULT_REFERENCE = re.compile(r"\s*@Microsoft\.KeyVault\(", re.IGNORECASE)


class _Group(BaseSettings):
    # allow_inf_nan=False: "inf" is a float to Python, and an infinite timeout or interval is never what is meant
    # (redis-py raises OverflowError on every command, a lookup never times out into a 503)
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True, use_attribute_docstrings=True,
                                      allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _MappingEnvSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _not_quoted(cls, data: object) -> object:
        """A value wrapped in matching quotes (``"127.0.0.1"``, as a .env file or ``docker run --env-file`` hands
        it on) is no value of any setting: a host would be looked up with its quotes (every connection failing as
        if the store were down), a key prefix silently changed. The message names the variables only: a value may
        be a secret. A JSON setting starts with ``[`` or ``{``."""
        if isinstance(data, dict):
            quoted = [cls._variable(str(key)) for key, value in data.items()
                      if isinstance(value, str) and len(stripped := value.strip()) >= 2
                      and stripped[0] == stripped[-1] and stripped[0] in "'\""]
            if quoted:
                raise ValueError(f"{', '.join(quoted)}: the value is wrapped in quotes, which would be taken as part "
                                 "of it; remove them")
        return data

    @classmethod
    def _variable(cls, key: str) -> str:
        """The environment variable of a field (or alias) name."""
        field = cls.model_fields.get(key)
        if field is not None and isinstance(field.validation_alias, AliasChoices):
            return str(field.validation_alias.choices[0])
        return key if field is None else f"{cls.model_config.get('env_prefix', '')}{key}".upper()

    @field_validator("*")
    @classmethod
    def _not_an_unresolved_reference(cls, value: object) -> object:
        """A secret that reads ``@Microsoft.KeyVault(...)`` is an app setting the Function App platform could not
        resolve (no access, a wrong name): it passes the reference on as text, which would then be taken as the
        password (every log-in refused, read as an outage) or as an HMAC key anyone reading the app's settings
        knows. The message names the variable only: the value is never echoed."""
        if isinstance(value, SecretStr) and _KEY_VAULT_REFERENCE.match(value.get_secret_value()):
            raise ValueError("is a Key Vault reference (@Microsoft.KeyVault(...)) the platform could not resolve, "
                             "passed on as text: give the app's identity read access to that secret (Key Vault "
                             "Secrets User) and check the reference names it")
        return value


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _json(value: object) -> object:
    """A JSON setting's value decoded here, so a malformed one is reported by its variable with the others
    (pydantic-settings' own decoding stops at the first one with a ``SettingsError`` naming the field)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON: {exc}") from None
    return value


def ca_bundle_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the file at ``path`` cannot be a CA bundle, or ``None`` when it holds at least one certificate.

    Python's ssl loads it as redis-py, the Cassandra driver and the Azure SDKs do (libpq's OpenSSL reads the same
    PEM). A file with no certificate in it would fail every TLS connection, each one reported as the store being
    down; an empty PEM loads without error, so the certificates loaded are counted.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        return "holds no PEM certificate (a CA bundle is one or more -----BEGIN CERTIFICATE----- blocks)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not context.cert_store_stats()["x509"]:
        return "holds no PEM certificate (a CA bundle is one or more -----BEGIN CERTIFICATE----- blocks)"
    return None


def _holds_a_certificate(value: Path | None) -> Path | None:
    """A CA bundle setting's validator: see :func:`ca_bundle_problem`."""
    problem = ca_bundle_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


def _https_url(value: str, example: str, *, endpoint_only: bool = False) -> None:
    """Refuse an endpoint URL an Azure SDK cannot take tokens to: not https (in any case: a scheme is
    case-insensitive, RFC 3986 3.1), no host, or a port that is no port (``example`` shows a good one); with
    ``endpoint_only``, anything after the host (and port) but ``/``. A user name, password or query is refused
    without being echoed: the URL is logged with the settings, and a password or SAS token in it would be too."""
    parts = urlsplit(value)
    if parts.scheme.lower() != "https":
        raise ValueError("must be an https:// URL (the SDK refuses tokens over plain http)")
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password (it would be logged with the settings; the SDK "
                         "signs in with the app's identity)")
    if parts.query and not endpoint_only:
        raise ValueError("must not carry a query such as a SAS token (it would be logged with the settings; the SDK "
                         f"signs in with the app's identity): give the endpoint alone (e.g. {example})")
    if not parts.hostname:
        raise ValueError(f"names no host (e.g. {example})")
    try:
        port = parts.port
    except ValueError:  # the SDK's transport would raise the same, bare, at the first request
        raise ValueError(f"port {parts.netloc.rpartition(':')[2]!r} is not a port (1-65535)") from None
    if port == 0:  # the SDK's transport would drop it and connect to 443
        raise ValueError("port 0 is not a port (1-65535)")
    if endpoint_only and (parts.path not in ("", "/") or parts.query or parts.fragment):
        # the SDK appends /secrets/<name> to the whole URL: a secret's own URI or a query there reads nothing
        raise ValueError(f"must be the endpoint alone, nothing after the host (and port) but '/' (e.g. {example})")


class StorageSettings(_Group):
    """Blob storage of the Functions host (``AzureWebJobsStorage``): dead letters, leases, reference data.

    Either a connection string (``AzureWebJobsStorage``) or, as the Functions host
    reads them, an identity-based connection: ``AzureWebJobsStorage__accountName``
    or ``AzureWebJobsStorage__blobServiceUri``, with the optional ``__credential``
    and ``__clientId``. Both name the same account the host keeps its leases and
    checkpoints in, so Sluice reads the host's own variables.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_STORAGE_")

    connection: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AzureWebJobsStorage"),
        description="Storage connection string of the Functions host; Sluice keeps dead letters (and Parquet reference "
                    "data) there. Required unless the identity-based connection below is set")
    account_name: Annotated[str, Field(pattern=r"^[a-z0-9]{3,24}$")] | None = Field(
        None, validation_alias=AliasChoices("AzureWebJobsStorage__accountName"),
        description="Identity-based connection: the storage account (blob endpoint `https://<name>.blob.core.windows.net`)")
    blob_service_uri: str | None = Field(
        None, validation_alias=AliasChoices("AzureWebJobsStorage__blobServiceUri"),
        description="Identity-based connection: the blob endpoint itself (another cloud, a private endpoint, Azurite "
                    "with `--oauth basic`); no SAS token or user info (the value is logged)")
    credential: Literal["managedidentity"] | None = Field(
        None, validation_alias=AliasChoices("AzureWebJobsStorage__credential"),
        description="`managedidentity`: the app's managed identity only; empty: `DefaultAzureCredential` (on AKS: "
                    "workload identity)")
    client_id: str | None = Field(
        None, validation_alias=AliasChoices("AzureWebJobsStorage__clientId"),
        description="Client id of the user-assigned managed identity to use (with `__credential=managedidentity`)")
    ca_file: FilePath | None = Field(None, description="CA bundle for a local blob endpoint's HTTPS certificate")
    deadletter_container: BlobContainerName = "sluice-deadletter"
    """Blob container for dead letters (created on first use)"""
    connect_timeout_seconds: float = Field(5.0, gt=0, le=60)
    """The worker's Blob storage client: seconds to wait for a connection"""
    read_timeout_seconds: float = Field(20.0, gt=0, le=120)
    """The worker's Blob storage client: seconds to wait for each read of an answer (an account that accepts and
    never answers fails a request after this)"""
    retries: int = Field(2, ge=0, le=5)
    """The worker's Blob storage client: retries of a failed request (about 3, 5, 9 ... s apart)"""
    deadletter_deadline_seconds: float = Field(180.0, gt=0, le=300)
    """Longest time an invocation's rejected letters together (and then its batch letter) may take to write,
    retries included; a letter that could end past it is not started, and the invocation fails with \"could not
    write dead letter\" (well under host.json's functionTimeout of 10 minutes). At least the longest one storage
    request may take: (retries + 1) x (connect + read timeout) + the waits between them (85 s by default)"""

    _ca_file_holds_a_certificate = field_validator("ca_file")(_holds_a_certificate)

    @field_validator("blob_service_uri")
    @classmethod
    def _blob_https(cls, value: str | None) -> str | None:
        if value is not None:
            _https_url(value, "https://<account>.blob.core.windows.net")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_connection(self) -> Self:
        identity = [name for name, value in (("AzureWebJobsStorage__accountName", self.account_name),
                                             ("AzureWebJobsStorage__blobServiceUri", self.blob_service_uri)) if value]
        if self.connection is None and not identity:
            raise ValueError("AzureWebJobsStorage is not set: set a storage connection string, or "
                             "AzureWebJobsStorage__accountName (or __blobServiceUri) for an identity-based connection")
        if self.connection is not None and identity:
            raise ValueError(f"AzureWebJobsStorage (a connection string) and {' and '.join(identity)} are both set; "
                             "set one of them")
        if len(identity) > 1:
            raise ValueError("AzureWebJobsStorage__accountName and AzureWebJobsStorage__blobServiceUri are both set; "
                             "set one of them")
        if self.longest_request_seconds > self.deadletter_deadline_seconds:
            raise ValueError(
                f"SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS={self.deadletter_deadline_seconds:g} is shorter than one "
                f"storage request may take ({self.longest_request_seconds:g} s: SLUICE_STORAGE_RETRIES+1 times "
                "SLUICE_STORAGE_CONNECT_TIMEOUT_SECONDS plus SLUICE_STORAGE_READ_TIMEOUT_SECONDS, and the waits "
                "between them); raise it or lower those")
        if self.client_id and self.credential != "managedidentity":
            raise ValueError("AzureWebJobsStorage__clientId needs AzureWebJobsStorage__credential=managedidentity "
                             "(without it, DefaultAzureCredential picks the identity from the environment)")
        return self

    @property
    def longest_request_seconds(self) -> float:
        """The longest one request of the worker's client can take: every try waits out both timeouts, and the SDK
        waits ``1 + 2 ** retry`` seconds (+-1) before each retry."""
        waits: int = sum(2 + 2**retry for retry in range(1, self.retries + 1))
        return (self.retries + 1) * (self.connect_timeout_seconds + self.read_timeout_seconds) + float(waits)

    @property
    def blob_endpoint(self) -> str | None:
        """The blob endpoint of an identity-based connection; ``None`` with a connection string."""
        if self.blob_service_uri:
            return self.blob_service_uri
        return f"https://{self.account_name}.blob.core.windows.net" if self.account_name else None


class CassandraSettings(_Group):
    """The Cassandra / Cosmos DB for Apache Cassandra event store."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_CASSANDRA_")

    hosts: Annotated[list[str], NoDecode, Field(min_length=1)]
    """Contact points, comma-separated (Cosmos DB: `<account>.cassandra.cosmos.azure.com`)"""
    port: int = Field(9042, ge=1, le=65535)
    """CQL port (Cosmos DB: 10350 with TLS)"""
    keyspace: Identifier = "sluice"
    """Keyspace of every Sluice table"""
    username: str | None = None
    """PasswordAuthenticator user (Cosmos DB: the account name); empty for no login"""
    password: SecretStr | None = None
    """Password, for local use; on Azure name a Key Vault secret instead"""
    password_secret: str | None = None
    """Name of the Key Vault secret holding the password"""
    tls: bool = False
    """Connect with TLS (required by Cosmos DB)"""
    tls_ca_file: FilePath | None = None
    """CA bundle to verify the server with (default: the system store)"""
    local_dc: Name | None = None
    """Local data center (Cosmos DB: the region, e.g. `West Europe`); empty: the driver's default"""
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL"] = "LOCAL_QUORUM"
    """Consistency of reads and writes"""
    connect_timeout_seconds: float = Field(5.0, gt=0)
    """Connection timeout"""
    request_timeout_seconds: float = Field(10.0, gt=0)
    """Client-side timeout of one request"""
    overload_max_retries: int = Field(6, ge=0, le=50)
    """Retries of a throttled (429 / Overloaded) request, each after the server's RetryAfterMs"""
    overload_max_wait_seconds: float = Field(5.0, gt=0)
    """Longest wait before one retry of a throttled request"""
    write_concurrency: int = Field(64, ge=1, le=1024)
    """Writes in flight per ingest batch"""
    batching: Literal["mixed", "partition"] = "mixed"
    """Rows one UNLOGGED batch may hold: `mixed`, any (Cosmos DB runs and charges each row on its own); `partition`, one partition's (Apache Cassandra)"""  # noqa: E501 - one line: the settings table takes it as it stands
    batch_rows: int = Field(32, ge=1, le=1024)
    """Most rows in one UNLOGGED batch (1: every row its own request)"""
    replication: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1})
    """Replication map used when the migration creates the keyspace (ignored by Cosmos DB)"""
    bucket_seconds: int = Field(60, ge=1, le=86400)
    """Width of the time buckets of the bucketed tables (fixed once data exists; the migration checks)"""
    shards: int = Field(8, ge=1, le=256)
    """Shards per time bucket, spreading a bucket over partitions (fixed once data exists)"""

    _split_hosts = field_validator("hosts", mode="before")(_split_csv)
    _decode_replication = field_validator("replication", mode="before")(_json)
    _ca_file_holds_a_certificate = field_validator("tls_ca_file")(_holds_a_certificate)

    @model_validator(mode="after")
    def _credentials_complete(self) -> Self:
        if (self.password or self.password_secret) and not self.username:
            raise ValueError("SLUICE_CASSANDRA_USERNAME is required when a password or password secret is set")
        if self.username and not (self.password or self.password_secret):
            # the driver would log in with an empty password, which PasswordAuthenticator and Cosmos DB refuse at the
            # first connection (and a server without authentication never asks for it: a login silently unused)
            raise ValueError("SLUICE_CASSANDRA_USERNAME is set without SLUICE_CASSANDRA_PASSWORD or "
                             "SLUICE_CASSANDRA_PASSWORD_SECRET: set one of them, or unset the user name for no login")
        _password_or_secret("SLUICE_CASSANDRA_", self.password, self.password_secret)
        if self.tls_ca_file and not self.tls:
            raise ValueError("SLUICE_CASSANDRA_TLS_CA_FILE is set but SLUICE_CASSANDRA_TLS is false: the connection "
                             "would be plain text and the CA unused; set SLUICE_CASSANDRA_TLS=true")
        if self.password_secret and not self.tls:
            raise ValueError(_VAULT_SECRET_NEEDS_TLS.format(secret="SLUICE_CASSANDRA_PASSWORD_SECRET",
                                                            fix="set SLUICE_CASSANDRA_TLS=true"))
        return self


# A secret kept in Key Vault is a production secret: it is never sent in clear, nor to a server whose certificate and
# host name were not checked (a man in the middle would take it).
SECRET_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
"""A Key Vault secret name (Azure's rule; the vault answers 400 to any other)."""
_VAULT_SECRET_NEEDS_TLS = "{secret} names a Key Vault secret, which is only ever sent over verified TLS: {fix}"


def _password_or_secret(prefix: str, password: SecretStr | None, secret: str | None) -> None:
    """A store's password is the value itself or the name of its Key Vault secret, never both: bootstrap would use
    the plain value and never read the vault, so a rotation there would go unseen."""
    if password is not None and secret:
        raise ValueError(f"set {prefix}PASSWORD or {prefix}PASSWORD_SECRET, not both (with both, the plain value "
                         "is used and the Key Vault secret never read)")


class IngestSettings(_Group):
    """Validation bounds of the ingest function and its Event Hubs binding."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_INGEST_")

    eventhub_name: str = Field("telemetry", json_schema_extra=_BINDING_EXPRESSION, description=(
        "Event Hub the ingest function reads (e.g. `telemetry`); its trigger reads `%SLUICE_INGEST_EVENTHUB_NAME%`, "
        "which has no default. An `EntityPath` in `EventHubConnection` must name the same hub (the host would "
        "consume that one while the lag and the audit read this one): another one stops the start"))
    consumer_group: str = Field("$Default", json_schema_extra=_BINDING_EXPRESSION, description=(
        "Consumer group of the ingest function (e.g. `sluice`); its trigger reads `%SLUICE_INGEST_CONSUMER_GROUP%`, "
        "which has no default"))
    max_body_bytes: int = Field(1_048_576, ge=256)
    """Largest event body accepted; larger ones are dead-lettered"""
    max_future_skew_seconds: float = Field(300.0, ge=0)
    """How far ahead of its Event Hubs enqueued time an event's timestamp may be"""
    max_measurements: int = Field(64, ge=0)
    """Most measurements in one event"""
    max_attributes: int = Field(32, ge=0)
    """Most attributes in one event"""
    audit: bool = True
    """Record each Event Hubs record's outcome by sequence number for the zero-loss audit (Cassandra migration 5)"""
    audit_window: int = Field(10_000, ge=1)
    """Sequence numbers below each partition's checkpoint that the sluice.audit.missing gauge checks"""
    audit_interval_seconds: float = Field(60.0, ge=1)
    """Least time between two audits made for the sluice.audit.missing gauge"""
    audit_consumer_group: str = "$Default"
    """Consumer group `sluice audit --since` reads from to place a time; never ingest's (it owns the partitions)"""

    def limits(self) -> Limits:
        return Limits(
            max_body_bytes=self.max_body_bytes,
            max_future_skew=timedelta(seconds=self.max_future_skew_seconds),
            max_measurements=self.max_measurements,
            max_attributes=self.max_attributes,
        )


class RulesSettings(_Group):
    """Which events are critical beyond ``severity == "critical"`` (JSON list of rules)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_")

    critical_rules: Annotated[list[MeasurementRule], NoDecode] = Field(default_factory=list)
    """JSON list of rules that make an event critical besides `severity: critical`, e.g. `[{"measurement": "temperature", "op": ">", "value": 90}]`"""  # noqa: E501 - one line: the settings table takes it as it stands

    _decode_rules = field_validator("critical_rules", mode="before")(_json)


# The query options of SLUICE_REDIS_URL: what redis-py parses from a URL (URL_QUERY_ARGUMENT_PARSERS), its TLS
# connection's options and a client name. The timeouts are settings of their own.
_REDIS_URL_TIMEOUTS = frozenset({"socket_timeout", "socket_connect_timeout", "timeout"})
_REDIS_URL_OPTIONS = frozenset({
    "db", "client_name", "health_check_interval", "max_connections", "protocol", "retry_on_timeout",
    "socket_keepalive", "ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers",
})  # fmt: skip


class RedisSettings(_Group):
    """The Redis cache: Azure Managed Redis (``rediss://``, port 10000, clustered) or Azure Cache for Redis (6380)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_REDIS_")

    url: str
    """Redis URL (Azure Managed Redis: `rediss://<name>.<region>.redis.azure.net:10000`; Azure Cache for Redis: `rediss://<name>.redis.cache.windows.net:6380/0`)"""
    cluster: bool | None = None
    """`true`: a Redis Cluster (OSS cluster policy), `false`: one Redis (or a proxy); empty: ask the server (`INFO cluster`)"""  # noqa: E501 - one line: the settings table takes it as it stands
    password: SecretStr | None = None
    """Password (access key), for local use; on Azure name a Key Vault secret instead"""
    password_secret: str | None = None
    """Name of the Key Vault secret holding the Redis access key"""
    auth: Literal["password", "entra"] = "password"
    """`password`: the access key or ACL password above; `entra`: Microsoft Entra ID tokens of the app's identity, renewed on open connections (needs `rediss://`; no password)"""  # noqa: E501 - one line: the settings table takes it as it stands
    key_prefix: str = "sluice:"
    """Prefix of every key Sluice writes (no `{` or `}`: hash tags are Sluice's)"""
    ttl_seconds: int = Field(7 * 24 * 3600, ge=1)
    """TTL of every key the change feed writes"""
    socket_timeout_seconds: float = Field(2.0, gt=0)
    """Socket timeout of Redis commands, and of connecting (waiting for an Entra ID token included)"""
    critical_per_device_max: int = Field(100, ge=1, le=1000)
    """Critical events kept per device (at most 1000: no lookup lists more, and each critical event the change feed
    adds scans the device's set)"""
    critical_stream_max: int = Field(10_000, ge=1)
    """Length of the global stream of recent critical events (over all its shards)"""
    critical_stream_shards: int = Field(8, ge=1, le=1024)
    """Shards of the critical stream, each in its own hash slot (fixed once data exists; see docs/redis-layout.md)"""
    wait_replicas: int = Field(0, ge=0, le=16)
    """Replicas per master that must acknowledge each change-feed page (`WAIT`) before its position is saved; 0: off. Only where the server honours `WAIT` (docs/redis-layout.md, "Failover")"""  # noqa: E501 - one line: the settings table takes it as it stands
    wait_timeout_ms: int = Field(1000, ge=1, le=60_000)
    """How long a page waits for those replicas; then the run stops as "Redis unavailable" and the page is written again"""  # noqa: E501 - one line: the settings table takes it as it stands

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        parts = urlsplit(value)
        # redis-py reads the query as parse_qs does (a blank option is dropped), takes each option's first value
        # and matches the names as written (``DB`` is not ``db``), so they are checked as it reads them
        query = {name: values[:1] for name, values in parse_qs(parts.query).items()}
        named = parse_qs(parts.query, keep_blank_values=True)
        if ":" in parts.netloc.rpartition("@")[0] or "password" in {name.lower() for name in named}:
            # the URL is logged with the settings and shown by the tools: a password in it would be too
            raise ValueError("must not carry a password (it would be logged with the settings): set "
                             "SLUICE_REDIS_PASSWORD_SECRET (Key Vault) or, locally, SLUICE_REDIS_PASSWORD")
        if value.startswith(("redis://", "rediss://")):
            try:
                port = parts.port
            except ValueError:  # redis-py would raise the same, bare, at the first command
                raise ValueError(f"port {parts.netloc.rpartition(':')[2]!r} is not a port (1-65535)") from None
            if not parts.hostname:  # redis-py would connect to localhost
                raise ValueError("names no host")
            if port == 0:  # redis-py would drop it and connect to 6379
                raise ValueError("port 0 is not a port (1-65535)")
        timeouts = sorted(name for name in query if name in _REDIS_URL_TIMEOUTS)
        if timeouts:  # redis-py's from_url lets them override the settings, unchecked
            raise ValueError(f"sets {', '.join(timeouts)}: set SLUICE_REDIS_SOCKET_TIMEOUT_SECONDS instead")
        unknown = sorted(name for name in query if name not in _REDIS_URL_OPTIONS)
        if unknown:  # redis-py hands them to its connection class, which fails at the first command (TypeError)
            raise ValueError(f"has options redis-py does not take ({', '.join(unknown)}); it takes "
                             f"{', '.join(sorted(_REDIS_URL_OPTIONS))}")
        tls_options = sorted(name for name in query if name.startswith("ssl_"))
        if tls_options and not value.startswith("rediss://"):
            raise ValueError(f"has TLS options ({', '.join(tls_options)}) but is not a rediss:// URL")
        # redis-py hands ssl_cert_reqs as it stands to SSLConnection, where only "required" keeps the check
        if any(v != "required" for v in query.get("ssl_cert_reqs", [])):
            raise ValueError("ssl_cert_reqs must be 'required' (or absent): the server's certificate is always checked")
        if any(not _redis_reads_true("ssl_check_hostname", v) for v in query.get("ssl_check_hostname", [])):
            raise ValueError("ssl_check_hostname must not be off: the server's host name is always checked")
        for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):  # redis-py opens them at the first command
            for path in query.get(option, []):
                if not Path(path).is_file():
                    raise ValueError(f"{option} {path!r} does not point to a file")
        for path in query.get("ssl_ca_certs", []):
            problem = ca_bundle_problem(path)
            if problem:
                raise ValueError(f"ssl_ca_certs {path!r} {problem}")
        for path in query.get("ssl_ca_path", []):
            if not Path(path).is_dir():
                raise ValueError(f"ssl_ca_path {path!r} does not point to a directory")
        for option, values in query.items():
            for given in values:
                _redis_parses(option, given)
                _redis_connects_with(option, given)
        if _redis_db(value) < 0:  # Redis numbers its databases from 0: SELECT fails at every connection
            raise ValueError(f"selects database {_redis_db(value)}: Redis numbers its databases from 0")
        return value

    @model_validator(mode="after")
    def _secret_over_tls(self) -> Self:
        _password_or_secret("SLUICE_REDIS_", self.password, self.password_secret)
        if self.password_secret and self.url.startswith("redis://"):
            raise ValueError(_VAULT_SECRET_NEEDS_TLS.format(secret="SLUICE_REDIS_PASSWORD_SECRET",
                                                            fix="use a rediss:// URL"))
        return self

    @model_validator(mode="after")
    def _cluster_has_database_0(self) -> Self:
        if self.cluster and self.url.startswith(("redis://", "rediss://")) and _redis_db(self.url) != 0:
            # redis-py refuses it at every use ("can only be 0 in cluster mode"); a Redis Cluster has database 0 only
            raise ValueError(f"SLUICE_REDIS_URL selects database {_redis_db(self.url)} but SLUICE_REDIS_CLUSTER=true: "
                             "a Redis Cluster has only database 0 (drop the /<db> from the URL, or set "
                             "SLUICE_REDIS_CLUSTER=false for one Redis)")
        return self

    @model_validator(mode="after")
    def _entra_alone(self) -> Self:
        if self.auth != "entra":
            return self
        if self.password is not None or self.password_secret:
            raise ValueError("SLUICE_REDIS_AUTH=entra signs in with Entra ID tokens: unset SLUICE_REDIS_PASSWORD and "
                             "SLUICE_REDIS_PASSWORD_SECRET")
        parts = urlsplit(self.url)
        if "@" in parts.netloc:
            raise ValueError("SLUICE_REDIS_AUTH=entra takes the user name from the token (the identity's object id): "
                             "remove the user from SLUICE_REDIS_URL")
        if not self.url.startswith("rediss://") and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            # Azure takes Entra ID sign-in over TLS only; a token is a credential like any password
            raise ValueError("SLUICE_REDIS_AUTH=entra needs a rediss:// URL (tokens are only ever sent over TLS)")
        return self

    @field_validator("key_prefix")
    @classmethod
    def _no_hash_tag(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain '{' or '}' (hash tags are Sluice's)")
        return value


def _redis_parses(option: str, value: str) -> None:
    """Refuse a URL query value that redis-py's own URL parsers (the synchronous client's and ``redis.asyncio``'s)
    reject at the first command, ``health_check_interval=1.5`` (``int``) say, naming the option, never the URL."""
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS as ASYNC_PARSERS
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS as PARSERS

    for parse in (PARSERS.get(option), ASYNC_PARSERS.get(option)):
        if not callable(parse):
            continue
        try:
            parsed = parse(value)
        except (TypeError, ValueError):
            raise ValueError(f"option {option}={value!r} is not a value redis-py takes (it reads it with "
                             f"{getattr(parse, '__name__', 'its parser')}())") from None
        if option == "ssl_min_version" and parsed not in {version.value for version in ssl.TLSVersion}:
            # redis-py hands the number to SSLContext.minimum_version: TLS 1.2 is 771 (ssl.TLSVersion.TLSv1_2)
            raise ValueError(f"option ssl_min_version={value!r} is not a TLS version number "
                             f"(TLSv1_2 is {ssl.TLSVersion.TLSv1_2.value}, TLSv1_3 {ssl.TLSVersion.TLSv1_3.value})")


def _redis_connects_with(option: str, value: str) -> None:
    """Refuse a URL query value redis-py parses but every connection then refuses, naming the option."""
    if option == "protocol" and int(value) not in (2, 3):
        # redis-py's Connection (redis.connection and redis.asyncio.connection) raises ConnectionError
        # "protocol must be either 2 or 3" at every connection
        raise ValueError(f"option protocol={value!r} is not a protocol redis-py speaks (2 or 3)")
    if option == "client_name" and not all("!" <= character <= "~" for character in value):
        # Redis's CLIENT SETNAME, which redis-py sends at every connection, refuses spaces, newlines and anything
        # outside printable ASCII ("Client names cannot contain spaces, newlines or special characters")
        raise ValueError(f"option client_name={value!r} has a space or a character Redis refuses in a client name")
    if option == "ssl_ciphers":
        try:  # redis-py hands it to SSLContext.set_ciphers at every connection
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(value)
        except ssl.SSLError:
            raise ValueError(f"option ssl_ciphers={value!r} selects no cipher OpenSSL knows") from None


def _redis_db(url: str) -> int:
    """The database redis-py selects for ``url``: its ``db`` option, else the number its path names, else 0."""
    parts = urlsplit(url)
    given = parse_qs(parts.query).get("db")
    if given:
        return int(given[0])
    try:
        return int(unquote(parts.path).replace("/", "")) if parts.path else 0
    except ValueError:  # redis-py ignores a path that is not a number
        return 0


def _redis_reads_true(option: str, value: str) -> bool:
    """Whether redis-py, the synchronous client and ``redis.asyncio`` alike, reads a URL's boolean query ``option``
    as on: asked of their own URL parsers, so every spelling they take for off (``n``, ``F``...) counts as off."""
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS as ASYNC_PARSERS
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS as PARSERS

    parsers = (PARSERS[option], ASYNC_PARSERS[option])  # redis.connection leaves its mapping untyped
    return all(callable(parse) and bool(parse(value)) for parse in parsers)


class PostgresSettings(_Group):
    """PostgreSQL for enrichment (Azure Database for PostgreSQL Flexible Server)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_POSTGRES_")

    host: Name
    """PostgreSQL host (Azure: `<server>.postgres.database.azure.com`)"""
    port: int = Field(5432, ge=1, le=65535)
    """PostgreSQL port (6432 for the built-in PgBouncer)"""
    dbname: str = "sluice"
    """Database of the enrichment tables and reporting views"""
    user: str = "postgres"
    """User"""
    password: SecretStr | None = None
    """Password, for local use; on Azure name a Key Vault secret instead"""
    password_secret: str | None = None
    """Name of the Key Vault secret holding the password"""
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description=(
        "libpq sslmode (Azure: `verify-full`, with `SLUICE_POSTGRES_SSLROOTCERT=system`: a password from Key Vault "
        "is sent over nothing less)"))
    sslrootcert: Path | None = None
    """CA bundle that `verify-ca`/`verify-full` check the server with (`system`: the system's CAs; default: libpq's `~/.postgresql/root.crt`)"""  # noqa: E501 - one line: the settings table takes it as it stands
    pool_min_size: int = Field(1, ge=0)
    """Connections the pool keeps open"""
    pool_max_size: int = Field(4, ge=1)
    """Most connections of the pool"""
    pool_max_lifetime_seconds: float = Field(3600.0, gt=0)
    """A connection is replaced after this long"""
    pool_timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait for a pooled connection"""
    prepare_threshold: int | None = Field(
        5, description="None disables server-side prepared statements (PgBouncer transaction mode)"
    )

    @field_validator("sslrootcert")
    @classmethod
    def _ca_or_system(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "system":
            return value
        if not value.is_file():
            raise ValueError("Path does not point to a file (nor is it `system`)")
        return _holds_a_certificate(value)

    @model_validator(mode="after")
    def _ca_is_used(self) -> Self:
        if self.sslrootcert is not None and self.sslmode in ("disable", "allow", "prefer"):
            raise ValueError(f"SLUICE_POSTGRES_SSLROOTCERT is set but SLUICE_POSTGRES_SSLMODE={self.sslmode} may "
                             "connect without checking the server against it; set verify-full (or verify-ca)")
        if str(self.sslrootcert) == "system" and self.sslmode != "verify-full":
            # libpq's own rule: any holder of a certificate from a public CA could pose as the server otherwise
            raise ValueError(f"SLUICE_POSTGRES_SSLROOTCERT=system trusts every public CA, so it needs "
                             f"SLUICE_POSTGRES_SSLMODE=verify-full (not {self.sslmode}): the host name must be checked")
        return self

    @model_validator(mode="after")
    def _secret_over_verified_tls(self) -> Self:
        _password_or_secret("SLUICE_POSTGRES_", self.password, self.password_secret)
        if self.password_secret and self.sslmode != "verify-full":
            raise ValueError(_VAULT_SECRET_NEEDS_TLS.format(
                secret="SLUICE_POSTGRES_PASSWORD_SECRET",
                fix=f"SLUICE_POSTGRES_SSLMODE={self.sslmode} does not check the server's "
                    f"{'host name' if self.sslmode == 'verify-ca' else 'certificate'}; set verify-full (with "
                    "SLUICE_POSTGRES_SSLROOTCERT=system for Azure's public CAs)"))
        return self

    @model_validator(mode="after")
    def _root_cert_found(self) -> Self:
        if self.sslrootcert is None and self.sslmode in ("verify-ca", "verify-full") and not _libpq_root_cert():
            # libpq would look for its default file at every connection and fail; the pool only times out
            raise ValueError(f"SLUICE_POSTGRES_SSLMODE={self.sslmode} checks the server against a CA, but "
                             "SLUICE_POSTGRES_SSLROOTCERT is not set and libpq's default (PGSSLROOTCERT, else "
                             "~/.postgresql/root.crt) does not exist: set SLUICE_POSTGRES_SSLROOTCERT to the CA file, "
                             "or to `system` for the system's CAs (Azure)")
        return self

    @model_validator(mode="after")
    def _pool_fits(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(f"SLUICE_POSTGRES_POOL_MIN_SIZE ({self.pool_min_size}) is above "
                             f"SLUICE_POSTGRES_POOL_MAX_SIZE ({self.pool_max_size}): the pool cannot keep more "
                             "connections open than it may have")
        return self

    @field_validator("prepare_threshold", mode="before")
    @classmethod
    def _prepare_off(cls, value: object) -> object:
        """``none``/``off``/``disable`` or a negative number turn prepared statements off (an empty value is
        ignored). psycopg prepares a query once it ran ``threshold`` times, so -2 taken as a number would
        prepare every query at once: the opposite, and what PgBouncer's transaction mode cannot serve."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("none", "null", "off", "disable", "disabled"):
                return None
            if text.lstrip("-").isdigit():
                value = int(text)
        if isinstance(value, int) and value < 0:
            return None
        return value

    def conninfo(self, password: str | None = None) -> str:
        """A libpq connection string (the password only if given; never logged)."""
        from psycopg.conninfo import make_conninfo

        parts: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "application_name": "sluice",
        }
        if self.sslrootcert:
            parts["sslrootcert"] = _system_ca_file() if str(self.sslrootcert) == "system" else str(self.sslrootcert)
        if password:
            parts["password"] = password
        return make_conninfo(**parts)


def _libpq_root_cert() -> bool:
    """Whether libpq finds a root certificate without ``sslrootcert``: ``PGSSLROOTCERT`` (a file, or ``system``),
    else ``root.crt`` in ``~/.postgresql`` (``%APPDATA%\\postgresql`` on Windows)."""
    given = os.environ.get("PGSSLROOTCERT")
    if given:
        return given == "system" or Path(given).is_file()
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", ""), "postgresql", "root.crt").is_file()
    return (Path.home() / ".postgresql" / "root.crt").is_file()


def _system_ca_file() -> str:
    """``sslrootcert=system`` as the system's CA bundle file, or ``system`` when the system has none.

    For ``system`` libpq loads the default locations of the OpenSSL it was built with; psycopg[binary]'s libpq
    brings its own, whose locations exist on no system (only ``SSL_CERT_FILE``/``SSL_CERT_DIR`` would move
    them), so no CA at all would be trusted. Python's ``ssl`` uses the system's OpenSSL: its CA file
    (``SSL_CERT_FILE`` first, as OpenSSL reads it) is the store ``system`` means. ``_ca_is_used`` holds
    ``system`` to ``verify-full``, as libpq does.
    """
    return ssl.get_default_verify_paths().cafile or "system"


# How long one invocation's work may last at most: host.json's functionTimeout (10 min) less two minutes of margin.
_RUN_LIMIT_SECONDS = 480.0


class EnrichmentSettings(_Group):
    """Timer-driven enrichment of closed event-time windows into PostgreSQL.

    Windows are ``[start, start + window_seconds)`` in UTC, aligned to the epoch;
    a window is closed once ``now >= end + allowed_lateness_seconds``. Events that
    arrive later (by Event Hubs enqueued time) but within ``late_horizon_seconds``
    of their window's end make the window be enriched again.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_ENRICH_")

    schedule: Ncrontab = Field("0 */1 * * * *", json_schema_extra=_BINDING_EXPRESSION, description=(
        "NCRONTAB (six fields) of the enrichment timer (e.g. `0 */1 * * * *`); its trigger reads "
        "`%SLUICE_ENRICH_SCHEDULE%`, which has no default"))
    window_seconds: int = Field(300, ge=1, le=86400)
    """Window width, aligned to the epoch in UTC"""
    allowed_lateness_seconds: int = Field(120, ge=0, le=7 * 86400)
    """A window is closed this long after its end"""
    late_horizon_seconds: int = Field(86400, ge=0, le=30 * 86400)
    """Events arriving up to this long after their window's end make it be enriched again"""
    initial_lookback_seconds: int = Field(3600, ge=0, description="where the first run starts when no watermark exists")
    max_windows_per_run: int = Field(24, ge=1, le=10_000)
    """Most windows one timer run enriches (the rest wait for the next run)"""
    reference_source: Literal["postgres", "parquet"] = "postgres"
    """Where reference data comes from: PostgreSQL tables or Parquet in Blob storage"""
    reference_container: BlobContainerName = "sluice-reference"
    """Blob container of the Parquet reference data"""
    reference_devices_blob: str = "devices.parquet"
    """Parquet blob of the devices"""
    reference_sites_blob: str = "sites.parquet"
    """Parquet blob of the sites"""
    read_page_size: int = Field(1000, ge=100, le=100_000)
    """Rows per Cassandra page when reading a window (pages in flight bound its memory)"""
    read_concurrency: int = Field(16, ge=1, le=256)
    """Bucket-shard partitions read at once"""
    statement_timeout_seconds: PostgresTimeout = 120.0
    """PostgreSQL statement_timeout of the enrichment transaction (lock_timeout while its rows stream in); at most
    480 s, to end within host.json's functionTimeout"""

    @model_validator(mode="after")
    def _statement_within_function_timeout(self) -> Self:
        # One window's transaction may wait out the statement timeout: longer than functionTimeout, the host fails the
        # invocation first and restarts the worker, with every other invocation of that worker.
        if self.statement_timeout_seconds > _RUN_LIMIT_SECONDS:
            raise ValueError(
                f"SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS ({self.statement_timeout_seconds:g}) must be at most "
                f"{_RUN_LIMIT_SECONDS:g} s: one window's transaction must end well within host.json's "
                "functionTimeout of 10 minutes")
        return self


class ChangeFeedSettings(_Group):
    """The change feed timer: Cassandra ``events_by_id`` changes -> Redis (see docs/redis-layout.md).

    ``cosmos`` reads Cosmos DB's change feed (start time + paging state as the
    continuation); ``portable`` reads ``events_by_arrival_bucket`` by Event Hubs
    enqueued time from a watermark, re-reading ``overlap_seconds`` before it each
    run to catch rows written late (idempotent). The continuation or watermark
    lives in Cassandra ``feed_state`` under ``feed_name``, saved compare-and-set.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_CHANGEFEED_")

    schedule: Ncrontab = Field("*/5 * * * * *", json_schema_extra=_BINDING_EXPRESSION, description=(
        "NCRONTAB (six fields) of the change feed timer (e.g. `*/5 * * * * *`); its trigger reads "
        "`%SLUICE_CHANGEFEED_SCHEDULE%`, which has no default"))
    mode: Literal["cosmos", "portable"] = "cosmos"
    """`cosmos`: Cosmos DB's change feed; `portable`: the arrival-bucketed table (Apache Cassandra)"""
    feed_name: Identifier = "events_by_id"
    """Name under which the continuation is saved"""
    page_size: int = Field(1000, ge=1, le=100_000)
    """Rows per change feed page"""
    time_budget_seconds: float = Field(20.0, gt=0, le=600)
    """A run stops reading new pages after this long"""
    lookback_seconds: int = Field(
        3600, ge=0, description="start of the first run, and of a run whose continuation was rejected"
    )
    overlap_seconds: int = Field(
        60, ge=0, le=86400, description="portable mode: how far before the watermark each run re-reads (at least "
        "twice `SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS`)"
    )
    max_span_seconds: int = Field(3600, ge=1, description="portable mode: the widest enqueued-time range one run reads")
    read_timeout_seconds: float = Field(10.0, gt=0)
    """Timeout of one change feed read"""

    @model_validator(mode="after")
    def _run_within_function_timeout(self) -> Self:
        # A run reads its position, starts pages until the budget is spent, and the last one started gets its whole
        # read timeout, then its save (the same timeout) after its Redis writes: the budget and three read timeouts
        # must leave host.json's functionTimeout (10 minutes) a margin for those writes.
        if self.time_budget_seconds + 3 * self.read_timeout_seconds > _RUN_LIMIT_SECONDS:
            raise ValueError(
                f"SLUICE_CHANGEFEED_TIME_BUDGET_SECONDS + 3 x SLUICE_CHANGEFEED_READ_TIMEOUT_SECONDS must be at most "
                f"{_RUN_LIMIT_SECONDS:g} s (a run may read one page past its budget, and must end well "
                f"within host.json's functionTimeout of 10 minutes)")
        return self


class LookupSettings(_Group):
    """The HTTP cache-aside lookups (Redis first, Cassandra on a miss)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_LOOKUP_")

    cache_ttl_seconds: int = Field(3600, ge=1)
    """TTL of a value the lookups put in Redis after a miss"""
    cache_ttl_jitter_seconds: int = Field(
        300, ge=0, description="a random 0..jitter added to each fill, so fills do not expire together"
    )
    negative_ttl_seconds: int = Field(5, ge=1)
    """How long "not found" is cached"""
    cassandra_timeout_seconds: float = Field(2.0, gt=0)
    """Timeout of a lookup's Cassandra read (then 503)"""
    health_timeout_seconds: float = Field(1.0, gt=0)
    """Timeout of each dependency check of /api/health"""
    redis_retry_after_seconds: float = Field(
        5.0, ge=0,
        description="after a Redis outage, serve from Cassandra for this long before one request tries Redis again",
    )
    critical_default_limit: int = Field(20, ge=1, le=1000)  # le: the largest `limit` (functions.parameters.MAX_LIMIT)
    """Critical events returned when `limit` is not given"""
    flight_wait_seconds: float = Field(
        5.0, gt=0, description="how long a request waits for another request's Cassandra read of the same key"
    )


class KeyVaultSettings(_Group):
    """Key Vault holding the secrets named by ``*_SECRET`` settings."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_KEYVAULT_")

    url: str | None = None
    """Key Vault holding the secrets named by `*_SECRET` settings: the vault's https endpoint alone (`https://<vault>.vault.azure.net/`)"""
    ca_file: FilePath | None = Field(None, description="CA bundle for a local emulator's HTTPS certificate")
    refresh_min_interval_seconds: float = Field(
        5.0, ge=0, description="a secret a store refused is re-read at most this often"
    )

    _ca_file_holds_a_certificate = field_validator("ca_file")(_holds_a_certificate)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            _https_url(value, "https://<vault>.vault.azure.net/", endpoint_only=True)
        return value


class DashboardSettings(_Group):
    """The operations page and its JSON routes (/api/dashboard, /api/status, device history, reports)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_DASHBOARD_")

    token_key: SecretStr | None = Field(
        None,
        description=(
            "HMAC key (at least 16 characters) signing device history page tokens; empty: derived from this "
            "deployment's store addresses, which a password rotation leaves alone (set it when several "
            "deployments share those)"
        ),
    )
    read_timeout_seconds: PostgresTimeout = 2.0
    """Timeout of each store read behind /api/status, history and reports"""
    status_cache_seconds: float = Field(1.0, ge=0)
    """A pod computes /api/status at most once per this many seconds"""
    state_deadline_seconds: float = Field(10.0, gt=0)
    """The most a device's state at a time (/api/devices/{id}/state) may take, its walk back day by day included,
    before it answers 503"""
    refresh_seconds: int = Field(5, ge=1, le=300)
    """How often the page polls /api/status and the critical feed"""

    @field_validator("token_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class WorkerSettings(_Group):
    """The worker process that runs the functions."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_WORKER_")

    gc_young_threshold: int = Field(
        50_000,
        ge=100,
        le=10_000_000,
        description=(
            "allocations between collections of the garbage collector's youngest generation (Python's default is 700); "
            "above one ingest batch's working set (about 30 objects per event: 50,000 covers 1,000 events), a batch's "
            "objects are freed before the collector walks them"
        ),
    )


TracedClient = Literal["cassandra", "redis", "psycopg"]
DEFAULT_TRACED: tuple[TracedClient, ...] = ("redis", "psycopg")


class TelemetrySettings(_Group):
    """Sluice's own telemetry settings; the exporters are chosen by the standard variables (docs/observability.md)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_")

    metrics_port: int | None = Field(default=None, ge=0, le=65535, description=(
        "serve Prometheus metrics at `http://<address>:<port>/metrics` (9464 is the exporter's usual port, 0 a free "
        "one); empty: no scrape endpoint"))
    metrics_address: str = "0.0.0.0"
    """Address the Prometheus endpoint listens on"""
    appinsights_connection_string_secret: str | None = Field(default=None, description=(
        "Key Vault secret holding the Application Insights connection string, read at the worker's start when "
        "`APPLICATIONINSIGHTS_CONNECTION_STRING` is not set (AKS)"))
    trace_clients: Annotated[list[TracedClient], NoDecode] = Field(default_factory=lambda: list(DEFAULT_TRACED),
                                                                   description=(
        "client libraries whose requests get spans when traces are exported, comma-separated (`none`: none); "
        "`cassandra` makes about three spans per ingested event, see docs/observability.md"))

    @field_validator("trace_clients", mode="before")
    @classmethod
    def _clients(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list):
            value = [part.lower() if isinstance(part, str) else part for part in value]
        return [] if value == ["none"] else value


class Settings(BaseModel):
    """Every setting of Sluice, grouped; built by :func:`load_settings`."""

    model_config = ConfigDict(frozen=True)

    storage: StorageSettings
    cassandra: CassandraSettings
    ingest: IngestSettings
    rules: RulesSettings
    redis: RedisSettings
    postgres: PostgresSettings
    enrichment: EnrichmentSettings
    changefeed: ChangeFeedSettings
    lookup: LookupSettings
    keyvault: KeyVaultSettings
    dashboard: DashboardSettings
    worker: WorkerSettings
    telemetry: TelemetrySettings

    def as_dict(self) -> dict[str, Any]:
        """Every value, with secrets shown as ``**********`` (safe to log)."""
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _portable_overlap_covers_a_delay_note(self) -> Self:
        # The portable feed reads ingest's delay notes again while they are within the overlap: a note is stamped
        # with ingest's clock before its insert, which may take up to the Cassandra request timeout, and ingest's
        # clock may be behind ours. Half the overlap covers the insert, the other half the clocks (ingest notes a
        # batch stored half the overlap late): with less, a note landing after a run looked is never read, and its
        # late batch never reaches Redis.
        feed, timeout = self.changefeed, self.cassandra.request_timeout_seconds
        if feed.mode == "portable" and feed.overlap_seconds < 2 * timeout:
            raise ValueError(
                f"SLUICE_CHANGEFEED_OVERLAP_SECONDS ({feed.overlap_seconds}) must be at least twice "
                f"SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS ({timeout:g}) with SLUICE_CHANGEFEED_MODE=portable: "
                "the portable feed re-reads ingest's delay notes within the overlap, and a note's insert may take "
                "up to the request timeout, plus the clocks' difference")
        return self

    @model_validator(mode="after")
    def _ingest_dead_letters_within_function_timeout(self) -> Self:
        # Ingest's final attempt writes its batch (one request may take the whole request timeout, throttling waits
        # included), then dead-letters it within the dead-letter deadline: both must end before host.json's
        # functionTimeout, else the host kills the invocation and checkpoints a batch neither stored nor dead-lettered.
        timeout, deadline = self.cassandra.request_timeout_seconds, self.storage.deadletter_deadline_seconds
        if timeout + deadline > _RUN_LIMIT_SECONDS:
            raise ValueError(
                f"SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS ({timeout:g}) + SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS "
                f"({deadline:g}) must be at most {_RUN_LIMIT_SECONDS:g} s: ingest's final attempt writes its batch, "
                "then dead-letters it, well within host.json's functionTimeout of 10 minutes")
        return self

    @model_validator(mode="after")
    def _secrets_need_a_vault(self) -> Self:
        secrets = (
            ("SLUICE_CASSANDRA_PASSWORD_SECRET", self.cassandra.password_secret),
            ("SLUICE_REDIS_PASSWORD_SECRET", self.redis.password_secret),
            ("SLUICE_POSTGRES_PASSWORD_SECRET", self.postgres.password_secret),
            ("SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET", self.telemetry.appinsights_connection_string_secret),
        )
        named = [name for name, value in secrets if value]
        if named and not self.keyvault.url:
            what = "names a Key Vault secret" if len(named) == 1 else "name Key Vault secrets"
            raise ValueError(f"SLUICE_KEYVAULT_URL is required because {', '.join(named)} {what}")
        bad = [name for name, value in secrets if value and not SECRET_NAME.fullmatch(value)]
        if bad:  # else found at the first use of the store: batches retried, then dead-lettered
            raise ValueError(f"{', '.join(bad)}: a Key Vault secret name is 1 to 127 letters, digits and hyphens "
                             "(the value is not shown: is it the secret itself rather than its name?)")
        return self


GROUPS: dict[str, type[_Group]] = {
    name: field.annotation  # type: ignore[misc]  # pydantic types it `type[Any] | None`: here always a group model
    for name, field in Settings.model_fields.items()
}


def env_names(group: type[_Group]) -> list[str]:
    """The environment variable names a settings group reads (first alias for aliased fields)."""
    prefix = group.model_config.get("env_prefix", "")
    names = []
    for name, info in group.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(str(alias.choices[0]))
        else:
            names.append(f"{prefix}{name}".upper())
    return names


_G = TypeVar("_G", bound=_Group)


def _spelled_twice(environ: Mapping[str, str], groups: list[type[_Group]]) -> list[str]:
    """A setting given under two spellings differing in case (Linux keeps both): pydantic-settings reads names
    ignoring case and keeps the last one, while the host's ``%SETTING%`` binding reads the exact spelling first, so
    the two would read different values. Refused, naming the variables (not their values)."""
    names: set[str] = set()
    for group in groups:
        prefix = group.model_config.get("env_prefix", "")
        for name, info in group.model_fields.items():
            alias = info.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [f"{prefix}{name}"]
            names.update(str(choice).lower() for choice in choices)
    spellings: dict[str, list[str]] = {}
    for variable in environ:
        if variable.lower() in names:
            spellings.setdefault(variable.lower(), []).append(variable)
    return [f"{' and '.join(sorted(given))}: one setting spelled {len(given)} ways (the host reads the exact "
            "spelling, Sluice would read another); keep one"
            for given in spellings.values() if len(given) > 1]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate every group; one :class:`ConfigurationError` lists every problem by variable name."""
    token = _environ.set(dict(environ) if environ is not None else dict(os.environ))
    try:
        groups: dict[str, Any] = {}
        problems = _spelled_twice(_environ.get() or {}, list(GROUPS.values()))
        for name, group in GROUPS.items():
            try:
                groups[name] = group()
            except ValidationError as exc:
                problems.extend(_problems(group, exc))
            except SettingsError as exc:  # a value pydantic-settings itself could not decode
                problems.append(f"{group.__name__}: {exc}")
        # The standard telemetry variables telemetry.build chooses its exporters by: refused here, at start-up (and by
        # the startup probe), rather than running a consuming worker without telemetry.
        problems.extend(telemetry_environment.problems(_environ.get() or {}))  # set above: the mapping validated
        # The host's Event Hubs connection, which ingest's trigger and the lag readers of every pod connect with.
        # With the hub every reader names (SLUICE_INGEST_EVENTHUB_NAME), against an EntityPath the host would prefer.
        ingest = groups.get("ingest")
        problems.extend(eventhub_connection.problems(_environ.get() or {},
                                                     ingest.eventhub_name if ingest is not None else None))
        if problems:
            raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems))
        try:
            return Settings(**groups)
        except ValidationError as exc:
            raise ConfigurationError(
                "invalid settings:\n  " + "\n  ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            ) from None
    finally:
        _environ.reset(token)


def load_group(group: type[_G]) -> _G:
    """One group of settings from the environment (a tool needs no more), or one :class:`ConfigurationError`
    naming each bad variable, as :func:`load_settings` does."""
    problems = _spelled_twice(os.environ, [group])
    if problems:
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems))
    try:
        return group()
    except ValidationError as exc:
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(_problems(group, exc))) from None
    except SettingsError as exc:
        raise ConfigurationError(f"invalid settings:\n  {group.__name__}: {exc}") from None


def _problems(group: type[_Group], exc: ValidationError) -> list[str]:
    prefix = group.model_config.get("env_prefix", "")
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error["loc"]
        if loc:
            field = group.model_fields.get(str(loc[0]))
            alias = field.validation_alias if field else None
            if field is None:  # pydantic reports aliased fields by their alias
                variable = str(loc[0])
            elif isinstance(alias, AliasChoices):
                variable = str(alias.choices[0])
            else:
                variable = f"{prefix}{loc[0]}".upper()
            detail = "".join(f"[{part}]" for part in loc[1:])
            out.append(f"{variable}{detail}: {error['msg'].removeprefix('Value error, ')}")
        else:
            out.append(f"{group.__name__}: {error['msg'].removeprefix('Value error, ')}")
    return out
