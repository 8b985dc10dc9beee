"""``python -m sluice up`` against the machine's PostgreSQL and Redis (``--use-existing-services``): what ``--fresh``
deletes there. Those servers are shared with other stacks and applications, so ``--fresh`` must delete what this
stack uses and nothing else. Each test makes its own databases and keys, and deletes them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis
from rich.console import Console

from sluice.commands.up import _forget
from sluice.localstack import ROOT, LocalStack, StackError, StackOptions, free_port
from tests.fixtures.services import PG_ADMIN_DSN, create_database, drop_database


def existing_services(redis_url: str, **options: Any) -> StackOptions:
    """Options for a stack on the machine's services, at the address the tests reach them."""
    admin = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    return StackOptions(redis_url=redis_url, use_existing_services=True, postgres_host=str(admin["host"]),
                        postgres_port=int(admin.get("port") or 5432), **options)


def forget(options: StackOptions) -> None:
    """What ``up --fresh`` runs once the machine's services answer."""
    _forget(cast(LocalStack, types.SimpleNamespace(options=options)), Console(quiet=True))


def databases(*names: str) -> set[str]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                               (list(names),))}


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on (``up --strict-ports`` stops there, after the services are checked)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def up(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m sluice up ARGV`` with none of this shell's settings."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("SLUICE_") and name not in ("AzureWebJobsStorage", "EventHubConnection")}
    return subprocess.run([sys.executable, "-m", "sluice", "up", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture
def database() -> Iterator[str]:
    name = create_database("sluice_up")
    try:
        yield name
    finally:
        drop_database(name)


def test_fresh_deletes_the_redis_keys_of_its_prefix_and_no_others(redis_url: str, database: str) -> None:
    """``--fresh`` promises to delete "the Redis keys under the prefix" (docs/local-stack.md). It scanned with
    ``MATCH <prefix>*``, the prefix read as a glob pattern, and a prefix the settings accept (only ``{`` and ``}``
    are refused) may hold glob characters: with ``--redis-prefix 'rv[1]:'`` it deleted another application's key
    ``rv1:...`` and kept the stack's own ``rv[1]:...``."""
    tag = uuid.uuid4().hex[:8]
    ours, theirs = f"up{tag}[1]:latest", f"up{tag}1:latest"
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(ours, "the stack's own")
        client.set(theirs, "another application's")
        forget(existing_services(redis_url, redis_prefix=f"up{tag}[1]:", database=database))
        assert client.get(theirs) == b"another application's", "a key outside the prefix was deleted"
        assert client.get(ours) is None, "the stack's own key under the prefix was kept"
    finally:
        client.delete(ours, theirs)
        client.close()


def test_fresh_drops_and_up_creates_the_database_the_settings_name(redis_url: str, database: str) -> None:
    """``--set NAME=VALUE`` "overrides any setting in the generated file" (docs/local-stack.md), and the dev host,
    the migrations and the reference loader then use ``--set SLUICE_POSTGRES_DBNAME=mine``. ``--fresh`` dropped
    ``--database`` instead (another stack's, or the operator's ``sluice``) and left the stale ``mine``, and ``up``
    created ``--database``, not ``mine``. Both now act on the database the settings name."""
    mine = f"sluice_up_mine_{uuid.uuid4().hex[:8]}"
    options = existing_services(redis_url, redis_prefix=f"sluice-up:{uuid.uuid4().hex[:8]}:", database=database,
                                overrides={"SLUICE_POSTGRES_DBNAME": mine})
    try:
        assert LocalStack(options, say=lambda _: None).create_database()
        assert databases(mine, database) == {mine, database}
        forget(options)
        assert databases(mine, database) == {database}, "--fresh dropped a database the stack does not use"
    finally:
        drop_database(mine)


def test_an_address_set_for_the_machines_services_is_the_one_checked_and_never_started(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--use-existing-services``, ``up`` checked (and, not answering, started with ``pg_ctlcluster``) the
    machine's PostgreSQL on 127.0.0.1:5432 and Redis at the default URL, whatever ``--set SLUICE_POSTGRES_HOST/PORT``
    or ``SLUICE_REDIS_URL`` named; the database was then created there, not on the server the settings name. The
    address given is the one checked; not answering, it is refused by name, and nothing is started for it."""
    from sluice import localstack

    started: list[list[str]] = []
    monkeypatch.setattr(localstack, "_run", lambda argv, what: started.append(argv))
    postgres = LocalStack(existing_services(redis_url, overrides={"SLUICE_POSTGRES_PORT": str(free_port())}),
                          say=lambda _: None)
    with pytest.raises(StackError, match="SLUICE_POSTGRES_PORT"):
        postgres.ensure_postgres()
    stale = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StackError, match="SLUICE_REDIS_URL"):
        LocalStack(existing_services(redis_url, overrides={"SLUICE_REDIS_URL": stale}), say=lambda _: None
                   ).ensure_redis()
    assert started == []


@pytest.mark.parametrize(("options", "named"), [
    ({}, "SLUICE_POSTGRES_HOST"),
    ({"use_existing_services": True, "redis_cluster": True}, "SLUICE_REDIS_URL"),
])
def test_an_address_set_for_services_up_runs_itself_is_refused_before_anything_starts(
        options: dict[str, Any], named: str) -> None:
    """Our own PostgreSQL and Redis and a ``--redis-cluster`` have addresses of their own: an address ``--set``
    gives would send the settings to a server other than the one ``up`` starts and creates the database on."""
    overrides = {"SLUICE_POSTGRES_HOST": "db.example", "SLUICE_REDIS_URL": "redis://cache.example:6379/0"}
    with pytest.raises(StackError, match=named):
        StackOptions(overrides=overrides, **options)


def test_fresh_with_an_empty_redis_prefix_deletes_no_key_of_the_machines_redis(
        redis_url: str, tmp_path: Path, held_port: int) -> None:
    """``--redis-prefix ''`` was accepted (only ``--set SLUICE_REDIS_KEY_PREFIX=`` was refused as empty), and
    ``--fresh`` then scanned ``MATCH *`` and deleted every key of the machine's Redis, another application's
    included; the stack itself then ran with the settings' default prefix. It is refused before anything starts."""
    client = redis.Redis.from_url(redis_url)
    theirs = f"another-app:{uuid.uuid4().hex}"
    client.set(theirs, "not the stack's")
    try:
        result = up("--use-existing-services", "--fresh", "--redis-prefix", "", "--set",
                    f"SLUICE_REDIS_URL={redis_url}", "--database", f"sluice_up_{uuid.uuid4().hex[:8]}",
                    "--data-dir", str(tmp_path / "stack"), "--no-load", "--strict-ports",
                    "--azurite-port", str(held_port))
        assert result.returncode != 0, result.stdout + result.stderr  # it stops at the held Azurite port at the latest
        assert client.get(theirs) == b"not the stack's", (
            "up --fresh --redis-prefix '' deleted a key of another application:\n" + result.stdout + result.stderr)
    finally:
        client.delete(theirs)
        client.close()


def test_a_set_naming_no_setting_is_refused_before_anything_starts_naming_the_closest(
        redis_url: str, tmp_path: Path, held_port: int) -> None:
    """A ``--set`` name that is no setting (a typo of the very setting the Troubleshooting section tells a newcomer
    to raise) was written into local.settings.json and ignored by every reader (``extra="ignore"``): the stack ran
    with the default and nothing said why. Names of the host and the SDKs are not the settings' to check."""
    typo = "SLUICE_ENRICH_ALLOWED_LATENESS_SECOND"
    result = up("--use-existing-services", "--set", f"SLUICE_REDIS_URL={redis_url}", "--set", f"{typo}=120",
                "--set", "FUNCTIONS_WORKER_RUNTIME=python", "--database", f"sluice_up_{uuid.uuid4().hex[:8]}",
                "--redis-prefix", f"sluice-up:{uuid.uuid4().hex[:8]}:", "--data-dir", str(tmp_path / "stack"),
                "--no-load", "--strict-ports", "--azurite-port", str(held_port))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output  # stops at the held Azurite port at the latest
    assert f"--set {typo}: no such setting (did you mean {typo}S?)" in output, output
    assert not (tmp_path / "stack").exists(), "the stack started before the --set was refused"
    with pytest.raises(StackError, match=r"sluice_redis_url: no such setting \(did you mean SLUICE_REDIS_URL\?\)"):
        StackOptions(overrides={"sluice_redis_url": redis_url})  # read by the settings, but not by `up` itself
    StackOptions(overrides={"SLUICE_ENRICH_ALLOWED_LATENESS_SECONDS": "120", "AzureWebJobsFeatureFlags": "x",
                            "OTEL_SERVICE_NAME": "sluice"})


@pytest.mark.parametrize("option", ["--database", "--keyspace", "--redis-prefix"])
def test_an_empty_name_is_refused_naming_the_option_not_a_traceback(
        option: str, redis_url: str, tmp_path: Path, held_port: int) -> None:
    """``--database ''`` reached ``DROP DATABASE IF EXISTS ""`` (``--fresh``; without it ``CREATE DATABASE ""``):
    psycopg's traceback instead of an ``error:`` line. An empty name is refused as an empty ``--set`` is: the
    settings would read their own default instead."""
    names = {"--database": f"sluice_up_{uuid.uuid4().hex[:8]}", "--keyspace": "sluice",
             "--redis-prefix": f"sluice-up:{uuid.uuid4().hex[:8]}:"}
    names[option] = ""
    result = up("--use-existing-services", "--fresh", *(arg for item in names.items() for arg in item),
                "--set", f"SLUICE_REDIS_URL={redis_url}", "--data-dir", str(tmp_path / "stack"), "--no-load",
                "--strict-ports", "--azurite-port", str(held_port))
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2 and f"error: {option} '' is empty" in output, output
    with pytest.raises(StackError, match=option):
        StackOptions(**{option.removeprefix("--").replace("-", "_"): " "})
