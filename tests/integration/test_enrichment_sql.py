"""The PostgreSQL migrations and reporting views, on a real server."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from shared import bootstrap
from shared.adapters.postgres.migrations import SQL_DIR, apply_migrations, discover
from shared.exceptions import ConfigurationError, PermanentError, TransientError
from sluice.__main__ import main

pytestmark = pytest.mark.timeout(60)


def test_migrations_apply_once_and_refuse_an_edited_file(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True, prepare_threshold=0) as conn:  # even preparing everything
        assert apply_migrations(conn) == [m.version for m in discover()]
        assert [m.version for m in discover()] == list(range(1, len(discover()) + 1))  # numbered without gaps
        assert apply_migrations(conn) == []
        assert conn.autocommit
        copy = tmp_path / "sql"
        shutil.copytree(SQL_DIR, copy)
        edited = copy / "002_enrichment.sql"
        edited.write_text(edited.read_text() + "\n-- edited\n")
        with pytest.raises(ConfigurationError, match=r"002_enrichment\.sql changed after it was applied"):
            apply_migrations(conn, copy)


def _before(version: int, tmp_path: Path) -> Path:
    """A copy of the migrations before ``version``: a database one deployment behind."""
    directory = tmp_path / "sql"
    directory.mkdir()
    for path in sorted(SQL_DIR.glob("*.sql")):
        if int(path.name[:3]) < version:
            shutil.copy(path, directory / path.name)
    return directory


class _Migrator(threading.Thread):
    """``apply_migrations`` on a connection of its own, on a thread: the versions it applied, or what it raised."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.applied: list[int] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                self.applied = apply_migrations(conn)
        except BaseException as exc:  # asserted by the test
            self.error = exc


def _after_004() -> list[int]:
    return [m.version for m in discover() if m.version > 4]


def _waits_on_a_lock(dsn: str, needle: str) -> bool:
    """Whether a backend runs a statement containing ``needle`` and waits on a heavyweight lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock' AND position(%s in query) > 0", (needle,)).fetchone()
    return bool(row and row[0])


def test_a_migration_waiting_for_its_lock_does_not_stall_the_readers_queued_behind_it(pg_dsn: str,
                                                                                      tmp_path: Path) -> None:
    """A DDL migration (005: ``ALTER TABLE enrichment_windows ADD COLUMN``) needs an ACCESS EXCLUSIVE lock, so while
    a transaction holds even a read lock on the table (an enrichment window being written reads the ledger, then
    streams the window for as long as Cassandra takes), the migration waits, and PostgreSQL queues every later
    reader of the table behind that waiting request: the late scan and the next enrichment blocked for as long as
    the first transaction lasted. A migration now gives up its wait after a short ``lock_timeout`` and tries again,
    so readers are queued behind it for that long at most, and it is applied once the table is free."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert apply_migrations(conn, _before(5, tmp_path)) == [1, 2, 3, 4]
    with psycopg.connect(pg_dsn) as enrichment:  # an enrichment transaction in progress: it read the ledger
        enrichment.execute("SELECT count(*) FROM enrichment_windows").fetchone()
        migration = _Migrator(pg_dsn)
        migration.start()
        try:
            deadline = time.monotonic() + 20
            while not _waits_on_a_lock(pg_dsn, "ALTER TABLE enrichment_windows"):
                assert time.monotonic() < deadline, "the migration never reached its lock wait"
                time.sleep(0.05)
            with psycopg.connect(pg_dsn) as reader:  # the late scan / the next run reading the ledger
                reader.execute("SET lock_timeout = '2s'")
                try:
                    reader.execute("SELECT count(*) FROM enrichment_windows").fetchone()
                    blocked = None
                except psycopg.errors.LockNotAvailable as exc:
                    blocked = exc
        finally:
            enrichment.rollback()
            migration.join(60)
    assert blocked is None, f"a plain read of the ledger queued behind the waiting migration: {blocked}"
    assert (migration.error, migration.applied) == (None, _after_004())  # once the enrichment's transaction ended


def test_a_migration_that_never_gets_its_lock_gives_up_naming_itself(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, _before(5, tmp_path))
        with psycopg.connect(pg_dsn) as enrichment:  # holds the ledger for longer than the migration tries
            enrichment.execute("SELECT count(*) FROM enrichment_windows").fetchone()
            with pytest.raises(TransientError, match=r"005_windows_to_recompute\.sql could not take its locks "
                                                     r"\(waited 100 ms, 3 times\)") as raised:
                apply_migrations(conn, lock_timeout_seconds=0.1, attempts=3, max_pause_seconds=0.1)
            assert len(str(raised.value).splitlines()) == 1, "one line, not PostgreSQL's CONTEXT quoting the file"
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (4,)  # 005 rolled back
        assert apply_migrations(conn) == _after_004()  # and applied by the next run


def test_the_held_rows_of_a_marked_window_are_read_through_the_window_start_index(pg_dsn: str) -> None:
    """The recompute of a window an event moved out of stages the rows enriched_events holds for it, inside the
    window's transaction and under SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS. With no index leading with window_start
    it read every enriched event ever written: at production size it timed out, the marked window stayed first of
    every run and the enrichment stalled. Migration 014 adds enriched_events_window_start."""
    from shared.adapters.postgres.enrichment_store import _STAGE_EVENTS, _STAGE_HELD_EVENTS

    start = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # 200,000 enriched events over 2,000 windows
        apply_migrations(conn)
        conn.execute(
            "INSERT INTO enriched_events (event_id, window_start, device_id, event_time, event_type, severity, "
            "critical, measurements, known_device) "
            "SELECT gen_random_uuid(), %s - (i %% 2000) * interval '5 minutes', 'dev-' || (i %% 500), "
            "%s - (i %% 2000) * interval '5 minutes' + interval '1 second', 'reading', 'info', false, '{}', false "
            "FROM generate_series(1, 200000) AS i", (start, start))
        conn.execute("ANALYZE enriched_events")
    with psycopg.connect(pg_dsn) as conn, conn.transaction():
        conn.execute(_STAGE_EVENTS.encode(), prepare=False)
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {_STAGE_HELD_EVENTS}", (start,)))
    assert "Scan on enriched_events_window_start" in plan or "using enriched_events_window_start" in plan, plan
    assert "Seq Scan on enriched_events" not in plan, plan


def test_the_window_start_index_is_built_concurrently_over_a_failed_builds_leftover(pg_dsn: str,
                                                                                    tmp_path: Path) -> None:
    """014 runs outside a transaction (CREATE INDEX CONCURRENTLY: the enrichment keeps writing while it builds). A
    concurrent build that failed leaves an INVALID index of the same name, which IF NOT EXISTS would take for done:
    the next run drops it and builds the index again, valid."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, _before(14, tmp_path))
        for i in range(2):  # a unique build over two rows of one window fails, leaving its index INVALID
            conn.execute("INSERT INTO enriched_events (event_id, window_start, device_id, event_time, event_type, "
                         "severity, critical, measurements, known_device) VALUES (%s, %s, 'dev-1', %s, 'reading', "
                         "'info', false, '{}', false)",
                         (uuid.uuid4(), datetime(2026, 11, 20, tzinfo=UTC),
                          datetime(2026, 11, 20, 0, 0, i, tzinfo=UTC)))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY enriched_events_window_start ON enriched_events "
                         "(window_start)")
        valid = ("SELECT indisvalid, indisunique FROM pg_index "
                 "WHERE indexrelid = 'enriched_events_window_start'::regclass")
        assert conn.execute(valid).fetchall() == [(False, True)]
        conn.execute("SET lock_timeout = '3s'")
        assert apply_migrations(conn) == [m.version for m in discover() if m.version >= 14]
        assert conn.execute(valid).fetchall() == [(True, False)]
        assert conn.execute("SHOW lock_timeout").fetchone() == ("3s",), "the session's lock_timeout is restored"
        assert conn.execute("SELECT name FROM schema_migrations WHERE version = 14").fetchall() == [
            ("enriched_events_window_start",)]


def _one_enriched_event(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO enriched_events (event_id, window_start, device_id, event_time, event_type, severity, "
        "critical, measurements, known_device) VALUES (%s, %s, 'dev-1', %s, 'reading', 'info', false, '{}', false)",
        (uuid.uuid4(), datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 20, 0, 0, 1, tzinfo=UTC)))


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone() == (True,)


def test_two_migrators_at_once_both_finish_while_014_builds_concurrently(pg_dsn: str, tmp_path: Path) -> None:
    """The advisory lock serialises migrators (the migrate Job retried, or run from a shell as operations.md says
    to for a long build). A second one waiting in ``SELECT pg_advisory_lock(...)`` held a snapshot for the whole
    wait, and 014's CREATE INDEX CONCURRENTLY, run by the first, waits for every older snapshot to end: each waited
    for the other until PostgreSQL's deadlock detector failed one. The lock is now asked for again in short
    statements, which hold no snapshot between them."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, _before(14, tmp_path))
        _one_enriched_event(conn)
    writer = psycopg.connect(pg_dsn)  # an enrichment window in progress: the build waits for it (documented)
    writer.execute("UPDATE enriched_events SET severity = 'info'")
    first = _Migrator(pg_dsn)
    first.start()
    time.sleep(1.0)  # the first holds the advisory lock; its build waits for the writer
    second = _Migrator(pg_dsn)
    second.start()
    time.sleep(1.0)  # the second waits for the advisory lock
    writer.commit()  # the window ends: the build goes on
    writer.close()
    first.join(60)
    second.join(60)
    assert (first.error, second.error) == (None, None)
    assert sorted([first.applied, second.applied], key=len) == [[], [m.version for m in discover() if m.version >= 14]]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index "
                            "WHERE indexrelid = 'enriched_events_window_start'::regclass").fetchall() == [(True,)]


def test_a_migration_with_its_own_begin_and_commit_is_refused_with_nothing_applied(pg_dsn: str,
                                                                                    tmp_path: Path) -> None:
    """Rule: a migration is either fully applied and recorded, or not at all. Was: the file was sent whole inside
    the runner's transaction, so a ``BEGIN; ... COMMIT;`` in it (a habit from other migration tools) committed that
    transaction half-way; when a later statement failed, the first part stayed applied and the migration
    unrecorded, and every later run failed on it ("relation already exists"). Now the file runs through PL/pgSQL's
    EXECUTE, where PostgreSQL refuses such a statement: the transaction is rolled back, nothing is applied or
    recorded, and the refusal names the file."""
    (tmp_path / "001_first.sql").write_text(
        "-- a habit from other tools\nBEGIN;\nCREATE TABLE review_a (x int);\nCOMMIT;\n"
        "CREATE TABLE review_b (x int REFERENCES no_such_table);\n")
    (tmp_path / "002_second.sql").write_text("CREATE TABLE review_c (x int);\n\n  /* done */ COMMIT;\n")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match=r"001_first\.sql contains a transaction-control statement "
                                                     r"\(BEGIN, COMMIT, ROLLBACK, SAVEPOINT\.\.\.\)"):
            apply_migrations(conn, tmp_path)
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)
        assert not _exists(conn, "review_a")
        (tmp_path / "001_first.sql").write_text("CREATE TABLE review_a (x int);\n")
        with pytest.raises(ConfigurationError, match=r"002_second\.sql contains a transaction-control statement "
                                                     r"\(BEGIN, COMMIT, ROLLBACK, SAVEPOINT\.\.\.\)"):
            apply_migrations(conn, tmp_path)  # a COMMIT after every other statement: refused as well
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
        assert not _exists(conn, "review_c")
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone() == (0,)


@pytest.mark.parametrize("statement", [
    "START TRANSACTION;", "begin work;", "END;", "ROLLBACK;", "ABORT;", "SAVEPOINT s;", "RELEASE SAVEPOINT s;",
    "release s;", "PREPARE TRANSACTION 'x';", "COMMIT PREPARED 'x';", "ROLLBACK PREPARED 'x';"])
def test_every_transaction_control_statement_is_refused(pg_dsn: str, tmp_path: Path, statement: str) -> None:
    (tmp_path / "001_first.sql").write_text(f"CREATE TABLE review_a (x int);\n{statement}\n")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match=r"001_first\.sql contains a transaction-control statement "
                                                     r"\(BEGIN, COMMIT, ROLLBACK, SAVEPOINT\.\.\.\)"):
            apply_migrations(conn, tmp_path)
        assert not _exists(conn, "review_a")


# What a SQL splitter of our own (sqlparse, for a while) misread, and PostgreSQL reads right: each file has a COMMIT
# that would commit the runner's transaction part-way (a failure after it left review_a applied, unrecorded).
_HIDDEN_COMMITS = {
    # ``begin`` is a non-reserved word (a period's begin/stop): sqlparse opened a block there, never closed
    "column-named-begin": ("CREATE TABLE review_a (begin timestamptz, stop timestamptz);\nCOMMIT;\n"
                           "CREATE TABLE review_b (x int REFERENCES no_such_table);\n"),
    # standard_conforming_strings (the default since 9.1): 'C:\' is a whole string; sqlparse read \' as a quote
    "string-ending-in-a-backslash": ("CREATE TABLE review_a (path text);\nINSERT INTO review_a VALUES ('C:\\');\n"
                                     "COMMIT;\nINSERT INTO review_a VALUES ('x');\n"
                                     "CREATE TABLE review_b (x int REFERENCES no_such_table);\n"),
    # block comments nest: /* a /* b */ c */ is one comment; sqlparse ended it at the first */
    "nested-block-comment": "CREATE TABLE review_a (x int);\n/* a /* b */ c */ COMMIT;\n",
}


@pytest.mark.parametrize("sql", _HIDDEN_COMMITS.values(), ids=_HIDDEN_COMMITS.keys())
def test_nothing_hides_a_commit_from_postgresql(pg_dsn: str, tmp_path: Path, sql: str) -> None:
    """PostgreSQL itself reads the file (DO/EXECUTE) and refuses the COMMIT: nothing of the migration is applied."""
    (tmp_path / "001_first.sql").write_text(sql)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match=r"001_first\.sql contains a transaction-control statement "
                                                     r"\(BEGIN, COMMIT, ROLLBACK, SAVEPOINT\.\.\.\)"):
            apply_migrations(conn, tmp_path)
        assert not _exists(conn, "review_a")


def test_a_commit_inside_a_nested_block_comment_is_not_refused(pg_dsn: str, tmp_path: Path) -> None:
    """The reverse: ``/* a /* b */ COMMIT; */`` is all comment to PostgreSQL, which applies the file. Was
    (sqlparse): a COMMIT statement seen, and a valid migration refused."""
    (tmp_path / "001_first.sql").write_text("/* old: /* nested */ COMMIT; */\nCREATE TABLE review_a (x int);\n")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert apply_migrations(conn, tmp_path) == [1]
        assert _exists(conn, "review_a")


def test_transaction_keywords_in_bodies_strings_and_comments_are_not_refused(pg_dsn: str, tmp_path: Path) -> None:
    """Only a transaction-control statement is refused (by PostgreSQL): not a PL/pgSQL body's BEGIN ...
    END in dollar quotes, a ``BEGIN ATOMIC`` body, a string, a comment, a quoted name, or ``PREPARE name AS``."""
    (tmp_path / "001_first.sql").write_text(
        "-- BEGIN; this is not a statement\nCREATE TABLE review_t (x int, note text);\n"
        "CREATE FUNCTION review_f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql;\n"
        "CREATE FUNCTION review_g() RETURNS trigger AS $body$\nBEGIN\n  BEGIN\n    NULL;\n"
        "  EXCEPTION WHEN others THEN NULL;\n  END;\n  RETURN NEW;\nEND;\n$body$ LANGUAGE plpgsql;\n"
        "CREATE PROCEDURE review_p(a int) LANGUAGE sql\nBEGIN ATOMIC\n"
        "  INSERT INTO review_t VALUES (CASE WHEN a > 0 THEN 1 ELSE 2 END, 'x');\nEND;\n"
        "INSERT INTO review_t VALUES (3, 'BEGIN; COMMIT;'), (4, E'it\\'s; COMMIT;');\n"
        "/* COMMIT; */ CREATE TABLE \"commit\" (x int);\nDO $$ BEGIN PERFORM 1; END $$;\n"
        "PREPARE review_q AS SELECT 1;\nDEALLOCATE review_q;\n")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert apply_migrations(conn, tmp_path) == [1]
        conn.execute("CALL review_p(1)")
        assert conn.execute("SELECT review_f(), count(*) FROM review_t").fetchone() == (1, 3)


def test_a_migration_ending_in_select_into_is_refused_naming_create_table_as(pg_dsn: str, tmp_path: Path) -> None:
    """PL/pgSQL's EXECUTE, which runs every in-transaction migration, refuses ``SELECT ... INTO new_table`` as its
    last statement ("EXECUTE of SELECT ... INTO is not implemented", with no position): a ConfigurationError naming
    the file, the line and the statement to write instead, with nothing applied or recorded."""
    (tmp_path / "001_first.sql").write_text(
        "CREATE TABLE review_src (x int);\nINSERT INTO review_src VALUES (1), (2);\n\n"
        "SELECT x\n  INTO review_copy FROM review_src;\n-- done\n")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match=r"001_first\.sql ends in SELECT \.\.\. INTO, .*"
                                                     r"write CREATE TABLE \.\.\. AS SELECT \.\.\. instead"):
            apply_migrations(conn, tmp_path)
        assert not _exists(conn, "review_src")
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)
        (tmp_path / "001_first.sql").write_text(
            "CREATE TABLE review_src (x int);\nINSERT INTO review_src VALUES (1), (2);\n"
            "CREATE TABLE review_copy AS SELECT x FROM review_src;\n")
        assert apply_migrations(conn, tmp_path) == [1]
        assert conn.execute("SELECT count(*) FROM review_copy").fetchone() == (2,)


def test_a_failed_migration_names_the_line_that_failed(pg_dsn: str, tmp_path: Path) -> None:
    """Was (the DO/EXECUTE wrapper): PostgreSQL's position of the error was relative to the EXECUTEd string and
    dropped, so 'syntax error at or near ","' said nothing of where in the file. Now that position
    (internal_position, the file being the EXECUTEd string) is given as the file's line, on one line."""
    (tmp_path / "001_first.sql").write_text(
        "CREATE TABLE review_a (x int);\n-- a comment\nCREATE TABLE review_c (y int);\n\n"
        "CREATE TABLE review_b (x int,,);\nCREATE TABLE review_d (z int);\n")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(PermanentError, match=r"001_first\.sql failed at line 5 and was rolled back "
                                                 r"\(SyntaxError: syntax error at or near \",\"\)") as raised:
            apply_migrations(conn, tmp_path)
        assert len(str(raised.value).splitlines()) == 1
        assert not _exists(conn, "review_a")


def test_a_migration_file_not_in_utf8_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    """Was: a file saved in Latin-1 (a comment with an accent) raised a bare UnicodeDecodeError naming neither the
    file nor the rule, which the CLI showed as a traceback (not a SluiceError, exit 1)."""
    (tmp_path / "001_first.sql").write_bytes("-- créé\nCREATE TABLE t (x int);\n".encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"001_first\.sql is not UTF-8"):
        discover(tmp_path)


def test_a_no_transaction_migration_saved_with_a_byte_order_mark_runs_outside_a_transaction(pg_dsn: str,
                                                                                            tmp_path: Path) -> None:
    """Was: the file was read as ``utf-8``, which keeps a byte order mark (what Windows editors write) as U+FEFF:
    the first line was then not ``-- sluice: no transaction`` and the whole file was sent in a transaction, which
    PostgreSQL refused with 'syntax error at or near "\ufeff"' on an invisible character. The mark is now dropped
    (``utf-8-sig``); the checksums of files without one are unchanged."""
    (tmp_path / "001_first.sql").write_bytes(
        "-- sluice: no transaction\nCREATE TABLE review_t (x int);\n-- sluice: next statement\n"
        "CREATE INDEX CONCURRENTLY review_t_x ON review_t (x);\n".encode("utf-8-sig"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert apply_migrations(conn, tmp_path) == [1]
        assert _exists(conn, "review_t_x")
    assert [m.checksum for m in discover()] == [hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()
                                                for path in sorted(SQL_DIR.glob("*.sql"))]


def _cancel_the_build_once_it_waits(dsn: str, done: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not done.is_set():
            row = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type IN ('Lock', 'IPC') "
                                "AND position('CREATE INDEX CONCURRENTLY' in query) > 0").fetchone()
            if row:
                admin.execute("SELECT pg_cancel_backend(%s)", (row[0],))
                return
            time.sleep(0.05)


def test_migrate_names_a_failed_migration_instead_of_calling_postgresql_unavailable(
        pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: a migration that failed on a reachable server (here 014's concurrent build cancelled, QueryCanceled: an
    OperationalError, as are DeadlockDetected and ObjectInUse) left apply_migrations as a bare psycopg error, which
    ``python -m sluice`` reported as "error: PostgreSQL unavailable: ...": the operator was told the server was down
    and not which migration failed. Now the error names it and says the next run starts it again (exit 2)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, _before(14, tmp_path))
        _one_enriched_event(conn)
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    for name in [n for n in os.environ if n.startswith("SLUICE_")]:
        monkeypatch.delenv(name)
    for name, value in {"AzureWebJobsStorage": "UseDevelopmentStorage=true",
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
                        "SLUICE_CASSANDRA_HOSTS": "127.0.0.1", "SLUICE_CASSANDRA_PORT": "1",
                        "SLUICE_POSTGRES_HOST": str(pg["host"]), "SLUICE_POSTGRES_PORT": str(pg.get("port", 5432)),
                        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"]),
                        "SLUICE_POSTGRES_USER": str(pg.get("user", "postgres"))}.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    writer = psycopg.connect(pg_dsn)  # an enrichment window in progress: the build waits for it
    writer.execute("UPDATE enriched_events SET severity = 'info'")
    done = threading.Event()
    canceller = threading.Thread(target=_cancel_the_build_once_it_waits, args=(pg_dsn, done))
    canceller.start()
    try:
        code = main(["migrate", "postgres"])
    finally:
        done.set()
        canceller.join(30)
        writer.rollback()
        writer.close()
        bootstrap.reset()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: PostgreSQL migration 014_enriched_events_window_start.sql" in err, err
    assert "QueryCanceled" in err and "next migrate starts it again" in err, err
    assert "unavailable" not in err, err


def test_an_inherited_statement_timeout_does_not_cancel_the_concurrent_build(pg_dsn: str, tmp_path: Path) -> None:
    """A ``-- sluice: no transaction`` migration turns the session's lock_timeout off (the build waits for the
    windows already writing the table: operations.md). Was: it kept any statement_timeout the session inherited (a
    database or role default, PGOPTIONS), so 014's build waiting for a writer was cancelled, left an INVALID index
    and the migration unrecorded, and on a large table every run's build was cancelled again. Both are now off for
    such a migration, and restored afterwards."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, _before(14, tmp_path))
        _one_enriched_event(conn)
        conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET statement_timeout = \'500ms\'')
    writer = psycopg.connect(pg_dsn)
    writer.execute("SET statement_timeout = 0")
    writer.execute("UPDATE enriched_events SET severity = 'info'")
    ender = threading.Timer(2.0, writer.commit)  # the window ends after 2 s: the build goes on
    ender.start()
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("500ms",)
            applied = apply_migrations(conn)
            valid = conn.execute("SELECT indisvalid FROM pg_index "
                                 "WHERE indexrelid = 'enriched_events_window_start'::regclass").fetchall()
            assert conn.execute("SHOW statement_timeout").fetchone() == ("500ms",), "restored"
    finally:
        ender.join()
        writer.close()
    assert applied == [m.version for m in discover() if m.version >= 14]
    assert valid == [(True,)]


def test_an_inherited_statement_timeout_does_not_cancel_an_in_transaction_migration(pg_dsn: str,
                                                                                   tmp_path: Path) -> None:
    """The in-transaction migrations turn an inherited statement_timeout (a database or role default, PGOPTIONS) off
    for their transaction as well. Was: only the ``-- sluice: no transaction`` ones did, so here 010 waiting for an
    enrichment window writing device_window_stats (0.6 s, within its 1 s ``lock_timeout``) was cancelled by the
    inherited 300 ms first (QueryCanceled, no retry); likewise 010's backfill over a large table on every run."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, _before(10, tmp_path))
        conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET statement_timeout = \'300ms\'')
    writer = psycopg.connect(pg_dsn)
    writer.execute("SET statement_timeout = 0")
    writer.execute(
        "INSERT INTO device_window_stats (window_start, device_id, window_end, known_device, event_count, "
        "critical_count, first_event_time, last_event_time, measurements) "
        "VALUES ('2026-01-01', 'dev-1', '2026-01-01 00:05', true, 1, 0, '2026-01-01', '2026-01-01', '{}')")
    ender = threading.Timer(0.6, writer.commit)  # the window ends within the migration's lock wait
    ender.start()
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("300ms",)
            applied = apply_migrations(conn)
            assert conn.execute("SELECT windows FROM device_totals").fetchall() == [(1,)]
            assert conn.execute("SHOW statement_timeout").fetchone() == ("300ms",), "transaction-local"
    finally:
        ender.join()
        writer.close()
    assert applied == [m.version for m in discover() if m.version >= 10]


def test_every_view_and_column_is_commented(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        missing = conn.execute("""
            SELECT c.relname || coalesce('.' || a.attname, '')
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE c.relkind IN ('v', 'r') AND c.relname <> 'schema_migrations'
              AND (col_description(c.oid, a.attnum) IS NULL OR obj_description(c.oid, 'pg_class') IS NULL)
        """).fetchall()
        views = [r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1")]
    assert missing == []
    assert views == ["report_device_health", "report_site_daily", "report_site_measurement_daily",
                     "report_unknown_devices"]


def test_reporting_views_cut_days_in_the_site_time_zone_and_grade_device_health(pg_dsn: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    day = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 22:00 the day before in New York
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute("INSERT INTO sites (site_id, name, region, timezone) VALUES ('ny', 'New York', 'us', "
                     "'America/New_York'), ('pa', 'Paris', 'eu', 'Europe/Paris')")
        conn.execute("INSERT INTO devices (device_id, site_id, model, firmware) VALUES ('a', 'ny', 'M1', '1'), "
                     "('b', 'pa', 'M2', '2')")
        for site, start, events, critical, m in (
            ("ny", day, 10, 1, '{"t": {"count": 10, "min": 1, "max": 9, "avg": 5, "last": 2}}'),
            ("ny", day + timedelta(hours=6), 30, 0, '{"t": {"count": 30, "min": 0, "max": 4, "avg": 1, "last": 1}}'),
            ("pa", day, 5, 5, '{"t": {"count": 5, "min": 2, "max": 3, "avg": 2.5, "last": 3}}'),
        ):
            conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, site_name, region, "
                         "device_count, event_count, critical_count, measurements) VALUES (%s, %s, %s, 'old name', "
                         "'r', 1, %s, %s, %s)", (start, site, start + timedelta(minutes=5), events, critical, m))
        for device, start, events, critical, known in (("a", now - timedelta(minutes=10), 4, 0, True),
                                                       ("b", now - timedelta(hours=3), 2, 1, True),
                                                       ("c", now - timedelta(minutes=10), 1, 0, False)):
            conn.execute("INSERT INTO device_window_stats (window_start, device_id, window_end, known_device, "
                         "event_count, critical_count, first_event_time, last_event_time, measurements) VALUES "
                         "(%s, %s, %s, %s, %s, %s, %s, %s, '{}')",
                         (start, device, start + timedelta(minutes=5), known, events, critical, start, start))
        daily = conn.execute("SELECT site_id, site_name, local_day::text, event_count, critical_count, critical_ratio, "
                             "active_windows FROM report_site_daily ORDER BY 1, 3").fetchall()
        measurement = conn.execute("SELECT site_id, local_day::text, sample_count, min_value, max_value, avg_value "
                                   "FROM report_site_measurement_daily ORDER BY 1, 2").fetchall()
        health = conn.execute("SELECT device_id, known_device, model, health FROM report_device_health "
                              "ORDER BY 1").fetchall()
    assert daily == [("ny", "New York", "2026-11-19", 10, 1, Decimal("0.1000"), 1),
                     ("ny", "New York", "2026-11-20", 30, 0, Decimal("0.0000"), 1),
                     ("pa", "Paris", "2026-11-20", 5, 5, Decimal("1.0000"), 1)]
    assert measurement[0][:5] == ("ny", "2026-11-19", 10, 1, 9)
    assert measurement[2] == ("pa", "2026-11-20", 5, 2, 3, pytest.approx(2.5))
    assert health == [("a", True, "M1", "ok"), ("b", True, "M2", "silent"), ("c", False, None, "ok")]


def test_a_site_no_longer_listed_keeps_the_name_and_region_it_last_had_on_every_day(pg_dsn: str) -> None:
    """A listed site shows its current name on past days too (docs/reporting.md); one that left the reference data
    shows what the reference data last said of it: the name and region of its latest enriched window, on every day.
    Was: ``max()`` of each day's names, the alphabetically last, so a site renamed from "Zeta works" to "Alpha
    works" before it left showed its old name, and each day the name of that day."""
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        for start, name, region in ((day - timedelta(days=1), "Zeta works", "eu-west"),
                                    (day, "Zeta works", "eu-west"),
                                    (day + timedelta(hours=1), "Alpha works", "eu-north"),  # renamed, then removed
                                    (day + timedelta(hours=2), None, None)):  # enriched after it left the reference
            conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, site_name, region, "
                         "device_count, event_count, critical_count, measurements) VALUES (%s, 'gone', %s, %s, %s, "
                         "1, 1, 0, '{}')", (start, start + timedelta(minutes=5), name, region))
        daily = conn.execute("SELECT local_day::text, site_name, region, event_count FROM report_site_daily "
                             "WHERE site_id = 'gone' ORDER BY 1").fetchall()
    assert daily == [("2026-11-19", "Alpha works", "eu-north", 1), ("2026-11-20", "Alpha works", "eu-north", 3)]


def test_a_listed_site_shows_its_current_region_even_when_it_is_none(pg_dsn: str) -> None:
    """The fallback to the latest enriched window is for a site no longer listed; ``coalesce`` also took it for a
    listed site whose current reference data gives no region (``sites.region`` is optional), so the view kept
    showing a region the reference data no longer has, on every day, while the name followed the current data."""
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute("INSERT INTO sites (site_id, name, region, timezone) VALUES ('a', 'Alpha plant', NULL, "
                     "'Europe/Paris')")  # its region withdrawn since its windows were enriched
        conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, site_name, region, "
                     "device_count, event_count, critical_count, measurements) VALUES (%s, 'a', %s, 'Alpha', "
                     "'eu-west', 1, 1, 0, '{}')", (day, day + timedelta(minutes=5)))
        daily = conn.execute("SELECT site_name, region FROM report_site_daily WHERE site_id = 'a'").fetchall()
    assert daily == [("Alpha plant", None)]


def test_a_site_not_listed_has_its_days_cut_in_the_zone_its_windows_were_enriched_with(pg_dsn: str) -> None:
    """With the reference data in Parquet blobs only, ``sites`` stays empty; the days of a site it does not list are
    cut in the zone each window was enriched with, while a listed site keeps its current zone (UTC when it has
    none), as its name and region follow the current data."""
    start = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 22:00 the day before in New York
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute("INSERT INTO sites (site_id, name) VALUES ('listed', 'Listed, no zone')")
        for site in ("unlisted", "listed", "old"):
            conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, site_name, site_timezone, "
                         "device_count, event_count, critical_count, measurements) VALUES (%s, %s, %s, 'n', %s, 1, 1, "
                         "0, '{\"t\": {\"count\": 1, \"min\": 1, \"max\": 1, \"avg\": 1, \"last\": 1}}')",
                         (start, site, start + timedelta(minutes=5), None if site == "old" else "America/New_York"))
        daily = conn.execute("SELECT site_id, timezone, local_day::text FROM report_site_daily ORDER BY 1").fetchall()
        measurement = conn.execute("SELECT site_id, local_day::text FROM report_site_measurement_daily "
                                   "ORDER BY 1").fetchall()
    assert daily == [("listed", "UTC", "2026-11-20"), ("old", "UTC", "2026-11-20"),  # old: enriched before 008
                     ("unlisted", "America/New_York", "2026-11-19")]
    assert measurement == [(site, day) for site, _, day in daily]


def test_the_daily_mean_holds_days_whose_windows_sum_past_the_largest_float(pg_dsn: str) -> None:
    # each window's own figures are finite and valid; weighting them in double precision overflowed and
    # failed the whole query ("value out of range: overflow")
    start = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        for k, (count, avg) in enumerate([(1, 1e308), (2, 1e308), (1, -1e308), (4, 0.5)]):
            window = start + timedelta(minutes=5 * k)
            figures = f'{{"t": {{"count": {count}, "min": {avg}, "max": {avg}, "avg": {avg}, "last": {avg}}}}}'
            conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, device_count, "
                         "event_count, critical_count, measurements) VALUES (%s, 's1', %s, 1, %s, 0, %s)",
                         (window, window + timedelta(minutes=5), count, figures))
        rows = conn.execute("SELECT sample_count, min_value, max_value, avg_value "
                            "FROM report_site_measurement_daily").fetchall()
    assert rows == [(Decimal(8), -1e308, 1e308, pytest.approx(2.5e307))]  # (1 + 2 - 1) x 1e308 + 4 x 0.5, over 8


# Zones at both ends of the offsets (+14:00 and -12:00), one with daylight saving, and UTC.
_ZONES = {"kiritimati": "Pacific/Kiritimati", "baker": "Etc/GMT+12", "new-york": "America/New_York", "utc": None}


def _site_windows(conn: psycopg.Connection, start: datetime, hours: int, *, step: int = 1) -> None:
    """A window every ``step`` hours from ``start`` for each site of ``_ZONES``, listed with its zone (utc: not listed,
    no zone)."""
    for site, zone in _ZONES.items():
        if zone is not None:
            conn.execute("INSERT INTO sites (site_id, name, timezone) VALUES (%s, %s, %s)", (site, site, zone))
    conn.execute(
        "INSERT INTO site_window_stats (window_start, site_id, window_end, site_name, device_count, event_count, "
        "critical_count, measurements) SELECT ts, s, ts + interval '5 minutes', s, 1, 1 + extract(hour FROM ts)::int, "
        "0, jsonb_build_object('t', jsonb_build_object('count', 1 + extract(hour FROM ts)::int, 'min', "
        "extract(hour FROM ts), 'max', extract(hour FROM ts) + 1, 'avg', extract(hour FROM ts) + 0.5, 'last', 0), "
        "'rpm', jsonb_build_object('count', 1, 'min', 7, 'max', 7, 'avg', 7, 'last', 7)) "
        "FROM generate_series(%s::timestamptz, %s::timestamptz, %s * interval '1 hour') ts, "
        "unnest(%s::text[]) s", (start, start + timedelta(hours=hours), step, list(_ZONES)))


# Each site report, its bounded form, and the column holding its local day.
_BOUNDED_REPORTS = [("report_site_daily", "site_id, local_day", 4),
                    ("report_site_measurement_daily", "site_id, local_day, measurement", 1)]


@pytest.mark.parametrize(("view", "order", "day_column"), _BOUNDED_REPORTS)
def test_a_site_report_between_two_days_is_the_view_on_those_days_in_every_zone(
        pg_dsn: str, view: str, order: str, day_column: int) -> None:
    """``report_site_daily_between`` and ``report_site_measurement_daily_between`` read only the windows that can
    fall on the days asked for (a bound on ``window_start``, for the primary key); a bound a few hours too tight
    would lose the first or last hours of a day in zones far from UTC. Every range gives exactly the view's rows of
    its days, and the view is unchanged."""
    start = datetime(2026, 3, 5, 0, 0, tzinfo=UTC)  # New York moves to daylight saving time on 8 March
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        _site_windows(conn, start, 24 * 8)
        rows = conn.execute(f"SELECT * FROM {view} ORDER BY {order}").fetchall()
        assert {row[day_column] for row in rows} == {start.date() + timedelta(days=n) for n in range(-1, 9)}
        first, last = start.date(), start.date() + timedelta(days=8)
        for low in (None, first - timedelta(days=1), first, first + timedelta(days=3), last):
            for high in (None, first, first + timedelta(days=3), last, last + timedelta(days=1)):
                between = conn.execute(f"SELECT * FROM {view}_between(%s, %s) ORDER BY {order}",
                                       (low, high)).fetchall()
                assert between == [row for row in rows if (low is None or row[day_column] >= low)
                                   and (high is None or row[day_column] <= high)], (low, high)


@pytest.mark.parametrize("view", [view for view, _, _ in _BOUNDED_REPORTS])
def test_a_site_report_between_two_days_reads_by_the_primary_key(pg_dsn: str, view: str) -> None:
    """The bounded reports read ``site_window_stats`` through its primary key (``window_start`` first), where the
    views' days, cut in each site's zone, can only be found by reading every window."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        _site_windows(conn, datetime(2026, 3, 5, tzinfo=UTC), 24 * 8)
        conn.execute("SET enable_seqscan = off")  # on a table this small the planner would read it whole anyway
        plan = "\n".join(row[0] for row in conn.execute(
            f"EXPLAIN SELECT * FROM {view}_between('2026-03-10', NULL)").fetchall())
    assert "Index Cond: ((window_start >=" in plan or "Recheck Cond: ((window_start >=" in plan, plan


def test_the_newest_site_rows_are_the_views_newest_however_far_back_they_are(pg_dsn: str) -> None:
    """``PostgresReports.site_daily`` without ``from`` (the page's read) reads the last days first and reaches
    further back until it holds ``limit`` rows: the answer is the view's newest rows, whether they are all recent,
    a few recent ones and the rest a year old, or only old ones."""
    from psycopg_pool import ConnectionPool

    from shared.adapters.postgres.reports import PostgresReports

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn, ConnectionPool(pg_dsn, min_size=1, open=True) as pool:
        apply_migrations(conn)
        reports = PostgresReports(pool, timeout=5)
        _site_windows(conn, today - timedelta(days=400), 24 * 20, step=6)  # only old rows
        for limit in (1, 7, 31, 200):
            newest = conn.execute("SELECT site_id, local_day FROM report_site_daily ORDER BY local_day DESC, site_id "
                                  "LIMIT %s", (limit,)).fetchall()
            answered = reports.site_daily(site_id=None, day_from=None, day_to=None, limit=limit)
            assert [(row["site_id"], date.fromisoformat(row["local_day"])) for row in answered] == newest, limit
        conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, device_count, event_count, "
                     "critical_count, measurements) VALUES (%s, 'utc', %s, 1, 1, 0, '{}')",
                     (today, today + timedelta(minutes=5)))  # and one recent row
        for limit, site in ((1, None), (31, None), (31, "baker")):
            newest = conn.execute("SELECT site_id, local_day FROM report_site_daily WHERE %(site)s::text IS NULL "
                                  "OR site_id = %(site)s ORDER BY local_day DESC, site_id LIMIT %(limit)s",
                                  {"site": site, "limit": limit}).fetchall()
            answered = reports.site_daily(site_id=site, day_from=None, day_to=None, limit=limit)
            assert [(row["site_id"], date.fromisoformat(row["local_day"])) for row in answered] == newest, limit


# report_device_health as 003_reporting_views.sql defined it, aggregating every window of each device, with the 24-hour
# columns over the windows holding an event of the last 24 hours (013_device_health_last_24_hours.sql), and model and
# firmware of a device devices does not list as the newest event of its windows enriched with a reference row
# carries them (016_device_reference_when_unlisted.sql): the oracle of the view over device_totals
# (010_device_totals.sql), which must give the same rows and values.
OLD_DEVICE_HEALTH = """
SELECT
    d.device_id,
    bool_or(d.known_device) AS known_device,
    (array_agg(d.site_id ORDER BY d.window_start DESC))[1] AS site_id,
    CASE WHEN ref.device_id IS NOT NULL THEN ref.model
         ELSE (SELECT e.model FROM enriched_events e JOIN device_window_stats k ON k.device_id = e.device_id
                   AND k.known_device AND e.event_time >= k.window_start AND e.event_time < k.window_end
               WHERE e.device_id = d.device_id ORDER BY e.event_time DESC LIMIT 1) END AS model,
    CASE WHEN ref.device_id IS NOT NULL THEN ref.firmware
         ELSE (SELECT e.firmware FROM enriched_events e JOIN device_window_stats k ON k.device_id = e.device_id
                   AND k.known_device AND e.event_time >= k.window_start AND e.event_time < k.window_end
               WHERE e.device_id = d.device_id ORDER BY e.event_time DESC LIMIT 1) END AS firmware,
    max(d.last_event_time) AS last_seen,
    sum(d.event_count) FILTER (WHERE d.last_event_time >= now() - interval '24 hours')::bigint AS events_24h,
    sum(d.critical_count) FILTER (WHERE d.last_event_time >= now() - interval '24 hours')::bigint AS critical_24h,
    count(*) FILTER (WHERE d.last_event_time >= now() - interval '24 hours') AS active_windows_24h,
    sum(d.event_count)::bigint AS events_total,
    sum(d.critical_count)::bigint AS critical_total,
    CASE
        WHEN max(d.last_event_time) < now() - interval '1 hour' THEN 'silent'
        WHEN coalesce(sum(d.critical_count) FILTER (WHERE d.last_event_time >= now() - interval '24 hours'), 0) > 0
            THEN 'critical'
        ELSE 'ok'
    END AS health
FROM device_window_stats d
LEFT JOIN devices ref ON ref.device_id = d.device_id
GROUP BY d.device_id, ref.device_id, ref.model, ref.firmware
"""


def assert_device_totals_exact(dsn: str) -> list[tuple]:
    """``device_totals`` equals a from-scratch aggregate of ``device_window_stats`` (a device left without windows
    keeps a row of zeros), and ``report_device_health`` equals the old view's SQL, both read in one transaction (one
    ``now()``); returns the view's rows."""
    with psycopg.connect(dsn) as conn:
        totals = conn.execute("SELECT device_id, windows, known_windows, events_total, critical_total "
                              "FROM device_totals WHERE (windows, known_windows, events_total, critical_total) "
                              "<> (0, 0, 0, 0) ORDER BY 1").fetchall()
        scratch = conn.execute("SELECT device_id, count(*), count(*) FILTER (WHERE known_device), sum(event_count), "
                               "sum(critical_count) FROM device_window_stats GROUP BY 1 ORDER BY 1").fetchall()
        view = conn.execute("SELECT * FROM report_device_health ORDER BY device_id").fetchall()
        oracle = conn.execute(f"SELECT * FROM ({OLD_DEVICE_HEALTH}) o ORDER BY device_id").fetchall()
        types = [(c.name, c.type_code) for c in conn.execute("SELECT * FROM report_device_health LIMIT 0").description]
        oracle_types = [(c.name, c.type_code) for c in conn.execute(f"{OLD_DEVICE_HEALTH} LIMIT 0").description]
    assert totals == scratch
    assert view == oracle
    assert types == oracle_types
    return view


def _device_windows(conn: psycopg.Connection, rows: list[tuple[str, datetime, bool, str | None, int, int]]) -> None:
    """device_window_stats rows: (device, window_start, known, site_id, events, critical) of 5-minute windows whose
    events lie in their window."""
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO device_window_stats (window_start, device_id, window_end, known_device, site_id, "
                        "event_count, critical_count, first_event_time, last_event_time, measurements) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, '{}')",
                        [(start, device, start + timedelta(minutes=5), known, site, events, critical,
                          start + timedelta(seconds=1), start + timedelta(seconds=1 + 7 * events))
                         for device, start, known, site, events, critical in rows])


def _mixed_history(now: datetime) -> list[tuple[str, datetime, bool, str | None, int, int]]:
    """Windows of a month ago, of yesterday and of the last hours: known, unknown and once-known devices, a device
    that moved site, one silent for days, one with critical events in the last 24 hours and one before them only."""
    old, recent = now - timedelta(days=30), now - timedelta(minutes=40)
    return [("a", old, True, "s1", 3, 0), ("a", recent, True, "s2", 4, 0),
            ("a", recent + timedelta(minutes=5), True, "s2", 2, 0),
            ("b", old, False, None, 5, 2), ("b", now - timedelta(hours=25), True, "s1", 1, 1),
            ("c", old, False, None, 7, 0), ("c", recent, False, None, 1, 0),
            ("d", recent, True, "s3", 6, 3), ("d", now - timedelta(hours=23), True, "s3", 2, 0),
            ("e", now - timedelta(days=3), True, "s1", 9, 9)]


def test_the_device_totals_backfill_of_existing_windows_is_exact(pg_dsn: str, tmp_path: Path) -> None:
    """Applied to a database that already holds windows (deployed over 009), 010 fills ``device_totals`` from them in
    one pass: the totals and the report are what the old view computed from every window."""
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(SQL_DIR.glob("00*.sql")):  # 001 to 009
        shutil.copy(path, before / path.name)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert apply_migrations(conn, before) == list(range(1, 10))
        conn.execute("INSERT INTO devices (device_id, site_id, model, firmware) VALUES ('a', 's2', 'M1', '1'), "
                     "('b', 's1', 'M2', '2'), ('d', 's3', NULL, '3')")
        _device_windows(conn, _mixed_history(now))
        before_view = conn.execute(f"SELECT * FROM ({OLD_DEVICE_HEALTH}) o ORDER BY device_id").fetchall()
        assert apply_migrations(conn)[0] == 10
    view = assert_device_totals_exact(pg_dsn)
    assert [row[:6] + row[9:] for row in view] == [row[:6] + row[9:] for row in before_view]  # (24 h: another now())
    assert {row[0]: row[-1] for row in view} == {"a": "ok", "b": "silent", "c": "ok", "d": "critical",
                                                 "e": "silent"}
    assert {row[0]: row[6:9] for row in view}["e"] == (None, None, 0)  # no window in 24 hours


def test_the_device_report_reads_the_windows_only_through_the_device_index(pg_dsn: str) -> None:
    """The view reads ``device_totals`` and, per device, its newest window, its windows of the last 24 hours and
    the newest one starting before them (it may hold the 24-hour mark) through ``device_window_stats_device``
    (device_id, window_start): never the whole history. For a device ``devices`` does not list (016), its newest
    known window too, and its last event in it through ``enriched_events_device_time`` (device_id, event_time)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        _device_windows(conn, _mixed_history(now))
        conn.execute("ANALYZE")
        conn.execute("SET enable_seqscan = off")  # on tables this small the planner would read them whole anyway
        plan = [row[0] for row in conn.execute(
            "EXPLAIN SELECT * FROM report_device_health ORDER BY last_seen DESC NULLS LAST, device_id LIMIT 50")]
    text = "\n".join(plan)
    reads = [line for line in plan if " on device_window_stats " in line]
    assert len(reads) == 4, text
    assert all("Index Scan" in line and "using device_window_stats_device" in line for line in reads), text
    assert text.count("Index Cond: (device_id = t.device_id)") == 2, text  # newest window, newest known window
    assert "One-Time Filter: ((ref.device_id IS NULL) AND (t.known_windows > 0))" in text, text
    (events,) = [line for line in plan if " on enriched_events " in line]
    assert "Index Scan" in events and "using enriched_events_device_time" in events, text
    for bound in (">", "<="):
        assert text.count(f"Index Cond: ((device_id = t.device_id) AND (window_start {bound} (now() - "
                          "'24:00:00'::interval)))") == 1, text
    assert "Seq Scan on device_window_stats" not in text and "Bitmap" not in text, text


def test_the_documented_read_only_role_reads_every_report(pg_dsn: str) -> None:
    """docs/reporting.md's recipe for BI tools, run as written: the role reads every report view and both bounded
    site reports. Granted SELECT on the views alone it could not read the site reports: since 009 and 011 they are
    inlined SQL functions, which read ``site_window_stats`` and ``sites`` with the caller's rights."""
    text = (Path(__file__).parents[2] / "docs" / "reporting.md").read_text()
    recipe = text.split("Give BI tools a read-only role:", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    role = f"bi_reader_{uuid.uuid4().hex[:10]}"
    start = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, device_count, event_count, "
                     "critical_count, measurements) VALUES (%s, 'site-a', %s, 1, 2, 1, "
                     "'{\"t\": {\"count\": 2, \"min\": 1, \"max\": 3, \"avg\": 2, \"last\": 3}}')",
                     (start, start + timedelta(minutes=5)))
        conn.execute(recipe.replace("bi_reader", role))
        try:
            conn.execute(f"SET ROLE {role}")
            counts = [conn.execute(f"SELECT count(*) FROM {source}").fetchone() for source in (
                "report_site_daily", "report_site_measurement_daily", "report_device_health", "report_unknown_devices",
                "report_site_daily_between('2026-11-20', NULL)",
                "report_site_measurement_daily_between(NULL, '2026-11-20')")]
            assert counts == [(1,), (1,), (0,), (0,), (1,), (1,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # read-only: it writes nothing
                conn.execute("DELETE FROM site_window_stats")
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_the_site_report_gives_one_row_per_site_and_local_day_when_its_zone_changed(pg_dsn: str) -> None:
    """For a site ``sites`` does not list (reference data in Parquet blobs), ``report_site_daily`` (and the
    ``/api/reports/sites`` rows) grouped by the zone each window was enriched with, so a day on which the site's
    zone changed came out as two rows of that site and day, each with part of its events (012). The day's row names
    the zone of its latest window."""
    start = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # 11:00 in Paris, 10:00 in London: the same local day
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
        for offset, zone in ((timedelta(0), "Europe/Paris"), (timedelta(hours=2), "Europe/London")):
            at = start + offset
            conn.execute("INSERT INTO site_window_stats (window_start, site_id, window_end, site_name, site_timezone, "
                         "device_count, event_count, critical_count, measurements) VALUES (%s, 'moved', %s, 'n', %s, "
                         "1, 5, 0, '{}')", (at, at + timedelta(minutes=5), zone))
        daily = conn.execute("SELECT site_id, local_day::text, event_count, timezone FROM report_site_daily "
                             "WHERE site_id = 'moved'").fetchall()
    assert daily == [("moved", "2026-11-20", 10, "Europe/London")]
