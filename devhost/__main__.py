"""``python -m devhost [--settings local.settings.json] [--port 7071] [--host 127.0.0.1] [--script-root .]``.

Prints ``listening on HOST:PORT`` once HTTP is served and every listener started
(``--port 0`` picks a free port). Exit status: 0 after a clean shutdown, 2 for a
configuration the dev host refuses (the message names the function and binding or
setting), 3 when an invocation outlived host.json's ``functionTimeout`` (the host
exits, as the Functions host restarts), 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

from devhost.errors import DevHostError
from devhost.host import HostConfig, run
from devhost.settings import tcp_port

# glibc gives each thread that allocates an arena of its own, up to eight per core, and
# hands memory back only when a whole region of an arena is free, so the resident size of
# a long-running process with many threads creeps up. The image sets MALLOC_ARENA_MAX=2 for
# the Functions host and its worker (Dockerfile); the dev host, which stands in for both,
# limits itself the same way before its first thread (docs/configuration.md#the-worker-process).
M_ARENA_MAX = -8  # <malloc.h>
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Limit glibc's malloc to ``arenas`` arenas, unless ``MALLOC_ARENA_MAX`` is set; True if limited here.

    Call it before the process starts threads: glibc fixes the limit when it first needs
    an arena beyond its first eight.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False  # glibc read it when the process started
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to limit this way
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def _port(text: str) -> int:
    try:
        return tcp_port(text, "")
    except DevHostError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):  # float() takes "nan", "inf" and negatives: none is a wait
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


# The .NET level names (Microsoft.Extensions.Logging.LogLevel, as host.json's logging.logLevel spells them) beside
# Python's own; "None" logs nothing.
_DOTNET_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "information": logging.INFO,
                  "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
                  "none": logging.CRITICAL + 1}
_PYTHON_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> int:
    """A log level: a Python level name or a .NET one, in any case."""
    name = text.strip()
    if name.upper() in _PYTHON_LEVELS:
        return logging.getLevelNamesMapping()[name.upper()]
    if name.lower() in _DOTNET_LEVELS:
        return _DOTNET_LEVELS[name.lower()]
    raise argparse.ArgumentTypeError(f"{text!r} is not a log level (one of {', '.join(_PYTHON_LEVELS)}, or the .NET "
                                     "Trace, Debug, Information, Warning, Error, Critical, None; any case)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__.split("\n\n")[1])
    parser.add_argument("--script-root", type=Path, default=Path("."),
                        help="the function app's directory (function_app.py, host.json); default: .")
    parser.add_argument("--settings", type=Path, default=None,
                        help="local.settings.json to apply; default: <script root>/local.settings.json if it exists")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address to bind; default 127.0.0.1")
    parser.add_argument("--port", type=_port, default=None,
                        help="HTTP port; default Host.LocalHttpPort of the settings, else 7071; 0 picks a free one")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=60.0,
                        help="seconds to let invocations in progress finish on SIGINT/SIGTERM; default 60")
    parser.add_argument("--log-level", type=_log_level, default=os.environ.get("DEVHOST_LOG_LEVEL", "INFO"),
                        help="log level of the dev host and the functions: DEBUG, INFO, WARNING, ERROR, CRITICAL or "
                             "the .NET Trace ... None, any case; default DEVHOST_LOG_LEVEL, else INFO")
    return parser.parse_args(argv)


def configure_logging(level: int) -> QueueListener:
    """Log to stdout from a background thread: a write to a slow pipe must not stall the event loop.

    Returns the listener; stop it before exiting so every record is written.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, handler)
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(level)
    # The SDKs log every request and AMQP frame at INFO; the Functions host filters them too.
    for noisy in ("azure", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    listener.start()
    return listener


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    args = parse_args(argv)
    listener = configure_logging(args.log_level)
    config = HostConfig(script_root=args.script_root, settings=args.settings, host=args.host, port=args.port,
                        shutdown_timeout=args.shutdown_timeout)
    try:
        status = asyncio.run(run(config))
    except DevHostError as exc:
        listener.stop()
        print(f"devhost: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        status = 130
    finally:
        if listener._thread is not None:
            listener.stop()
    if status != 0:
        sys.stdout.flush()
        os._exit(status)  # threads of functions still running must not keep the process alive
    return status


if __name__ == "__main__":
    sys.exit(main())
