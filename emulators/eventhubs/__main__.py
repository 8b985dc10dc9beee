"""``python -m emulators.eventhubs --config PATH [--host H] [--port P] [--data-dir DIR]``.

Runs in the foreground, prints ``listening on HOST:PORT`` once it accepts
connections, and exits 0 on SIGINT or SIGTERM (exit 2 on a bad command line,
configuration, ``--data-dir`` or partition log, or a port it cannot bind: the
message names the option, file or address).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from emulators.arguments import port
from emulators.directories import ensure_directory
from emulators.eventhubs import config
from emulators.eventhubs.errors import ConfigError, StorageError
from emulators.eventhubs.server import Server

logger = logging.getLogger("emulators.eventhubs")

DEFAULT_CONFIG = Path(__file__).with_name("config.json")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.eventhubs",
                                     description="Event Hubs emulator (AMQP 1.0) for the azure-eventhub SDK.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="Config.json in Microsoft's Event Hubs emulator format (default: the packaged one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=5672, help="AMQP port (default 5672; 0 picks a free port)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep events in append-only files here, so they survive a restart")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    namespace = config.load(args.config)
    server = Server(namespace, host=args.host, port=args.port, data_dir=args.data_dir)
    host, port = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Event Hubs emulator (namespace {namespace.name}) listening on {host}:{port}", flush=True)
    await stop.wait()
    logger.info("signal received, stopping")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.data_dir is not None:
            ensure_directory("--data-dir", args.data_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # a partition log that cannot be created, read or trusted: not a listening problem
        print(f"error: --data-dir {args.data_dir}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
