"""Reference data: files (CSV, Parquet) -> PostgreSQL tables and Parquet blobs on Azurite, through the CLI too."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from shared import bootstrap
from shared.adapters.postgres.migrations import apply_migrations
from shared.adapters.postgres.pool import ConnectionPool, make_pool
from shared.adapters.reference import (
    DEVICE_SCHEMA,
    SITE_SCHEMA,
    ParquetBlobReferenceSource,
    PostgresReferenceSource,
    read_devices,
    read_sites,
    to_parquet,
    upload_reference,
    upsert_reference,
)
from shared.domain.enrichment import DeviceRef, SiteRef
from shared.exceptions import PermanentError
from shared.settings import PostgresSettings
from sluice.__main__ import main
from sluice.commands.reference import SAMPLE_DEVICES, SAMPLE_SITES, load_sample_reference

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(pg_dsn: str, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    values = {
        "AzureWebJobsStorage": azurite_connection_string,
        "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SLUICE_POSTGRES_HOST": str(pg["host"]),
        "SLUICE_POSTGRES_PORT": str(pg.get("port", 5432)),
        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"]),
        "SLUICE_ENRICH_REFERENCE_CONTAINER": f"ref-{uuid.uuid4().hex[:12]}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
    yield {**values, "dsn": pg_dsn}
    bootstrap.reset()


def test_the_sample_data_loads_into_both_sources_identically(env: dict[str, str]) -> None:
    first = load_sample_reference("both")
    assert first["devices"] == 990 and first["sites"] == 12
    assert first["postgres"] == {"sites_changed": 12, "devices_changed": 990}  # upserted, nothing deleted
    again = load_sample_reference("both")  # idempotent: nothing changes
    assert again["postgres"] == {"sites_changed": 0, "devices_changed": 0}

    with make_pool(env["dsn"], PostgresSettings(host="unused")) as pool:
        from_tables = PostgresReferenceSource(pool).load()
    blobs = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    from_blobs = ParquetBlobReferenceSource(blobs, env["SLUICE_ENRICH_REFERENCE_CONTAINER"], "devices.parquet",
                                            "sites.parquet").load()
    from_files = (read_devices(SAMPLE_DEVICES), read_sites(SAMPLE_SITES))
    assert dict(from_tables.devices) == dict(from_blobs.devices) == {d.device_id: d for d in from_files[0]}
    assert dict(from_tables.sites) == dict(from_blobs.sites) == {s.site_id: s for s in from_files[1]}
    assert from_tables.devices["dev-00000"].installed_at.isoformat() == "2025-09-11T15:00:00+00:00"


def test_the_cli_loads_parquet_files_and_replace_deletes_what_is_gone(env: dict[str, str], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    devices = read_devices(SAMPLE_DEVICES)[:5]
    parquet = tmp_path / "devices.parquet"
    parquet.write_bytes(to_parquet(devices, DEVICE_SCHEMA))
    assert main(["reference", "load", "--devices", str(SAMPLE_DEVICES), "--sites", str(SAMPLE_SITES)]) == 0
    assert main(["reference", "load", "--devices", str(parquet), "--replace"]) == 0
    assert "devices_deleted=985" in capsys.readouterr().out
    with psycopg.connect(env["dsn"]) as conn:
        assert conn.execute("SELECT device_id FROM devices ORDER BY 1").fetchall() == [
            (d.device_id,) for d in devices]
        assert conn.execute("SELECT count(*) FROM sites").fetchone() == (12,)  # no --sites: sites untouched


def test_the_cli_uploads_parquet_blobs(env: dict[str, str]) -> None:
    assert main(["reference", "upload", "--devices", str(SAMPLE_DEVICES), "--sites", str(SAMPLE_SITES)]) == 0
    container = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_container_client(
        env["SLUICE_ENRICH_REFERENCE_CONTAINER"])
    assert sorted(b.name for b in container.list_blobs()) == ["devices.parquet", "sites.parquet"]
    assert read_devices(container.download_blob("devices.parquet").readall()) == read_devices(SAMPLE_DEVICES)


def test_upload_refuses_a_container_name_blob_storage_cannot_have(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``reference upload --container`` overrides SLUICE_ENRICH_REFERENCE_CONTAINER, which the settings hold to Blob
    storage's naming rule; the flag was not checked. ``Sluice_Reference`` went to storage, which answered 400
    InvalidResourceName, and the command said "error: Blob storage unavailable: ...": an argument typo reported as an
    outage. It is refused by the settings' rule, naming ``--container`` (exit 2); a valid name is used."""
    code = main(["reference", "upload", "--sites", str(SAMPLE_SITES), "--container", "Sluice_Reference"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --container 'Sluice_Reference' is no Blob container name"), err
    other = f"ref-{uuid.uuid4().hex[:12]}"
    assert main(["reference", "upload", "--sites", str(SAMPLE_SITES), "--container", other]) == 0
    container = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_container_client(other)
    assert [b.name for b in container.list_blobs()] == ["sites.parquet"]


def _counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()
        sites = conn.execute("SELECT count(*) FROM sites").fetchone()
    assert devices is not None and sites is not None
    return devices[0], sites[0]


def _header_only(source: Path, target: Path) -> Path:
    """``source``'s header line alone: what a truncated export looks like."""
    target.write_text(source.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    return target


@pytest.mark.parametrize("which", ["devices", "sites"])
def test_load_replace_with_a_file_of_no_rows_is_refused_naming_the_file(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """``reference load --replace`` deletes the rows missing from the file, so a file with no rows (the header
    only) would delete every device (or site) in PostgreSQL and leave every later window with unknown devices. It
    is refused with an error naming the file (exit 2) and nothing is deleted; ``--allow-empty`` is the opt-in."""
    assert main(["reference", "load", "--devices", str(SAMPLE_DEVICES), "--sites", str(SAMPLE_SITES)]) == 0
    assert _counts(env["dsn"]) == (990, 12)
    truncated = _header_only(SAMPLE_DEVICES if which == "devices" else SAMPLE_SITES, tmp_path / f"{which}.csv")
    capsys.readouterr()

    code = main(["reference", "load", f"--{which}", str(truncated), "--replace"])

    err = capsys.readouterr().err
    assert (code, _counts(env["dsn"])) == (2, (990, 12))
    assert str(truncated) in err and "--allow-empty" in err

    assert main(["reference", "load", f"--{which}", str(truncated), "--replace", "--allow-empty"]) == 0
    assert _counts(env["dsn"]) == ((0, 12) if which == "devices" else (990, 0))


def test_upload_of_a_file_of_no_rows_is_refused_and_the_blob_kept(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``reference upload`` overwrites the Parquet blob the enrichment reads (SLUICE_ENRICH_REFERENCE_SOURCE=
    parquet): it always replaces the whole set, so a file with no rows is refused naming the file (exit 2) and the
    blob keeps its devices; ``--allow-empty`` is the opt-in."""
    assert main(["reference", "upload", "--devices", str(SAMPLE_DEVICES)]) == 0
    truncated = _header_only(SAMPLE_DEVICES, tmp_path / "devices.csv")
    capsys.readouterr()

    code = main(["reference", "upload", "--devices", str(truncated)])

    container = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_container_client(
        env["SLUICE_ENRICH_REFERENCE_CONTAINER"])
    assert code == 2 and str(truncated) in capsys.readouterr().err
    assert len(read_devices(container.download_blob("devices.parquet").readall())) == 990
    assert main(["reference", "upload", "--devices", str(truncated), "--allow-empty"]) == 0
    assert read_devices(container.download_blob("devices.parquet").readall()) == []


def test_load_sample_keeps_an_operators_own_devices_unless_told_to_replace(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting reference rows is opt-in (``--replace``): ``reference load-sample`` upserts the sample beside the
    devices and sites already there; ``load-sample --replace`` deletes the ones not in the sample."""
    own = tmp_path / "devices.csv"
    own.write_text("device_id,site_id\nplant-7-pump-1,plant-7\n", encoding="utf-8")
    assert main(["reference", "load", "--devices", str(own)]) == 0

    capsys.readouterr()
    assert main(["reference", "load-sample", "--to", "postgres"]) == 0
    assert "deleted" not in capsys.readouterr().out
    assert _counts(env["dsn"]) == (991, 12)

    assert main(["reference", "load-sample", "--to", "postgres", "--replace"]) == 0
    assert "devices_deleted=1" in capsys.readouterr().out
    assert _counts(env["dsn"]) == (990, 12)


def test_a_missing_blob_is_a_clear_error(env: dict[str, str]) -> None:
    blobs = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    source = ParquetBlobReferenceSource(blobs, env["SLUICE_ENRICH_REFERENCE_CONTAINER"], "nope.parquet", "x.parquet")
    with pytest.raises(PermanentError, match=r"nope\.parquet does not exist"):
        source.load()


@pytest.mark.parametrize(("text", "message"), [
    ("site_id,name,timezone\ns1,One,Mars/Olympus\n", r"row 1 \(site_id 's1'\) is invalid: timezone: .*IANA"),
    # A folder of the tz database (ZoneInfo: IsADirectoryError, a traceback naming no row) or a file in it that is
    # no zone PostgreSQL takes alike (leap-second copies, the machine's own ``localtime``).
    *((f"site_id,name,timezone\ns1,One,{zone}\n", r"row 1 \(site_id 's1'\) is invalid: timezone: .*IANA")
      for zone in ("Europe", "Etc", "America/Argentina", "right/UTC", "posix", "localtime", "zone.tab")),
    ("site_id,name,latitude\ns1,One,91\n", r"row 1 .*latitude"),
    ("site_id,name\ns1,One\ns1,Again\n", r"site_id 's1' appears twice \(rows 1 and 2\)"),
    ("site_id,name,colour\ns1,One,red\n", r"unknown columns \['colour'\]"),
    ("name\nOne\n", r"required column 'site_id' is missing"),
    ("site_id,region\ns1,eu\n", r"row 1 .*name: Field required"),
])
def test_bad_site_files_name_the_offending_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sites.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PermanentError, match=message):
        read_sites(path)


def test_bad_device_files_fail_before_anything_is_written(env: dict[str, str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("device_id,installed_at\nok-1,2024-01-01T00:00:00Z\nbad id,2024-01-01T00:00:00Z\n",
                    encoding="utf-8")
    assert main(["reference", "load", "--devices", str(path), "--sites", str(SAMPLE_SITES)]) == 2
    assert "row 2 (device_id 'bad id') is invalid: device_id" in capsys.readouterr().err
    with psycopg.connect(env["dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM sites").fetchone() == (0,)
    with psycopg.connect(env["dsn"]) as conn:
        upsert_reference(conn, read_devices(SAMPLE_DEVICES)[:1], None)
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)


def _devices_in(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT device_id, model, installed_at FROM devices ORDER BY device_id").fetchall()


@pytest.mark.parametrize("value", ["20240115", "1700000000", "0", "2024-01-15", "2024-01-15T00:00:00"])
def test_a_csv_installed_at_that_is_not_rfc_3339_with_an_offset_is_refused_naming_the_row(
        env: dict[str, str], tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every CSV cell is read as text and pydantic converts it; its lax datetime parsing takes a string of
    digits as Unix seconds (``20240115`` loaded as 1970-08-23T06:15:15Z, ``0`` as 1970-01-01), a time without
    an offset as UTC and a bare date as midnight. docs/enrichment.md asks for RFC 3339 with an offset: anything
    else is a bad row, refused (exit 2) naming the row and the column, and nothing is written."""
    path = tmp_path / "devices.csv"
    path.write_text(f"device_id,model,installed_at\ndev-1,TX-100,{value}\n", encoding="utf-8")

    code = main(["reference", "load", "--devices", str(path)])

    assert (code, _devices_in(env["dsn"])) == (2, []), f"loaded as {_devices_in(env['dsn'])}"
    err = capsys.readouterr().err
    assert "row 1" in err and "installed_at" in err, err


def test_a_column_named_twice_is_refused_naming_the_file_and_the_column(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A header that names a column twice (``device_id,model,model``: two exports pasted together, a column
    renamed into another's name) is read by pyarrow as two columns of one name, and a row as a dict keeps the
    last: ``model`` loaded as ``PX-3`` for a row that also says ``TX-100``, exit 0. Which value is right cannot be
    known: refused (exit 2) before anything is written, naming the file and the column, as unknown and missing
    columns are."""
    path = tmp_path / "devices.csv"
    path.write_text("device_id,model,model\ndev-1,TX-100,PX-3\n", encoding="utf-8")

    code = main(["reference", "load", "--devices", str(path)])

    assert (code, _devices_in(env["dsn"])) == (2, []), f"loaded as {_devices_in(env['dsn'])}"
    err = capsys.readouterr().err
    assert str(path) in err and "['model']" in err, err


def test_reference_text_with_nul_in_a_blob_is_refused_naming_the_row(env: dict[str, str]) -> None:
    """Ingest refuses NUL in every text that reaches PostgreSQL; the reference rows did not. With the Parquet blob
    source the rows reach the enrichment without passing through PostgreSQL, so a site name holding U+0000 was
    COPYed into ``enriched_events.site_name`` and PostgreSQL rejected it (not transient): the same window failed
    at every run and the watermark never moved again. Refused where it is read, naming the blob and the row."""
    blobs = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    container = env["SLUICE_ENRICH_REFERENCE_CONTAINER"]
    upload_reference(blobs, container, devices=[DeviceRef("dev-1", "site-a", "M", "1")],  # written by another tool
                     sites=[SiteRef("site-a", "Alpha\x00plant", "eu-west", "Europe/Paris")])
    source = ParquetBlobReferenceSource(blobs, container, "devices.parquet", "sites.parquet")
    with pytest.raises(PermanentError, match=rf"blob {container}/sites\.parquet: row 1 \(site_id 'site-a'\) is "
                                             r"invalid: name: .*NUL"):
        source.load()


def test_csv_ids_stay_text_and_quoting_and_a_bom_are_understood(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_bytes(b'\xef\xbb\xbfsite_id,name,latitude,timezone\n007,"Plant, north",1.5,\n')
    (site,) = read_sites(path)
    assert (site.site_id, site.name, site.latitude, site.timezone) == ("007", "Plant, north", 1.5, None)


class _ReloadAfterDevices:
    """A pool whose connection lets another connection commit a reference reload right after the devices are read."""

    def __init__(self, pool: ConnectionPool, reload: Callable[[], None]) -> None:
        self._pool, self._reload = pool, reload

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        reload = self._reload

        class Connection:
            def __init__(self, conn: psycopg.Connection) -> None:
                self._conn = conn

            def transaction(self) -> Any:
                return self._conn.transaction()

            def execute(self, query: str, *args: Any) -> Any:
                rows = list(self._conn.execute(query, *args)) if query.lstrip().startswith("SELECT") else \
                    self._conn.execute(query, *args)
                if "FROM devices" in query:
                    reload()
                return rows

        with self._pool.connection() as conn:
            yield Connection(conn)


def test_devices_and_sites_are_read_from_one_snapshot(pg_dsn: str) -> None:
    # a `reference load --replace` moving every device to a new site, committed between the two reads: the run must
    # see the old devices with the old sites (or both new), never old devices with the new sites (NULL site columns)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        upsert_reference(conn, [DeviceRef("dev-1", "old", "M", "1")], [SiteRef("old", "Old site", "eu", "UTC")])

    def reload() -> None:
        with psycopg.connect(pg_dsn) as other:
            upsert_reference(other, [DeviceRef("dev-1", "new", "M", "1")], [SiteRef("new", "New site", "eu", "UTC")],
                             replace=True)

    with make_pool(pg_dsn, PostgresSettings(host="unused", pool_min_size=1, pool_max_size=1)) as pool:
        loaded = PostgresReferenceSource(_ReloadAfterDevices(pool, reload)).load()  # type: ignore[arg-type]
        assert (loaded.devices["dev-1"].site_id, sorted(loaded.sites)) == ("old", ["old"])
        assert PostgresReferenceSource(pool).load().devices["dev-1"].site_id == "new", "the reload committed"


def test_a_device_installed_at_before_year_1_in_utc_is_refused_naming_the_row(tmp_path: Path) -> None:
    """A devices file whose installed_at is a well-formed RFC 3339 time that lies before 0001-01-01 UTC
    (``0001-01-01T00:00:00+01:00``) made ``read_devices`` (``sluice reference load/upload``) crash with a bare
    ``OverflowError`` from the UTC validator, naming neither the file nor the row, where every other invalid cell is
    a ``PermanentError`` naming the file, the row and the column."""
    path = tmp_path / "devices.csv"
    path.write_text("device_id,installed_at\nd1,2024-01-15T00:00:00Z\nd2,0001-01-01T00:00:00+01:00\n")
    with pytest.raises(PermanentError, match=r"devices\.csv.*row 2.*installed_at"):
        read_devices(path)


def test_a_site_time_zone_that_is_a_tzdata_folder_is_refused_by_the_cli_and_in_a_blob(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``Europe`` (a folder of the tz database, a plausible typo for ``Europe/Paris``) escaped the validator as
    IsADirectoryError: ``reference upload`` died with a traceback (exit 1), and a sites blob holding it, written by
    another tool, failed every enrichment run without naming the blob or the row."""
    sites = tmp_path / "sites.csv"
    sites.write_text("site_id,name,timezone\nsite-1,Plant one,Europe\n", encoding="utf-8")
    assert main(["reference", "upload", "--sites", str(sites)]) == 2
    assert "row 1 (site_id 'site-1') is invalid: timezone" in capsys.readouterr().err

    blobs = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    container = blobs.get_container_client(env["SLUICE_ENRICH_REFERENCE_CONTAINER"])
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    container.upload_blob("devices.parquet", to_parquet([], DEVICE_SCHEMA), overwrite=True)
    container.upload_blob("sites.parquet", to_parquet([SiteRef("site-1", "Plant one", None, "Etc")], SITE_SCHEMA),
                          overwrite=True)
    source = ParquetBlobReferenceSource(blobs, container.container_name, "devices.parquet", "sites.parquet")
    with pytest.raises(PermanentError, match=r"sites\.parquet: row 1 \(site_id 'site-1'\) is invalid: timezone"):
        source.load()


def test_every_time_zone_a_site_may_have_is_one_postgresql_takes(pg_dsn: str) -> None:
    """The reporting views cut a site's days ``AT TIME ZONE sites.timezone``: a zone the files may name and
    PostgreSQL does not know would fail every report query, far from the row that holds it."""
    from shared.adapters.reference import _zones  # the set SiteRow validates against

    refused = []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for zone in sorted(_zones()):
            try:
                conn.execute("SELECT now() AT TIME ZONE %s", (zone,))
            except psycopg.errors.InvalidParameterValue:
                refused.append(zone)
    assert refused == []


def test_a_parquet_timestamp_past_year_9999_is_refused_naming_the_file_the_row_and_the_column(
        tmp_path: Path) -> None:
    """A Parquet ``installed_at`` past 9999 (another tool's file) made pyarrow's ``to_pylist`` raise a bare
    OverflowError for the whole table before any row was validated, naming no file, row or column."""
    table = pa.table({"device_id": ["dev-1", "dev-2"],
                      "installed_at": pa.array([0, 300_000_000_000_000], pa.timestamp("ms", tz="UTC"))})
    path = tmp_path / "devices.parquet"
    pq.write_table(table, path)
    message = r"row 2 \(device_id 'dev-2'\) is invalid: installed_at: .*outside the years 1-9999"
    with pytest.raises(PermanentError, match=r"devices\.parquet: " + message):
        read_devices(path)
    with pytest.raises(PermanentError, match=r"blob ref/devices\.parquet: " + message):
        read_devices(path.read_bytes(), "blob ref/devices.parquet")


def test_a_parquet_installed_at_in_nanoseconds_loads_as_the_csv_form_of_it_does(tmp_path: Path) -> None:
    """pandas and Spark write Parquet timestamps in nanoseconds. A 2023 ``installed_at`` with a sub-microsecond part
    was refused as "outside the years 1-9999", while the same time in a CSV file loads (cut to microseconds; before
    1970 too, towards the past)."""
    table = pa.table({
        "device_id": ["dev-1", "dev-2"],
        "installed_at": pa.array([1_700_000_000_123_456_789, -1], pa.timestamp("ns", tz="UTC")),
    })
    path = tmp_path / "devices.parquet"
    pq.write_table(table, path)
    csv = tmp_path / "devices.csv"
    csv.write_text("device_id,installed_at\ndev-1,2023-11-14T22:13:20.123456789Z\n"
                   "dev-2,1969-12-31T23:59:59.999999999Z\n")
    devices = read_devices(path.read_bytes(), "blob reference/devices.parquet")
    assert [d.installed_at for d in devices] == [datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC),
                                                 datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    assert read_devices(path) == devices == read_devices(csv)


def test_a_parquet_value_python_cannot_hold_for_another_reason_says_pyarrows_reason_not_the_years(
        tmp_path: Path) -> None:
    """Only a time outside the years 1-9999 is called one; anything else pyarrow cannot convert is named with its
    own reason, row and column."""
    table = pa.table({"device_id": ["dev-1"], "model": pa.array([[1]], pa.list_(pa.timestamp("ns")))})
    path = tmp_path / "devices.parquet"
    pq.write_table(table, path)
    with pytest.raises(PermanentError, match=r"row 1 \(device_id 'dev-1'\) is invalid: model: .* Python cannot hold "
                                             r"\(Nanosecond resolution") as caught:
        read_devices(path)
    assert "1-9999" not in str(caught.value)
