"""Start a local service as a child process and wait until it says it is ready.

Every emulator of this repository prints a line containing ``listening on HOST:PORT``
once it accepts connections (``--port 0`` makes it pick a free port and print it).
The test fixtures, the benchmarks and the one-command local stack all start
emulators through :func:`start`, so the readiness contract lives in one place.

The child is started in its own process group and stopped by its PID (SIGTERM,
then SIGKILL after ``stop_timeout``): a killed parent must never leave a server
holding a port. Until :func:`start` returns, it owns the child: whatever ends the
wait for the ready line (a timeout, an early exit, a KeyboardInterrupt) kills it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

READY = re.compile(r"listening on (?P<host>[\w.\-:\[\]]+):(?P<port>\d+)")


class LaunchError(RuntimeError):
    """The child exited or stayed silent before printing its ready line."""


@dataclass
class Running:
    """A started child process and the address it reported."""

    name: str
    process: subprocess.Popen[str]
    host: str
    port: int
    _output: deque[str] = field(default_factory=lambda: deque(maxlen=200), repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def output(self) -> str:
        """The last lines the child printed (stdout and stderr merged)."""
        return "\n".join(self._output)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, stop_timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """Stop the child: ``sig`` first, SIGKILL if it is still there after ``stop_timeout``."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(sig)
                self.process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0fs; killing it", self.name, stop_timeout)
                self.process.kill()
                self.process.wait(timeout=stop_timeout)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def start(
    name: str,
    argv: list[str],
    *,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    unset: Collection[str] = (),
    cwd: str | None = None,
    ready: re.Pattern[str] = READY,
    log: Path | None = None,
) -> Running:
    """Start ``argv`` and return once it printed a line matching ``ready``.

    The child's environment is this process's, without the names in ``unset``, with ``env`` over it.

    Every line the child prints is also appended to ``log`` as it comes, when given
    (:meth:`Running.output` keeps only the last 200).

    Raises :class:`LaunchError` with the child's output if it exits first or if
    ``timeout`` seconds pass without the ready line.
    """
    log_file = log.open("a", encoding="utf-8", buffering=1) if log is not None else None
    try:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**{name: value for name, value in os.environ.items() if name not in unset}, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    lines: deque[str] = deque(maxlen=200)
    found: dict[str, str] = {}
    ready_event = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        logging_to = log_file
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if logging_to is not None:
                try:
                    logging_to.write(line + "\n")
                except OSError as exc:  # a full disk ends the log, not the child
                    lines.append(f"(writing {log} failed: {exc!r}; the log ends here)")
                    logging_to = None
            if not ready_event.is_set():
                match = ready.search(line)
                if match:
                    found.update(match.groupdict())
                    ready_event.set()
        ready_event.set()
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()

    threading.Thread(target=pump, name=f"{name}-output", daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not ready_event.wait(0.05):
            if time.monotonic() > deadline:
                raise LaunchError(f"{name} printed no ready line within {timeout:.0f}s:\n" + "\n".join(lines))
        if not found:
            process.wait(timeout=5)
            raise LaunchError(f"{name} exited with {process.returncode} before it was ready:\n" + "\n".join(lines))
    except BaseException:
        # Nobody holds the child yet: a Ctrl-C (or SIGTERM turned into KeyboardInterrupt) during the wait must
        # not leave it running in its own session, where the terminal's signals never reach it.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait(timeout=5)
        raise
    host = found.get("host", "127.0.0.1").strip("[]")
    port = int(found.get("port", "0"))
    logger.info("%s is listening on %s:%s (pid %s)", name, host, port, process.pid)
    return Running(name=name, process=process, host=host, port=port, _output=lines)
