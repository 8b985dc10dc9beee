"""``migrate``: apply the versioned schema migrations (Cassandra and/or PostgreSQL), idempotently."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("migrate", help="apply schema migrations (safe to run again)")
    parser.add_argument("target", choices=["cassandra", "postgres", "all"], nargs="?", default="all")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared import bootstrap

    if args.target in ("cassandra", "all"):
        from shared.adapters.cassandra.migrations import apply_migrations

        applied = apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
        print(f"cassandra: applied {applied or 'nothing (up to date)'}")
    if args.target in ("postgres", "all"):
        from shared.adapters.postgres.migrations import apply_migrations as apply_pg

        with bootstrap.postgres_pool().connection() as conn:
            applied = apply_pg(conn)
        print(f"postgres: applied {applied or 'nothing (up to date)'}")
    return 0
