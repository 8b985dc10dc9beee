"""``python -m sluice <command> [options]``: operations on a Sluice deployment or the local stack."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
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
    except SluiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        store = unreachable(exc)
        if store is None:
            raise
        print(f"error: {store} unavailable: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        bootstrap.interactive(was_interactive)


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
