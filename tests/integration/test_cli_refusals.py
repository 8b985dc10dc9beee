"""The operator CLI (``python -m sluice``) refuses what it cannot answer truthfully, with a message, never a
traceback: times in the future or out of range, counts below one, unreadable checkpoints, stores that are down,
a ScaledObject that is missing or incomplete. Each docstring says what went wrong before the refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from emulators.cassandra.faults import clear_faults, inject_faults
from shared import bootstrap
from shared.exceptions import ConfigurationError
from shared.ports.lag import LagReading, PartitionLag
from shared.services.audit import AuditService
from shared.settings import CassandraSettings
from sluice.__main__ import build_parser, main, schema_missing
from sluice.launcher import Running
from tests.fixtures.azurite import free_port
from tests.fixtures.eventhubs import IsolatedHub, eventhubs_connection_string

FUTURE = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- argument parsing: nonsense must be refused up front (argparse exits 2) -------------------------------------


def test_audit_since_in_the_future_is_refused() -> None:
    """``audit --since <future>``: no event is enqueued after it, so every partition's range is empty and the audit
    prints "missing 0: the zero-loss SLO holds" and exits 0, having audited nothing (sluice/commands/audit.py
    since_time accepts any time)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["audit", "--since", FUTURE])
    assert exited.value.code == 2


def test_audit_since_a_huge_age_is_an_argument_error_not_a_traceback() -> None:
    """``audit --since 99999999d``: ``now - timedelta`` raises OverflowError, which argparse does not turn into a
    usage error (it only catches ArgumentTypeError/TypeError/ValueError): the command dies with a traceback."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["audit", "--since", "99999999d"])
    assert exited.value.code == 2


def test_audit_since_without_a_utc_offset_is_refused_like_every_other_time_option(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``audit --since 2026-12-05T17:00:00`` (no ``Z``, no ``+hh:mm``) was taken as UTC, while every other time
    option (``rebuild --since``, ``enrich run --now``, ``backfill``, ``replay``) goes through
    ``sluice.arguments.parse_time``, which refuses it as ambiguous. An operator in UTC+1 typing the outage's start
    from a local clock audited from an hour later, and could be told "the zero-loss SLO holds" over a window that
    missed the first hour's gaps. The same refusal as the other commands; a bare date is still midnight UTC, and
    an age still counts back from now."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["audit", "--since", "2026-12-05T17:00:00"])
    assert exited.value.code == 2
    assert "'2026-12-05T17:00:00' has no UTC offset" in capsys.readouterr().err

    parse = build_parser().parse_args
    assert parse(["audit", "--since", "2026-12-05"]).since == datetime(2026, 12, 5, tzinfo=UTC)
    assert parse(["audit", "--since", "2026-12-05T17:00:00+01:00"]).since == datetime(2026, 12, 5, 16, tzinfo=UTC)
    before = datetime.now(UTC)
    assert before - timedelta(hours=2, seconds=5) < parse(["audit", "--since", "2h"]).since <= before


@pytest.mark.parametrize("size", ["0", "-5"])
def test_rebuild_page_size_must_be_positive(size: str) -> None:
    """``rebuild redis --page-size 0`` is accepted; the run then claims (with --restart: after dropping the build in
    progress) a generation and fails only at the first Cassandra read (``LIMIT 0`` is invalid)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["rebuild", "redis", "--page-size", size])
    assert exited.value.code == 2


@pytest.mark.parametrize("rate", ["nan", "inf", "1e999", "-1", "0"])
def test_rebuild_max_rps_that_is_no_finite_positive_number_is_refused(
        rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``rebuild redis --max-rps nan`` passed the command's own check (``value <= 0``: every comparison with nan is
    false), and the token bucket then never waited (its tokens were nan): the throttle meant to keep the rebuild
    from taking ingest's request units silently did nothing. ``inf`` is no rate either. Each is a usage error that
    names the option."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["rebuild", "redis", "--max-rps", rate])
    assert exited.value.code == 2
    assert "--max-rps" in capsys.readouterr().err


@pytest.mark.parametrize("options", [["--restart"], ["--page-size", "50"], ["--page-size", "200", "--restart"]])
def test_rebuild_devices_refuses_the_options_it_would_ignore(options: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``rebuild redis --devices`` rewrites those devices in the live generation: it has no pages and no saved
    position, so ``--page-size`` and ``--restart`` did nothing, silently. They are refused by name, before anything
    is read or written."""
    assert main(["rebuild", "redis", "--devices", "dev-1", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "with --devices" in err, err
    for option in options:
        if option.startswith("--"):
            assert option in err, err


@pytest.mark.parametrize("device", ["", "dev 1", "dev/1", "d" * 129])
def test_rebuild_devices_refuses_an_id_no_event_can_have_as_a_usage_error(
        device: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``rebuild redis --devices ""`` (an empty shell variable: ``--devices "$DEVICE"``) was accepted, sent to
    Cassandra as ``device_id = ''``, refused by the server ("Key may not be empty") and reported as "cassandra
    unavailable": the operator was sent to debug a store outage that was not there. An id no event can have (the
    event contract's and the HTTP API's: 1-128 of ``A-Z a-z 0-9 . _ : -``) is a usage error naming ``--devices``
    and the value, before anything is read or deleted."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["rebuild", "redis", "--devices", "dev-1", device])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --devices" in err and repr(device) in err and "unavailable" not in err, err


def test_rebuild_since_in_the_future_is_refused() -> None:
    """``rebuild redis --since <future>`` builds a generation with every critical list empty and switches the live
    cache to it: every device's critical list and the fleet stream vanish from Redis."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["rebuild", "redis", "--since", FUTURE])
    assert exited.value.code == 2


# --- the audit must not say "no loss" when it could not look -----------------------------------------------------


class EmptyLedger:
    def record(self, runs: object) -> None:
        raise AssertionError("not written by the audit")

    def accounted(self, partition: str, first: int, last: int) -> list[tuple[int, int]]:
        return []  # nothing was recorded: every checkpointed-past sequence number would be a gap


class UnreadableCheckpoints:
    """Partition 0 holds 100 events; its checkpoint blob exists but cannot be read (no ``sequencenumber``) or
    sits where the reader does not look: the lag reader then gives ``checkpoint_sequence_number=None`` and says
    why in ``scaler_error`` / ``warnings``."""

    def __init__(self, reading: LagReading) -> None:
        self.reading = reading

    def read(self) -> LagReading:
        return self.reading


@pytest.mark.parametrize("reading", [
    LagReading((PartitionLag("0", 0, 99, None, 100),),
               scaler_error="azure-webjobs-eventhub/ns/hub/cg/checkpoint/0 has no 'sequencenumber' metadata"),
    LagReading((PartitionLag("0", 0, 99, None, 100),),
               warnings=("checkpoints of hub 'hub' and consumer group 'cg' sit at other/ns/hub/cg/checkpoint/0 ...",)),
], ids=["checkpoint-unreadable", "checkpoints-misplaced"])
def test_an_audit_that_cannot_read_the_checkpoints_does_not_report_no_loss(reading: LagReading) -> None:
    """shared/services/audit.py AuditService.audit treats ``checkpoint is None`` as "nothing checkpointed past yet"
    and ignores the reading's ``scaler_error``/``warnings``: the partition is skipped and the CLI prints
    "missing 0: the zero-loss SLO holds" (exit 0) though nothing was audited and the ledger is empty."""
    service = AuditService(EmptyLedger(), UnreadableCheckpoints(reading))
    with pytest.raises(ConfigurationError, match="the checkpoints cannot be read as the Functions host writes them"):
        service.audit(from_sequence=0)


# --- a missing dependency or file must be a clear error (exit 2), never a traceback ---------------------------------


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch):
    """Settings whose PostgreSQL and Cassandra are not there (closed port 1)."""
    values = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SLUICE_CASSANDRA_HOSTS": "127.0.0.1", "SLUICE_CASSANDRA_PORT": "1",
        "SLUICE_CASSANDRA_CONNECT_TIMEOUT_SECONDS": "1",
        "SLUICE_POSTGRES_HOST": "127.0.0.1", "SLUICE_POSTGRES_PORT": "1",
        "SLUICE_POSTGRES_POOL_TIMEOUT_SECONDS": "1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield
    bootstrap.reset()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [
    ["migrate", "postgres"],
    ["migrate", "cassandra"],
    ["reference", "load", "--sites", str(Path(__file__).resolve().parents[2] / "sluice/sample_data/sites.csv")],
    ["backfill", "--start", "2026-01-01", "--end", "2026-01-02", "--no-progress"],
], ids=["migrate-postgres", "migrate-cassandra", "reference-load", "backfill"])
def test_a_database_that_is_down_is_a_clear_error_not_a_traceback(
    unreachable: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """bootstrap.postgres_pool().connection() raises psycopg_pool.PoolTimeout and bootstrap.cassandra_session()
    raises cassandra.cluster.NoHostAvailable; neither is a SluiceError, so sluice/__main__.py main() lets them out
    as a traceback (exit 1) instead of "error: PostgreSQL unavailable: ..." (exit 2)."""
    code = main(argv)
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")


AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFsNL/="
SAMPLE = Path(__file__).resolve().parents[2] / "sluice/sample_data"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [
    ["deadletter", "list"],
    ["deadletter", "replay"],
    ["reference", "upload", "--devices", str(SAMPLE / "devices.csv"), "--sites", str(SAMPLE / "sites.csv")],
], ids=["deadletter-list", "deadletter-replay", "reference-upload"])
@pytest.mark.parametrize("storage", ["down", "rotated-key"])
def test_blob_storage_down_or_refusing_is_a_clear_error_within_seconds(
        storage: str, argv: list[str], azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The Blob-using commands let the storage SDK's own errors out: with Blob storage down (the runbook's "could
    not write dead letter" row sends the operator to ``deadletter`` exactly then) ``deadletter list`` retried for
    about 80 s and died with a ServiceRequestError traceback, exit 1, which is also what ``deadletter`` exits with
    for "some letters unreadable"; with a rotated account key, at once with an HttpResponseError (403) traceback.
    Now: "error: Blob storage unavailable: ..." naming what failed (refused, with the status, or not answered),
    exit 2 like any other dependency, after a few short retries."""
    import time

    if storage == "down":
        connection = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + AZURITE_KEY
                      + ";BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;")
    else:  # Azurite is up, the key is not the account's (rotated)
        endpoint = next(p.split("=", 1)[1] for p in azurite_connection_string.split(";")
                        if p.startswith("BlobEndpoint="))
        connection = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
                      + "A" * 86 + "==;BlobEndpoint=" + endpoint + ";")
    for name, value in {"AzureWebJobsStorage": connection, "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1",
                        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}"}.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    try:
        started = time.monotonic()
        code = main(argv)
        waited = time.monotonic() - started
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: Blob storage unavailable: "), err
        assert len(err.strip().splitlines()) == 1, err
        if storage == "rotated-key":
            assert "refused (403 AuthorizationFailure)" in err, err
        assert waited < 30, f"an operator waited {waited:.0f} s for: {err}"
    finally:
        bootstrap.reset()


SECRET_KEY = "c2VjcmV0LWtleS1mb3ItdGhlLXJldmlldw=="


@pytest.fixture
def cli_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Sets the app's settings (Cassandra on a closed port, the local Redis, PostgreSQL and Azurite) with
    ``overrides``, for ``main`` in this process."""
    def apply(**overrides: str) -> None:
        values = {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true", "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "SLUICE_CASSANDRA_HOSTS": "127.0.0.1", "SLUICE_CASSANDRA_PORT": str(free_port()),
            "SLUICE_POSTGRES_HOST": "127.0.0.1", "SLUICE_INGEST_EVENTHUB_NAME": "hub", **overrides,
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        bootstrap.reset()

    yield apply
    bootstrap.reset()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [["deadletter", "list"], ["reference", "load-sample", "--to", "blob"]],
                         ids=["deadletter-list", "reference-load-sample"])
def test_a_malformed_storage_connection_string_is_an_error_line_not_a_traceback(
        cli_settings: Callable[..., None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A storage connection string with a typo (no endpoint, no account name): the storage SDK's ValueError
    ("Connection string is either blank or malformed.") from ``BlobServiceClient.from_connection_string`` was no
    SluiceError, so the command died with a traceback and exit 1, which ``deadletter list`` documents as "some
    letters are unreadable". Now a configuration error naming the setting, exit 2, without the account key."""
    cli_settings(AzureWebJobsStorage=f"AccountKey={SECRET_KEY};BlobEndpoint")
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("error: AzureWebJobsStorage is not a valid storage connection string: "
                                   "Connection string is either blank or malformed."), captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert SECRET_KEY not in captured.err + captured.out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [["audit", "--from-sequence", "0"], ["lag"]], ids=["audit", "lag"])
def test_event_hubs_unreachable_is_said_on_one_error_line(
        cli_settings: Callable[..., None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """With the Event Hubs namespace unreachable, ``audit`` and ``lag`` printed the AMQP error's whole text:
    ``error: eventhubs unavailable: ... ConnectError: ...`` followed by ``Error condition: ...`` and ``Error
    Description: ...`` lines (a SluiceError's message was printed whole, where a driver's error kept only its first
    line). Now one line, naming Event Hubs as people do; exit 2."""
    cli_settings(EventHubConnection=(
        f"Endpoint=sb://127.0.0.1:{free_port()};SharedAccessKeyName=RootManageSharedAccessKey;"
        f"SharedAccessKey={SECRET_KEY};UseDevelopmentEmulator=true"))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("error: Event Hubs unavailable: "), captured.err
    assert SECRET_KEY not in captured.err + captured.out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [["reference", "load-sample", "--to", "postgres"], ["enrich", "status"],
                                  ["enrich", "unknown-devices"]],
                         ids=["reference-load-sample", "enrich-status", "enrich-unknown-devices"])
def test_a_postgres_database_without_the_schema_is_an_error_line_not_a_traceback(
        cli_settings: Callable[..., None], pg_dsn: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A database the migrations have not run on (a new server, a wrong ``SLUICE_POSTGRES_DBNAME``): psycopg's
    ``UndefinedTable`` (a ProgrammingError) was neither a SluiceError nor the OperationalError ``main`` maps, so
    the command died with a traceback and exit 1. Now one ``error:`` line pointing at ``migrate postgres``, exit 2."""
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    cli_settings(SLUICE_POSTGRES_HOST=str(pg["host"]), SLUICE_POSTGRES_PORT=str(pg.get("port", 5432)),
                 SLUICE_POSTGRES_DBNAME=str(pg["dbname"]), SLUICE_POSTGRES_USER=str(pg.get("user", "postgres")))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: PostgreSQL schema missing (relation "), err
    assert err.strip().endswith("does not exist): run python -m sluice migrate postgres"), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.timeout(60)
def test_a_cassandra_keyspace_without_the_schema_is_an_error_line_not_a_traceback(
        cli_settings: Callable[..., None], cassandra_emulator: Running, capsys: pytest.CaptureFixture[str]) -> None:
    """A keyspace the migrations have not run on (a wrong ``SLUICE_CASSANDRA_KEYSPACE``): the adapter wraps the
    driver's ``InvalidRequest`` ("Keyspace ... does not exist") as ``cassandra unavailable: reading device 'd1'
    failed: ...``, which sends the operator after a Cassandra that is up. Now the line says what is missing and
    points at ``migrate cassandra``, exit 2."""
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    cli_settings(SLUICE_CASSANDRA_HOSTS=cassandra_emulator.host, SLUICE_CASSANDRA_PORT=str(cassandra_emulator.port),
                 SLUICE_CASSANDRA_KEYSPACE=keyspace)
    code = main(["rebuild", "redis", "--devices", "d1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip() == (f"error: Cassandra schema missing (Keyspace {keyspace} does not exist): "
                           f"run python -m sluice migrate cassandra"), err


@pytest.mark.timeout(60)
def test_a_cassandra_column_the_migrations_add_is_reported_as_schema_missing(cassandra_emulator: Running,
                                                                             cassandra_keyspace: str) -> None:
    """Cassandra migration 4 adds a column (``feed_state.noted_until``); a keyspace one migration behind answers
    "Undefined column name ...", which matched none of ``_CASSANDRA_MISSING``'s words: it was reported as
    "cassandra unavailable" or a traceback, not as "run migrate cassandra"."""
    from cassandra.protocol import InvalidRequest

    from shared.adapters.cassandra.session import build_cluster

    cluster = build_cluster(CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port,
                                              keyspace=cassandra_keyspace))
    try:
        session = cluster.connect()
        session.execute(f"CREATE TABLE {cassandra_keyspace}.feed_state (name text PRIMARY KEY, watermark timestamp)")
        with pytest.raises(InvalidRequest) as raised:
            session.execute(f"SELECT noted_until FROM {cassandra_keyspace}.feed_state")
    finally:
        cluster.shutdown()
    said = schema_missing(raised.value)
    assert said is not None, str(raised.value)
    assert said.endswith("run python -m sluice migrate cassandra"), said


@pytest.mark.parametrize(("message", "missing"), [
    ("Keyspace ks does not exist", True), ("Keyspace 'ks' does not exist", True), ("Keyspace ks doesn't exist", True),
    ("unconfigured table feed_state", True), ("table feed_state does not exist", True),
    ("Undefined column name noted_until in table ks.feed_state", True), ("Resource Not Found", True),
    ("Partition key value not found in the statement", False), ("Batch too large", False)])
def test_only_a_missing_keyspace_table_or_column_is_reported_as_cassandra_schema_missing(message: str,
                                                                                        missing: bool) -> None:
    """Was: any InvalidRequest with "not found" in it was reported as a missing schema ("run migrate cassandra")."""
    from cassandra.protocol import InvalidRequest

    said = schema_missing(InvalidRequest(f'Error from server: code=2200 [Invalid query] message="{message}"'))
    assert (said == f"Cassandra schema missing ({message}): run python -m sluice migrate cassandra"
            if missing else said is None), said


def test_doctor_keda_with_a_missing_scaled_object_file_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    """sluice/commands/doctor.py run(): ``Path(args.scaled_object).read_text()`` raises FileNotFoundError, a
    traceback instead of a ConfigurationError naming the file."""
    code = main(["doctor", "keda", "--scaled-object", "/nonexistent/ingest.yaml"])
    assert code == 2
    assert "/nonexistent/ingest.yaml" in capsys.readouterr().err


def test_doctor_keda_with_a_trigger_without_event_hub_name_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sluice/commands/doctor.py run(): ``meta["eventHubName"]`` raises KeyError on a trigger that lacks it."""
    manifest = tmp_path / "so.json"
    manifest.write_text(json.dumps({"kind": "ScaledObject", "metadata": {"name": "ingest"}, "spec": {"triggers": [
        {"type": "azure-eventhub", "metadata": {"eventHubNamespace": "ns", "blobContainer": "c"}}]}}))
    code = main(["doctor", "keda", "--scaled-object", str(manifest)])
    assert code == 2
    assert "eventHubName" in capsys.readouterr().err


def test_enrich_unknown_devices_negative_limit_is_refused(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``enrich unknown-devices --limit -1`` is accepted and sent to PostgreSQL as ``LIMIT -1``, which fails with
    psycopg.errors.InvalidRowCountInLimitClause: a traceback instead of a usage error."""
    from shared.adapters.postgres.migrations import apply_migrations

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    for name, value in {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": str(pg["host"]),
                        "SLUICE_POSTGRES_PORT": str(pg.get("port", 5432)),
                        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"])}.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    try:
        try:
            code = main(["enrich", "unknown-devices", "--limit", "-1"])
        except SystemExit as exited:
            code = exited.code
        assert code == 2
    finally:
        bootstrap.reset()


# --- options the command would ignore, or that a child process would refuse only later ------------------------------


@pytest.mark.parametrize("option", ["--threshold", "--max-replicas"])
def test_doctor_keda_refuses_a_zero_override(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An override is used or refused, never replaced by the ScaledObject's own value: ``--threshold 0`` divides
    the lag by zero and ``--max-replicas 0`` is below the HPA's least maximum (1), so both are usage errors naming
    the option, before anything is read. (Taken as "not given", 0 made the doctor print replicas computed with the
    file's numbers.)"""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["doctor", "keda", option, "0"])
    assert exited.value.code == 2
    assert option in capsys.readouterr().err


def test_lag_with_a_missing_scaled_object_names_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A file argument that cannot be read is an error naming it (exit 2), as ``doctor keda`` does for the same
    option; never a FileNotFoundError traceback."""
    code = main(["lag", "--scaled-object", "/nonexistent/ingest.yaml"])
    assert code == 2
    assert "/nonexistent/ingest.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["doctor", "keda"], ["lag"]], ids=["doctor-keda", "lag"])
def test_a_scaled_object_that_is_neither_json_nor_yaml_names_the_file(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--scaled-object F`` takes "YAML or JSON"; a file that is neither (a Helm template with ``{{ }}``, a
    half-pasted manifest) fell from ``json.loads`` to ``yaml.safe_load_all``, whose YAMLError was not caught: a
    traceback, exit 1, where every other bad ScaledObject is an ``error: <file>: ...`` line and exit 2."""
    path = tmp_path / "so.yaml"
    path.write_text("kind: ScaledObject\nspec: {triggers: [\n", encoding="utf-8")
    code = main([*command, "--scaled-object", str(path)])
    assert code == 2
    assert f"error: {path}: neither JSON nor valid YAML" in capsys.readouterr().err


def test_lag_with_bad_ingest_settings_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lag`` reads SLUICE_INGEST_*: a bad value is an error naming the variable (exit 2), as the other commands
    report their settings, not a pydantic ValidationError traceback."""
    monkeypatch.setenv("SLUICE_INGEST_MAX_BODY_BYTES", "1")
    code = main(["lag"])
    assert code == 2
    assert "SLUICE_INGEST_MAX_BODY_BYTES" in capsys.readouterr().err


def test_enrich_run_now_in_the_future_is_refused() -> None:
    """``enrich run --now T`` is refused for a T after now, as ``rebuild --since`` and ``audit --since`` are
    (sluice/arguments.py past_time): the run would move the watermark and the late-scan position past real time,
    and an event arriving now in one of those windows would be neither scheduled nor late: never enriched."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["enrich", "run", "--now", FUTURE])
    assert exited.value.code == 2


@pytest.mark.parametrize("now", ["0001-01-01T00:30:00Z", "0001-02-07T23:59:59Z"])
def test_enrich_run_now_too_early_to_look_back_from_is_a_usage_error_naming_it(
        now: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``enrich run --now T`` is refused as a usage error naming T when a run cannot look back from it (its late
    horizon, allowed lateness and window, at their largest, would pass 0001-01-01): with year 1 the run computed
    ``now - initial_lookback`` and died with an OverflowError traceback, exit 1."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["enrich", "run", "--now", now])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert now in err and "too early" in err, err
    assert build_parser().parse_args(["enrich", "run", "--now", "0001-02-08T00:00:00Z"]).now.year == 1


@pytest.mark.parametrize("argv", [
    ["--rate", "0"], ["--rate", "-5"], ["--rate", "nan"], ["--rate", "inf"], ["--devices", "0"],
    ["--invalid-ratio", "2"], ["--critical-ratio", "-0.1"], ["--duration", "0"], ["--duration", "-1"],
], ids=["rate-0", "rate-negative", "rate-nan", "rate-inf", "devices-0", "ratio-above-1", "ratio-negative",
        "duration-0", "duration-negative"])
def test_up_refuses_a_load_the_load_generator_would_refuse(argv: list[str]) -> None:
    """``up`` passes its load options to ``produce`` (a child process, whose LoadSpec refuses them): it refuses them
    up front (argparse, exit 2), before starting a whole stack whose producer would die at once into produce.log
    while the live table showed "events sent 0". ``--duration`` is a bounded run's length: without it, ``up`` runs
    until Ctrl-C; 0 is no length."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["up", *argv])
    assert exited.value.code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
def test_up_drain_timeout_that_is_no_finite_positive_number_is_refused(value: str) -> None:
    """``up --drain-timeout`` was a bare float: ``nan`` made the bounded run's deadline (``time.monotonic() + nan``)
    never pass, so a run whose delivery never checked out waited forever; a negative one gave up before the first
    delivery check. A usage error (exit 2), like every other duration option."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["up", "--duration", "10", "--drain-timeout", value])
    assert exited.value.code == 2


@pytest.mark.parametrize("option", ["--http-port", "--eventhubs-port", "--cassandra-port", "--azurite-port",
                                    "--keyvault-port"])
def test_up_refuses_a_port_outside_0_to_65535(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``up --http-port 70000`` (and the other ports) was accepted, then ``port_free``'s ``socket.bind`` raised
    ``OverflowError`` (not the ``OSError`` it handles): a traceback after the stack began starting. Refused up front
    (exit 2) naming the value; 0 (pick a free port) is a port."""
    from sluice.localstack import port_free

    with pytest.raises(OverflowError):  # what the accepted value led to
        port_free("127.0.0.1", 70000)
    for value in ("70000", "-1"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["up", option, value])
        assert exited.value.code == 2
        assert f"{value!r}" in capsys.readouterr().err
    assert getattr(build_parser().parse_args(["up", option, "0"]), option[2:].replace("-", "_")) == 0


def test_up_refuses_ratios_that_add_up_past_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Duplicates and invalid events are shares of the same sends, so together they cannot exceed 1 (LoadSpec):
    refused before the stack starts (exit 2)."""
    code = main(["up", "--duplicate-ratio", "0.6", "--invalid-ratio", "0.6"])
    assert code == 2
    assert "--duplicate-ratio + --invalid-ratio" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--rate", "nan"], ["--rate", "inf"], ["--rate", "0"], ["--devices", "0"],
                                  ["--duration", "-1"], ["--duration", "nan"], ["--count", "-1"],
                                  ["--invalid-ratio", "nan"]])
def test_produce_refuses_a_rate_or_share_that_is_no_number(argv: list[str]) -> None:
    """``produce --rate nan`` passed LoadSpec's ``rate <= 0`` check (every comparison with nan is false) and paced
    nothing; ``inf`` is no pace either. Every load option is a usage error when it is not a finite number in range."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["produce", *argv])
    assert exited.value.code == 2


def test_produce_refuses_a_hub_other_than_the_connections_entity_path(
    isolated_eventhub: IsolatedHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """``produce --hub H`` sends to H: with a connection string whose ``EntityPath`` names another hub (often a key
    scoped to that hub alone) it refuses, naming both (exit 2), and sends nothing. (It used to drop ``--hub``, send
    every event to the EntityPath hub and print "sent to H".)"""
    connection = eventhubs_connection_string(isolated_eventhub.running, isolated_eventhub.name)  # ;EntityPath=<hub>
    other = f"other-{uuid.uuid4().hex[:6]}"

    code = main(["produce", "--connection", connection, "--hub", other, "--count", "20", "--rate", "200",
                 "--progress", "none", "--seed", "1"])

    err = capsys.readouterr().err
    assert code == 2 and other in err and isolated_eventhub.name in err
    assert nothing_enqueued(isolated_eventhub)


def nothing_enqueued(hub: IsolatedHub) -> bool:
    """No partition of ``hub`` holds an event."""
    from azure.eventhub import EventHubConsumerClient

    with EventHubConsumerClient.from_connection_string(hub.connection_string, consumer_group="$Default",
                                                       eventhub_name=hub.name) as client:
        enqueued = [client.get_partition_properties(p)["last_enqueued_sequence_number"]
                    for p in client.get_partition_ids()]
    return enqueued == [-1] * len(enqueued)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [
    ["--device-prefix", "site 1/"],
    ["--device-prefix", "d" * 123, "--devices", "100001"],  # d...d00000 is 128 characters, d...d100000 is 129
], ids=["characters", "length-of-the-last-id"])
def test_produce_refuses_a_device_prefix_no_valid_event_can_carry(
        argv: list[str], isolated_eventhub: IsolatedHub, capsys: pytest.CaptureFixture[str]) -> None:
    """Device ids are ``<--device-prefix><5 digits>`` (6 from the 100,001st device on), and the event contract takes
    1-128 of ``A-Z a-z 0-9 . _ : -``. The prefix was not checked: the run connected to the hub, then died in the
    generator's contract check of its first event (sluice/loadgen.py) with a pydantic ValidationError traceback,
    not an error naming ``--device-prefix``. Refused up front (exit 2), nothing sent."""
    connection = eventhubs_connection_string(isolated_eventhub.running, isolated_eventhub.name)
    code = main(["produce", "--connection", connection, "--count", "3", "--progress", "json",
                 "--invalid-ratio", "0", "--duplicate-ratio", "0", *argv])
    assert code == 2
    assert "error: --device-prefix" in capsys.readouterr().err
    assert nothing_enqueued(isolated_eventhub)


@pytest.mark.timeout(60)
def test_produce_manifest_in_a_missing_directory_is_a_message_not_a_traceback(
        isolated_eventhub: IsolatedHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``produce --manifest DIR/m.jsonl`` with ``DIR`` missing (a typo; ``up`` always creates its manifests/
    directory, an operator's run does not): the manifest was opened with a bare ``open()`` after the hub was
    connected, and the FileNotFoundError, neither a SluiceError nor a store that is down, escaped ``main``: a
    traceback instead of an error naming ``--manifest``. Now refused before connecting (exit 2), nothing sent."""
    connection = eventhubs_connection_string(isolated_eventhub.running, isolated_eventhub.name)
    missing = tmp_path / "no-such-dir" / "m.jsonl"
    code = main(["produce", "--connection", connection, "--count", "1", "--progress", "none",
                 "--manifest", str(missing)])
    assert code == 2
    assert f"error: cannot write --manifest {missing}" in capsys.readouterr().err
    assert nothing_enqueued(isolated_eventhub)


def test_produce_settings_that_is_not_a_readable_file_is_a_message_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``produce --settings .local/stack`` (the data directory instead of its ``local.settings.json``):
    ``_settings_values`` caught only ValueError and AttributeError around ``read_text``, so the IsADirectoryError
    (or a PermissionError) escaped ``main`` as a traceback, not an error naming the file."""
    monkeypatch.delenv("EventHubConnection", raising=False)
    code = main(["produce", "--settings", str(tmp_path), "--count", "1", "--progress", "none"])
    assert code == 2
    assert f"error: cannot read --settings {tmp_path}" in capsys.readouterr().err


# --- a range no run could finish: refused at once, naming the value (a child process, bounded, in case it is not) --


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cassandra_session(cassandra_emulator: Running) -> Iterator[object]:
    from shared.adapters.cassandra.session import connect

    session = connect(CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port))
    yield session
    session.cluster.shutdown()


@pytest.fixture
def cli_environment(cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, redis_prefix: str,
                    cassandra_session: object) -> dict[str, str]:
    """The environment of ``python -m sluice`` on a migrated keyspace and database (nothing enriched yet)."""
    return _migrated_environment(cassandra_session, cassandra_emulator, cassandra_keyspace, pg_dsn, redis_prefix)


def _migrated_environment(session: object, cassandra: Running, keyspace: str, pg_dsn: str,
                          redis_prefix: str) -> dict[str, str]:
    from shared.adapters.cassandra.migrations import apply_migrations as apply_cassandra
    from shared.adapters.postgres.migrations import apply_migrations as apply_postgres

    # migrated with the layout the commands run with (SLUICE_CASSANDRA_SHARDS=1): bootstrap refuses another one
    apply_cassandra(session, CassandraSettings(hosts=[cassandra.host], port=cassandra.port, keyspace=keyspace,
                                               shards=1))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_postgres(conn)
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "AzureWebJobs"))}
    env.update({
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "SLUICE_CASSANDRA_HOSTS": cassandra.host, "SLUICE_CASSANDRA_PORT": str(cassandra.port),
        "SLUICE_CASSANDRA_KEYSPACE": keyspace, "SLUICE_CASSANDRA_SHARDS": "1",
        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_REDIS_KEY_PREFIX": redis_prefix,
        "SLUICE_POSTGRES_HOST": str(pg["host"]), "SLUICE_POSTGRES_PORT": str(pg.get("port", 5432)),
        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"]), "SLUICE_POSTGRES_USER": str(pg.get("user", "postgres")),
    })
    return env


def _limited(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        import resource
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def _sluice(env: dict[str, str], argv: list[str]) -> tuple[int | None, str]:
    """``python -m sluice argv`` in a child process with 2 GB of address space and 25 s: its exit status (None when
    it was still running, then killed) and its stderr."""
    child = subprocess.Popen([sys.executable, "-m", "sluice", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_limited(2 << 30))
    try:
        child.wait(timeout=25)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, 9)
        child.communicate()
        return None, ""
    return child.returncode, child.communicate()[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("argv", [
    ["backfill", "--start", "2026-12-01T00:00:00Z", "--end", "9999-12-31T00:00:00Z", "--no-progress"],
    ["replay", "--from", "2026-12-01T00:00:00Z", "--to", "9999-12-31T00:00:00Z", "--no-progress"],
], ids=["backfill", "replay"])
def test_a_range_ending_in_year_9999_is_refused_at_once_naming_it(cli_environment: dict[str, str],
                                                                  argv: list[str]) -> None:
    """``--end 9999-12-31`` ("everything from then on") is refused before anything is read, exit 2, naming the
    value and now: no window after now plus the events' largest future skew and one window can hold an event.
    (Taken as is, ``backfill`` built the list of some 840 million windows until memory ran out, and ``replay``
    walked the log five minutes at a time for millennia.) The same command over one hour runs, exit 0."""
    one_hour = [a.replace("9999-12-31T00:00:00Z", "2026-12-01T01:00:00Z") for a in argv]
    assert _sluice(cli_environment, one_hour)[0] == 0, "the control (one hour) failed: the environment"
    code, err = _sluice(cli_environment, argv)
    assert code == 2 and "9999-12-31" in err and "after now" in err, f"exit {code}; stderr: {err.strip()[-400:]}"
    assert "Traceback" not in err


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["backfill", "replay"])
def test_a_range_of_more_windows_than_max_windows_is_refused_and_one_at_the_bound_runs(
        cli_environment: dict[str, str], command: str) -> None:
    """A range of more windows than ``--max-windows`` (default: 366 days' worth of the window width) is refused,
    exit 2, with the count and the option that raises the bound: a start year typed 0026 for 2026 would otherwise
    plan or walk two thousand years. A range of exactly ``--max-windows`` windows runs."""
    start, end = ("--start", "--end") if command == "backfill" else ("--from", "--to")
    hour = [command, start, "2026-12-01T00:00:00Z", end, "2026-12-01T01:00:00Z", "--no-progress"]  # 12 windows
    assert _sluice(cli_environment, [*hour, "--max-windows", "12"])[0] == 0
    code, err = _sluice(cli_environment, [*hour, "--max-windows", "11"])
    assert code == 2 and "covers 12 windows of 300 s, more than --max-windows 11" in err, err
    code, err = _sluice(cli_environment, [command, start, "0026-12-01T00:00:00Z", end, "2026-12-01T00:00:00Z",
                                          "--no-progress"])
    assert code == 2 and "0026-12-01" in err and "more than --max-windows 105,408" in err, err


@pytest.fixture
def throttled_env(private_cassandra: Running, pg_dsn: str, redis_prefix: str) -> Iterator[dict[str, str]]:
    """The environment of a CLI run on a migrated private Cassandra emulator (its faults are its own), PostgreSQL,
    Redis and Azurite."""
    from shared.adapters.cassandra.session import connect

    session = connect(CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port))
    try:
        yield _migrated_environment(session, private_cassandra, "sluice", pg_dsn, redis_prefix)
    finally:
        session.cluster.shutdown()


THROTTLED_RANGE = ["2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z"]


THROTTLED_COMMANDS = [
    ["replay", "--from", THROTTLED_RANGE[0], "--to", THROTTLED_RANGE[1], "--no-progress"],
    ["enrich", "run"],
]


@pytest.mark.timeout(300)
def test_cassandra_throttling_past_the_retries_is_one_error_line_not_a_driver_traceback(private_cassandra,
                                                                                        throttled_env) -> None:
    """docs/operations.md: with a dependency down or throttling past the retries, every command says one ``error:``
    line and exits 2, never a traceback. With Cosmos DB 429s (``RetryAfterMs``) on every read, ``replay`` and
    ``enrich run`` printed their error line and exited 2, and then the driver logged ``ERROR cassandra.connection:
    Exception while servicing timeout callback`` with a traceback ending in ``RuntimeError: cannot schedule new
    futures after (interpreter) shutdown``: a concurrent read's retry, parked on a driver timer
    (shared/adapters/cassandra/retry.py, delay_retries), fired after the session was shut down. (A race: each
    command is run five times; about half the runs showed it.)"""
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", ratio=1.0, retry_after_ms=300,
                  applies_to="reads")
    try:
        runs = [(argv[0], *_sluice(throttled_env, argv)) for _ in range(5) for argv in THROTTLED_COMMANDS]
    finally:
        clear_faults(private_cassandra.host, private_cassandra.port)
    assert all(code == 2 for _, code, _ in runs), [(name, code) for name, code, _ in runs]
    traced = [(name, err[err.find("error: "):][-1200:]) for name, _, err in runs if "Traceback" in err]
    assert not traced, f"{len(traced)} of {len(runs)} runs ended in a traceback; first: {traced[0]}"
