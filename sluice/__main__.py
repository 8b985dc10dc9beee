"""``python -m sluice <command> [options]``: operations on a Sluice deployment or the local stack."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys

from shared.exceptions import SluiceError
from sluice import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sluice", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"sluice.commands.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    # A command is no worker to scrape: settings.env (or the pod's ConfigMap) names the dev host's or the
    # worker's metrics port, which a command would only fail to bind beside it. `up` passes the port to the
    # dev host itself.
    os.environ.pop("SLUICE_METRICS_PORT", None)
    from shared import bootstrap

    # Someone is waiting: a storage account that is down is an error in seconds, not after the SDK's minute of
    # retries (the worker's choice again afterwards, for a caller in the same process: the tests).
    was_interactive = bootstrap.interactive(True)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        missing = schema_missing(exc)
        if missing is not None:
            return error(missing, exc)
        if isinstance(exc, SluiceError):
            return error(str(exc), exc)
        store = unreachable(exc)
        if store is None:
            raise
        return error(f"{store} unavailable: {type(exc).__name__}: {exc}", exc)
    finally:
        bootstrap.interactive(was_interactive)


def error(message: str, exc: BaseException) -> int:
    """Say ``message`` on one ``error:`` line (a driver's or SDK's text spans lines: an AMQP error's condition and
    description), the whole of it and the traceback at DEBUG (``-v``); the exit status for it, 2."""
    logging.getLogger("sluice").debug("the command failed: %s", message, exc_info=exc)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def schema_missing(exc: BaseException) -> str | None:
    """What to say when ``exc`` (or the error it was raised from: an adapter wraps the driver's) is a store's answer
    that a table, column or keyspace is not there: the migrations have not run on that database or keyspace (a new
    server, a wrong ``SLUICE_POSTGRES_DBNAME`` or ``SLUICE_CASSANDRA_KEYSPACE``), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        psycopg_errors = sys.modules.get("psycopg.errors")
        if psycopg_errors is not None and isinstance(seen, (psycopg_errors.UndefinedTable,
                                                            psycopg_errors.UndefinedColumn,
                                                            psycopg_errors.InvalidSchemaName)):
            first = str(seen).strip().splitlines()
            return (f"PostgreSQL schema missing ({first[0] if first else type(seen).__name__}): "
                    f"run python -m sluice migrate postgres")
        cassandra_protocol = sys.modules.get("cassandra.protocol")
        if cassandra_protocol is not None and isinstance(seen, cassandra_protocol.InvalidRequest):
            text = " ".join(str(seen).split())
            if _CASSANDRA_MISSING.search(text):
                # the driver's 'Error from server: code=2200 ... message=".."'
                said = re.search(r'message="(.*)"', text)
                return (f"Cassandra schema missing ({said[1] if said else text}): "
                        f"run python -m sluice migrate cassandra")
        seen = seen.__cause__
    return None


# The server's words for a keyspace, table or column that is not there (Cassandra: "Keyspace x does not exist",
# "Keyspace 'x' does not exist" (USE), "Keyspace x doesn't exist" (DDL), "unconfigured table x", "table x does not
# exist", "Undefined column name x" (4.x adds "in table ks.t": a keyspace one migration behind); Cosmos DB's
# Cassandra API: "Resource Not Found"). Only these: another InvalidRequest is not a missing schema.
_CASSANDRA_MISSING = re.compile(r"\b(?:keyspace|table) \S+ (?:does not|doesn't) exist|\bunconfigured table\b|"
                                r"\bundefined column name\b|\bresource not found\b", re.IGNORECASE)


def unreachable(exc: BaseException) -> str | None:
    """The store whose client raised ``exc`` because it could not reach it (the drivers' own errors, not wrapped on
    these paths; a pool that timed out is an OperationalError too), else None. A driver that raised is imported:
    it is looked up, not imported here, so a command that never touches it does not load it. (Blob storage's SDK
    errors are mapped where they are raised, by the adapters, to a ``DependencyUnavailable`` naming the blob.)"""
    cassandra = sys.modules.get("cassandra.cluster")
    if cassandra is not None and isinstance(exc, cassandra.NoHostAvailable):
        return "Cassandra"
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return "PostgreSQL"
    return None


if __name__ == "__main__":
    sys.exit(main())
