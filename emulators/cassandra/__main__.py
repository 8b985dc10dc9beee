"""``python -m emulators.cassandra``: run the Cosmos DB for Apache Cassandra emulator in the foreground.

Prints ``listening on HOST:PORT`` once it accepts connections; SIGINT/SIGTERM
stop it cleanly (with ``--data-dir``, after writing a snapshot). A ``--data-dir``
another emulator is using, or whose journal is damaged, stops it before it
starts (``error: ...``, exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import ssl
import sys
from pathlib import Path

from emulators.arguments import port
from emulators.directories import ensure_directory

from .engine import Engine
from .persistence import Journal, JournalDamaged, lock_data_dir
from .server import Credentials, serve

logger = logging.getLogger("emulators.cassandra")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emulators.cassandra", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=9042, help="0 picks a free port (printed)")
    p.add_argument("--username", help="require PasswordAuthenticator login (with --password)")
    p.add_argument("--password")
    p.add_argument("--password-file", help="read the password from this file at every log-in (instead of --password)")
    p.add_argument("--data-dir", help="persist data and the change feed here (default: in memory)")
    p.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.password and args.password_file:
        p.error("--password and --password-file exclude each other")
    if (args.username is None) != (args.password is None and args.password_file is None):
        p.error("--username and --password go together (or --username and --password-file)")
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    return args


class _CannotListen(Exception):
    """The server could not bind its address (a port taken, an address not of this machine)."""


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server's TLS context; ValueError naming the files when they cannot be read as a certificate chain and its
    key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: cannot load them as a PEM certificate chain and its "
                         f"key: {getattr(exc, 'strerror', None) or exc}") from None
    return context


async def run(args: argparse.Namespace, ssl_context: ssl.SSLContext | None = None) -> int:
    engine = Engine(address=args.host)
    journal = None
    if args.data_dir:
        journal = Journal(args.data_dir)
        journal.load(engine)  # JournalDamaged: nothing was changed on disk
        engine.journal = journal
        gc.freeze()  # what was loaded lives until exit: keep it out of every future collection
    credentials = Credentials(args.username, args.password, args.password_file) if args.username else None
    try:
        server = await serve(engine, args.host, args.port, credentials=credentials, ssl_context=ssl_context)
    except OSError as exc:
        raise _CannotListen(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    sock = server.sockets[0].getsockname()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    flusher = asyncio.create_task(journal.flush_periodically()) if journal else None
    print(f"Cosmos DB Cassandra emulator listening on {sock[0]}:{sock[1]}"
          f"{' (TLS)' if ssl_context else ''}{' (auth)' if credentials else ''}", flush=True)
    await stop.wait()
    logger.info("stopping")
    server.close()
    if flusher:
        flusher.cancel()
    if journal:
        journal.snapshot(engine)
        journal.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Stored rows are long-lived objects; the default thresholds (700, 10, 10) would walk them over and over
    # while a write-heavy load creates short-lived ones, which made inserts ~2x slower.
    gc.set_threshold(50_000, 20, 100)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # what can be checked before anything starts: an error naming the option, exit 2, as the other emulators
        if args.data_dir:
            ensure_directory("--data-dir", Path(args.data_dir))
            # held until the process ends: a second emulator on the directory would append to the same journal
            # and each clean stop would snapshot only its own writes, losing the other's
            lock_data_dir(Path(args.data_dir))
        ssl_context = _tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args, ssl_context))
    except _CannotListen as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JournalDamaged as exc:
        print(f"error: --data-dir {args.data_dir}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
