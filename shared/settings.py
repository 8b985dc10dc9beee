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
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from shared.domain.events import Limits
from shared.domain.rules import MeasurementRule
from shared.exceptions import ConfigurationError

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")]
Ncrontab = Annotated[str, Field(min_length=11)]

_environ: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("sluice_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """Reads from the mapping given to :func:`load_settings` (``os.environ`` by default)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        source = _environ.get()
        if source is None:
            return super()._load_env_vars()
        return parse_env_vars(source, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _Group(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)

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


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class StorageSettings(_Group):
    """Blob storage of the Functions host (``AzureWebJobsStorage``): dead letters, leases, reference data."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_STORAGE_")

    connection: SecretStr = Field(validation_alias=AliasChoices("AzureWebJobsStorage", "SLUICE_STORAGE_CONNECTION"))
    deadletter_container: Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")] = "sluice-deadletter"


class CassandraSettings(_Group):
    """The Cassandra / Cosmos DB for Apache Cassandra event store."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_CASSANDRA_")

    hosts: Annotated[list[str], NoDecode]
    port: int = Field(9042, ge=1, le=65535)
    keyspace: Identifier = "sluice"
    username: str | None = None
    password: SecretStr | None = None
    password_secret: str | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    local_dc: str | None = None
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL"] = "LOCAL_QUORUM"
    connect_timeout_seconds: float = Field(5.0, gt=0)
    request_timeout_seconds: float = Field(10.0, gt=0)
    overload_max_retries: int = Field(6, ge=0, le=50)
    overload_max_wait_seconds: float = Field(5.0, gt=0)
    write_concurrency: int = Field(64, ge=1, le=1024)
    replication: dict[str, Any] = Field(default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1})
    bucket_seconds: int = Field(60, ge=1, le=86400)
    shards: int = Field(8, ge=1, le=256)

    _split_hosts = field_validator("hosts", mode="before")(_split_csv)

    @model_validator(mode="after")
    def _credentials_complete(self) -> Self:
        if (self.password or self.password_secret) and not self.username:
            raise ValueError("SLUICE_CASSANDRA_USERNAME is required when a password or password secret is set")
        if self.password and self.password_secret:
            raise ValueError("set SLUICE_CASSANDRA_PASSWORD or SLUICE_CASSANDRA_PASSWORD_SECRET, not both")
        return self


class IngestSettings(_Group):
    """Validation bounds of the ingest function and its Event Hubs binding."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_INGEST_")

    eventhub_name: str = "telemetry"
    consumer_group: str = "$Default"
    max_body_bytes: int = Field(1_048_576, ge=256)
    max_future_skew_seconds: float = Field(300.0, ge=0)
    max_measurements: int = Field(64, ge=0)
    max_attributes: int = Field(32, ge=0)

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

    critical_rules: list[MeasurementRule] = Field(default_factory=list)


class RedisSettings(_Group):
    """The Redis cache (Azure Cache for Redis: ``rediss://`` and port 6380)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_REDIS_")

    url: str
    password: SecretStr | None = None
    password_secret: str | None = None
    key_prefix: str = "sluice:"
    ttl_seconds: int = Field(7 * 24 * 3600, ge=1)
    socket_timeout_seconds: float = Field(2.0, gt=0)
    critical_per_device_max: int = Field(100, ge=1)
    critical_stream_max: int = Field(10_000, ge=1)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class PostgresSettings(_Group):
    """PostgreSQL for enrichment (Azure Database for PostgreSQL Flexible Server)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_POSTGRES_")

    host: str
    port: int = Field(5432, ge=1, le=65535)
    dbname: str = "sluice"
    user: str = "postgres"
    password: SecretStr | None = None
    password_secret: str | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(4, ge=1)
    pool_max_lifetime_seconds: float = Field(3600.0, gt=0)
    pool_timeout_seconds: float = Field(30.0, gt=0)
    prepare_threshold: int | None = Field(5, description="None disables server-side prepared statements (PgBouncer transaction mode)")

    @field_validator("prepare_threshold", mode="before")
    @classmethod
    def _prepare_off(cls, value: object) -> object:
        """``none``/``off``/``disable``/``-1`` turn prepared statements off (an empty value is ignored)."""
        if isinstance(value, str) and value.strip().lower() in ("none", "null", "off", "disable", "disabled", "-1"):
            return None
        if isinstance(value, int) and value < 0:
            return None
        return value

    def conninfo(self, password: str | None = None) -> str:
        """A libpq connection string (the password only if given; never logged)."""
        from psycopg.conninfo import make_conninfo  # noqa: PLC0415 - keep psycopg out of settings import

        parts: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "application_name": "sluice",
        }
        if password:
            parts["password"] = password
        return make_conninfo(**parts)


class EnrichmentSettings(_Group):
    """Timer-driven enrichment of closed event-time windows into PostgreSQL.

    Windows are ``[start, start + window_seconds)`` in UTC, aligned to the epoch;
    a window is closed once ``now >= end + allowed_lateness_seconds``. Events that
    arrive later (by Event Hubs enqueued time) but within ``late_horizon_seconds``
    of their window's end make the window be enriched again.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_ENRICH_")

    schedule: Ncrontab = "0 */1 * * * *"
    window_seconds: int = Field(300, ge=1, le=86400)
    allowed_lateness_seconds: int = Field(120, ge=0, le=7 * 86400)
    late_horizon_seconds: int = Field(86400, ge=0, le=30 * 86400)
    initial_lookback_seconds: int = Field(3600, ge=0, description="where the first run starts when no watermark exists")
    max_windows_per_run: int = Field(24, ge=1, le=10_000)
    reference_source: Literal["postgres", "parquet"] = "postgres"
    reference_container: Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")] = "sluice-reference"
    reference_devices_blob: str = "devices.parquet"
    reference_sites_blob: str = "sites.parquet"
    read_page_size: int = Field(5000, ge=100, le=100_000)
    read_concurrency: int = Field(16, ge=1, le=256)
    statement_timeout_seconds: float = Field(120.0, gt=0)


class ChangeFeedSettings(_Group):
    """The change feed timer: Cassandra ``events_by_id`` changes -> Redis (see docs/redis-layout.md).

    ``cosmos`` reads Cosmos DB's change feed (start time + paging state as the
    continuation); ``portable`` reads ``events_by_arrival_bucket`` by Event Hubs
    enqueued time from a watermark, re-reading ``overlap_seconds`` before it each
    run to catch rows written late (idempotent). The continuation or watermark
    lives in Cassandra ``feed_state`` under ``feed_name``, saved compare-and-set.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_CHANGEFEED_")

    schedule: Ncrontab = "*/5 * * * * *"
    mode: Literal["cosmos", "portable"] = "cosmos"
    feed_name: Identifier = "events_by_id"
    page_size: int = Field(1000, ge=1, le=100_000)
    time_budget_seconds: float = Field(20.0, gt=0, le=600)
    lookback_seconds: int = Field(3600, ge=0, description="start of the first run, and of a run whose continuation was rejected")
    overlap_seconds: int = Field(60, ge=0, le=86400, description="portable mode: how far before the watermark each run re-reads")
    max_span_seconds: int = Field(3600, ge=1, description="portable mode: the widest enqueued-time range one run reads")
    read_timeout_seconds: float = Field(10.0, gt=0)


class LookupSettings(_Group):
    """The HTTP cache-aside lookups (Redis first, Cassandra on a miss)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_LOOKUP_")

    cache_ttl_seconds: int = Field(3600, ge=1)
    cache_ttl_jitter_seconds: int = Field(300, ge=0, description="a random 0..jitter added to each fill, so fills do not expire together")
    negative_ttl_seconds: int = Field(5, ge=1)
    cassandra_timeout_seconds: float = Field(2.0, gt=0)
    health_timeout_seconds: float = Field(1.0, gt=0)
    redis_retry_after_seconds: float = Field(5.0, ge=0, description="after a Redis error, serve from Cassandra for this long before trying Redis again")
    critical_default_limit: int = Field(20, ge=1)
    flight_wait_seconds: float = Field(5.0, gt=0, description="how long a request waits for another request's Cassandra read of the same key")


class KeyVaultSettings(_Group):
    """Key Vault holding the secrets named by ``*_SECRET`` settings."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_KEYVAULT_")

    url: str | None = None
    ca_file: Path | None = Field(None, description="CA bundle for a local emulator's HTTPS certificate")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (the SDK refuses tokens over plain http)")
        return value


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

    def as_dict(self) -> dict[str, Any]:
        """Every value, with secrets shown as ``**********`` (safe to log)."""
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _secrets_need_a_vault(self) -> Self:
        named = [
            name
            for name, value in (
                ("SLUICE_CASSANDRA_PASSWORD_SECRET", self.cassandra.password_secret),
                ("SLUICE_REDIS_PASSWORD_SECRET", self.redis.password_secret),
                ("SLUICE_POSTGRES_PASSWORD_SECRET", self.postgres.password_secret),
            )
            if value
        ]
        if named and not self.keyvault.url:
            raise ValueError(f"SLUICE_KEYVAULT_URL is required because {', '.join(named)} name Key Vault secrets")
        return self


GROUPS: dict[str, type[_Group]] = {name: field.annotation for name, field in Settings.model_fields.items()}  # type: ignore[misc]


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


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate every group; one :class:`ConfigurationError` lists every problem by variable name."""
    token = _environ.set(dict(environ) if environ is not None else dict(os.environ))
    try:
        groups: dict[str, Any] = {}
        problems: list[str] = []
        for name, group in GROUPS.items():
            try:
                groups[name] = group()
            except ValidationError as exc:
                problems.extend(_problems(group, exc))
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
