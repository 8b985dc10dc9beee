"""``python -m emulators.keyvault --cert-dir DIR [--host H] [--port P] [--data-dir D] [--secrets-file F.json]``.

Serves HTTPS with a fresh local CA written to ``DIR/ca.pem`` (give it to clients
as ``SLUICE_KEYVAULT_CA_FILE``), prints ``listening on HOST:PORT`` once it accepts
connections, and exits 0 on SIGINT or SIGTERM (2 on a bad command line, secrets
file, data directory or certificate directory: the message names the option and the
path).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from emulators.arguments import port
from emulators.directories import ensure_directory
from emulators.keyvault.server import create_app
from emulators.keyvault.store import Vault, apply_seed, load_seed
from emulators.keyvault.tls import server_context

logger = logging.getLogger("emulators.keyvault")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.keyvault",
                                     description="Key Vault secrets emulator (HTTPS) for azure-keyvault-secrets.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=8443, help="HTTPS port (default 8443; 0 picks a free port)")
    parser.add_argument("--cert-dir", type=Path, required=True,
                        help="where to write ca.pem, the CA bundle clients must trust")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the vault in DIR/vault.json, so secrets survive a restart")
    parser.add_argument("--secrets-file", type=Path, default=None,
                        help='JSON object of secrets to set at start-up: {"name": "value", ...}')
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def build_vault(args: argparse.Namespace) -> Vault:
    if args.data_dir:
        ensure_directory("--data-dir", args.data_dir, private=True)  # vault.json holds every secret's value
    vault = Vault(args.data_dir)
    if args.secrets_file:
        changed = apply_seed(vault, load_seed(args.secrets_file))
        logger.info("secrets file %s: %d secrets set", args.secrets_file, changed)
    return vault


async def serve(args: argparse.Namespace, vault: Vault, context: ssl.SSLContext, ca_file: Path) -> None:
    runner = web.AppRunner(create_app(vault), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port, ssl_context=context)
        await site.start()
        host, port = runner.addresses[0][:2]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shown = f"[{host}]" if ":" in host else host
        print(f"Key Vault emulator: vault url https://{shown}:{port}/ ca file {ca_file}", flush=True)
        print(f"Key Vault emulator listening on {shown}:{port}", flush=True)
        await stop.wait()
        logger.info("signal received, stopping")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ensure_directory("--cert-dir", args.cert_dir)
        vault = build_vault(args)
        try:
            context, ca_file = server_context(args.cert_dir, args.host)
        except OSError as exc:  # ca.pem cannot be written: not a listening problem
            raise ValueError(f"--cert-dir {args.cert_dir}: cannot write {exc.filename or 'the CA bundle'}: "
                             f"{exc.strerror or exc}") from None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args, vault, context, ca_file))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
