"""Reference data (devices and sites): files, PostgreSQL tables and Parquet in Blob storage.

* Files: :func:`read_devices` / :func:`read_sites` read CSV (header row, UTF-8) or
  Parquet (by extension) with pyarrow and validate every row with pydantic; a bad
  file raises ``PermanentError`` naming the file, the row and the column.
* PostgreSQL: :func:`upsert_reference` loads validated rows into ``devices`` and
  ``sites`` in one transaction (upsert by key; ``replace=True`` also deletes rows
  missing from the files); :class:`PostgresReferenceSource` reads them back.
* Blob storage (ADLS Gen2 in Azure, Azurite locally): :func:`upload_reference`
  writes both as Parquet; :class:`ParquetBlobReferenceSource` downloads and
  decodes them (once per enrichment run).

Both sources implement ``shared.ports.enrichment.ReferenceSource``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import zoneinfo
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from shared.domain.enrichment import DeviceRef, ReferenceData, SiteRef
from shared.domain.events import RFC3339, NoNul
from shared.exceptions import DependencyUnavailable, PermanentError

logger = logging.getLogger(__name__)

# Reference text reaches PostgreSQL (enriched rows, figures) whichever source the enrichment reads, so NUL, which
# PostgreSQL cannot store, is refused here naming the row, as ingest refuses it in events; an Id's pattern has no NUL.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256), *NoNul]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]


class DeviceRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Id
    site_id: Id | None = None
    model: Text | None = None
    firmware: Text | None = None
    owner: Text | None = None
    installed_at: datetime | None = None

    @field_validator("installed_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: object) -> object:
        # A CSV cell is text, and pydantic would read digits ("20240115") as Unix seconds (1970-08-23), a time
        # without an offset as UTC and a bare date as midnight: a CSV time is RFC 3339 with an offset, as an
        # event's timestamp. Parquet timestamps arrive as datetimes.
        if value is None or isinstance(value, datetime) or (isinstance(value, str) and RFC3339.match(value)):
            return value
        raise ValueError("must be an RFC 3339 time with a UTC offset (e.g. 2024-01-15T00:00:00Z), "
                         f"got {value!r}")

    @field_validator("installed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # Parquet timestamps without a zone are UTC by convention
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00:00+01:00: a ValueError, so the row and column are named
            raise ValueError(f"{value.isoformat()} is outside the years 1-9999 in UTC") from None

    def ref(self) -> DeviceRef:
        return DeviceRef(self.device_id, self.site_id, self.model, self.firmware, self.owner, self.installed_at)


@functools.cache
def _zones() -> frozenset[str]:
    """The zones of the tz database, as the reporting views' ``AT TIME ZONE`` takes them in PostgreSQL.

    Not whatever ``ZoneInfo`` opens: it also opens a folder of the database (``Europe``, ``America/Argentina``:
    IsADirectoryError), the ``posix/`` and ``right/`` copies (PostgreSQL refuses the leap-second ones) and
    ``localtime``, the zone of the machine that runs the command, which names no zone anywhere else."""
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


class SiteRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: Id
    name: Text
    region: Text | None = None
    timezone: Text | None = None
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str | None) -> str | None:
        if value is not None and value not in _zones():
            raise ValueError(f"{value!r} is not an IANA time zone (Area/Location, e.g. Europe/Paris)")
        return value

    def ref(self) -> SiteRef:
        return SiteRef(self.site_id, self.name, self.region, self.timezone, self.latitude, self.longitude)


DEVICE_SCHEMA = pa.schema([
    ("device_id", pa.string()), ("site_id", pa.string()), ("model", pa.string()), ("firmware", pa.string()),
    ("owner", pa.string()), ("installed_at", pa.timestamp("ms", tz="UTC")),
])
SITE_SCHEMA = pa.schema([
    ("site_id", pa.string()), ("name", pa.string()), ("region", pa.string()), ("timezone", pa.string()),
    ("latitude", pa.float64()), ("longitude", pa.float64()),
])

Row = TypeVar("Row", DeviceRow, SiteRow)


# --- files ---


def _table(source: Path | bytes, what: str, schema: pa.Schema) -> pa.Table:
    try:
        if isinstance(source, bytes) or source.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(io.BytesIO(source) if isinstance(source, bytes) else source)
        if source.suffix.lower() != ".csv":
            raise PermanentError(f"{what}: the file is neither .csv nor .parquet")
        # Known columns as text: pydantic converts, so "007" stays a string id and errors name the row.
        options = pacsv.ConvertOptions(column_types={name: pa.string() for name in schema.names},
                                       strings_can_be_null=True, null_values=[""])
        return pacsv.read_csv(source, convert_options=options)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{what}: cannot read it: {exc}") from exc


def _rows(table: pa.Table, model: type[Row], what: str, key: str) -> list[Row]:
    known = set(model.model_fields)
    names = table.column_names
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # a row would keep one of the values silently (the last): which one is meant cannot be known
        raise PermanentError(f"{what}: the header names the columns {twice} more than once")
    columns = set(names)
    if key not in columns:
        raise PermanentError(f"{what}: the required column {key!r} is missing (columns: {sorted(columns)})")
    unknown = sorted(columns - known)
    if unknown:
        raise PermanentError(f"{what}: unknown columns {unknown}; expected some of {sorted(known)}")
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, record in enumerate(_records(table, what, key), start=1):
        values: dict[str, Any] = {k: v for k, v in record.items() if v is not None}
        try:
            row = model.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors(include_url=False, include_input=False))
            raise PermanentError(f"{what}: row {number} ({key} {record.get(key)!r}) is invalid: {problems}") from None
        identifier = getattr(row, key)
        if identifier in seen:
            raise PermanentError(f"{what}: {key} {identifier!r} appears twice (rows {seen[identifier]} and {number})")
        seen[identifier] = number
        rows.append(row)
    return rows


def _records(table: pa.Table, what: str, key: str) -> list[dict[str, Any]]:
    """The table's rows as Python values. A value Python cannot hold (a timestamp past the year 9999, a date32 of
    millions of years, as another tool may write them) raises ``PermanentError`` naming its row and column; pyarrow
    alone raises a bare OverflowError for the whole table, before any row is validated."""
    columns: dict[str, list[Any]] = {}
    for name in table.column_names:
        column = _microseconds(table.column(name))
        try:
            columns[name] = column.to_pylist()
        except (OverflowError, ValueError):
            columns[name] = _column_values(table, column, name, what, key)
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def _microseconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column of nanosecond times (timestamps, as pandas and Spark write them; times of day; durations) in
    microseconds, the finest unit Python holds, the digits past the sixth cut as a CSV time's are (towards the
    past: 1969-12-31T23:59:59.999999999Z is 23:59:59.999999, not 1970); the time zone is kept. pyarrow would
    refuse to convert any value with a sub-microsecond part. Other columns are returned as they are."""
    kind = column.type
    target: pa.DataType
    if pa.types.is_timestamp(kind):
        target = pa.timestamp("us", kind.tz)
    elif pa.types.is_time64(kind):
        target = pa.time64("us")
    elif pa.types.is_duration(kind):
        target = pa.duration("us")
    else:
        return column
    if kind.unit != "ns":
        return column
    nanoseconds = pc.cast(column, pa.int64())
    truncated = pc.divide(nanoseconds, 1000)  # integer division: towards zero
    floored = pc.if_else(pc.greater(pc.multiply(truncated, 1000), nanoseconds), pc.subtract(truncated, 1), truncated)
    result: pa.ChunkedArray = pc.cast(floored, target)
    return result


def _outside_years(scalar: pa.Scalar) -> bool:
    """Whether a timestamp or date is outside the years 1-9999 (in UTC or in its own time zone)."""
    kind = scalar.type
    if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        return False
    values = [scalar]
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        values.append(pc.cast(scalar, pa.timestamp(kind.unit)))  # the UTC wall time
    try:
        return any(not 1 <= pc.year(value).as_py() <= 9999 for value in values)
    except pa.ArrowException:  # e.g. a time zone pyarrow does not know
        return False


def _column_values(table: pa.Table, column: pa.ChunkedArray, name: str, what: str, key: str) -> list[Any]:
    """One column converted value by value, to find the row that cannot be converted."""
    values: list[Any] = []
    for number, scalar in enumerate(column, start=1):
        try:
            values.append(scalar.as_py())
        except (OverflowError, ValueError) as exc:
            try:
                identifier = table.column(key)[number - 1].as_py()
            except (OverflowError, ValueError):
                identifier = None
            problem = (f"a {scalar.type} value outside the years 1-9999" if _outside_years(scalar)
                       else f"a {scalar.type} value Python cannot hold")
            raise PermanentError(f"{what}: row {number} ({key} {identifier!r}) is invalid: {name}: {problem} "
                                 f"({exc})") from None
    raise PermanentError(f"{what}: column {name!r} cannot be read as Python values")


def _named(source: Path | bytes, what: str | None, kind: str) -> str:
    """What errors call the source: ``what`` if given, else the file (``devices file x.csv``) or the kind."""
    return what or (f"{kind} file {source}" if isinstance(source, Path) else kind)


def read_devices(source: Path | bytes, what: str | None = None) -> list[DeviceRef]:
    """Validated devices from a CSV/Parquet file, or Parquet bytes; errors name ``what`` (default: the file)."""
    what = _named(source, what, "devices")
    return [row.ref() for row in _rows(_table(source, what, DEVICE_SCHEMA), DeviceRow, what, "device_id")]


def read_sites(source: Path | bytes, what: str | None = None) -> list[SiteRef]:
    """Validated sites from a CSV/Parquet file, or Parquet bytes; errors name ``what`` (default: the file)."""
    what = _named(source, what, "sites")
    return [row.ref() for row in _rows(_table(source, what, SITE_SCHEMA), SiteRow, what, "site_id")]


def to_parquet(rows: Sequence[DeviceRef] | Sequence[SiteRef], schema: pa.Schema) -> bytes:
    """Rows as a Parquet file (zstd)."""
    columns = {name: [getattr(row, name) for row in rows] for name in schema.names}
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


# --- PostgreSQL ---

_UPSERT_DEVICES = """
INSERT INTO devices (device_id, site_id, model, firmware, owner, installed_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET site_id = EXCLUDED.site_id, model = EXCLUDED.model,
    firmware = EXCLUDED.firmware, owner = EXCLUDED.owner, installed_at = EXCLUDED.installed_at, updated_at = now()
WHERE (devices.site_id, devices.model, devices.firmware, devices.owner, devices.installed_at)
      IS DISTINCT FROM (EXCLUDED.site_id, EXCLUDED.model, EXCLUDED.firmware, EXCLUDED.owner, EXCLUDED.installed_at)
"""
_UPSERT_SITES = """
INSERT INTO sites (site_id, name, region, timezone, latitude, longitude)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[])
ON CONFLICT (site_id) DO UPDATE SET name = EXCLUDED.name, region = EXCLUDED.region, timezone = EXCLUDED.timezone,
    latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, updated_at = now()
WHERE (sites.name, sites.region, sites.timezone, sites.latitude, sites.longitude)
      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.region, EXCLUDED.timezone, EXCLUDED.latitude, EXCLUDED.longitude)
"""


def _columns(rows: Iterable[Any], names: Sequence[str]) -> list[list[Any]]:
    rows = list(rows)
    return [[getattr(row, name) for row in rows] for name in names]


def upsert_reference(conn: psycopg.Connection, devices: Sequence[DeviceRef] | None, sites: Sequence[SiteRef] | None,
                     *, replace: bool = False) -> dict[str, int]:
    """Load devices and/or sites in one transaction; returns how many rows changed (upserted, deleted)."""
    counts: dict[str, int] = {}
    with conn.transaction():
        if sites is not None:
            cur = conn.execute(_UPSERT_SITES, _columns(sites, SITE_SCHEMA.names))
            counts["sites_changed"] = cur.rowcount
            if replace:
                cur = conn.execute("DELETE FROM sites WHERE NOT (site_id = ANY(%s))", ([s.site_id for s in sites],))
                counts["sites_deleted"] = cur.rowcount
        if devices is not None:
            cur = conn.execute(_UPSERT_DEVICES, _columns(devices, DEVICE_SCHEMA.names))
            counts["devices_changed"] = cur.rowcount
            if replace:
                cur = conn.execute("DELETE FROM devices WHERE NOT (device_id = ANY(%s))",
                                   ([d.device_id for d in devices],))
                counts["devices_deleted"] = cur.rowcount
    return counts


class PostgresReferenceSource:
    """Reads the ``devices`` and ``sites`` tables (one snapshot, one transaction)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def load(self) -> ReferenceData:
        try:
            with self._pool.connection() as conn, conn.transaction():
                # one snapshot for both reads: under READ COMMITTED each statement has its own, and a reference
                # load committing between them gave devices of one moment with sites of another
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                devices = [DeviceRef(*row) for row in conn.execute(
                    "SELECT device_id, site_id, model, firmware, owner, installed_at FROM devices")]
                sites = [SiteRef(*row) for row in conn.execute(
                    "SELECT site_id, name, region, timezone, latitude, longitude FROM sites")]
        except psycopg.OperationalError as exc:
            raise DependencyUnavailable("PostgreSQL", f"reading the reference data failed: {exc}") from exc
        logger.info("reference data from PostgreSQL: %d devices, %d sites", len(devices), len(sites))
        return ReferenceData.of(devices, sites)


# --- Blob storage (Parquet) ---


def upload_reference(blob_service: Any, container: str, *, devices: Sequence[DeviceRef] | None = None,
                     sites: Sequence[SiteRef] | None = None, devices_blob: str = "devices.parquet",
                     sites_blob: str = "sites.parquet") -> list[str]:
    """Write devices and/or sites as Parquet blobs (overwriting); creates the container if needed. Raises
    ``DependencyUnavailable`` naming the blob when storage is down or refuses the request."""
    from azure.core.exceptions import AzureError, ResourceExistsError

    from shared.adapters.blob_service import failure

    client = blob_service.get_container_client(container)
    written: list[str] = []
    try:
        with contextlib.suppress(ResourceExistsError):
            client.create_container()
        for rows, blob, schema in ((devices, devices_blob, DEVICE_SCHEMA), (sites, sites_blob, SITE_SCHEMA)):
            if rows is not None:
                client.upload_blob(blob, to_parquet(rows, schema), overwrite=True)
                written.append(f"{container}/{blob}")
    except AzureError as exc:
        done = f" ({', '.join(written)} written)" if written else ""
        raise DependencyUnavailable("Blob storage", f"uploading the reference data to {container}{done}: "
                                    f"{failure(exc)}") from exc
    return written


class ParquetBlobReferenceSource:
    """Downloads ``devices`` and ``sites`` Parquet blobs and decodes them (call :meth:`load` once per run)."""

    def __init__(self, blob_service: Any, container: str, devices_blob: str, sites_blob: str) -> None:
        self._blobs = blob_service
        self._container = container
        self._devices_blob = devices_blob
        self._sites_blob = sites_blob

    def _download(self, blob: str) -> bytes:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            data: bytes = self._blobs.get_blob_client(self._container, blob).download_blob().readall()
            return data
        except ResourceNotFoundError:
            raise PermanentError(
                f"reference blob {self._container}/{blob} does not exist; upload it with "
                "`python -m sluice reference upload`") from None
        except AzureError as exc:
            raise DependencyUnavailable("Blob storage", f"downloading {self._container}/{blob} failed: {exc}") from exc

    def load(self) -> ReferenceData:
        devices = read_devices(self._download(self._devices_blob), f"blob {self._container}/{self._devices_blob}")
        sites = read_sites(self._download(self._sites_blob), f"blob {self._container}/{self._sites_blob}")
        logger.info("reference data from Parquet blobs: %d devices, %d sites", len(devices), len(sites))
        return ReferenceData.of(devices, sites)
