"""``python -m sluice.reaper``: stop a ``sluice up`` stack whose ``up`` was killed before it could stop it.

Every child of ``up`` runs in a session of its own (so a Ctrl-C reaches ``up`` only, which
then stops them in order), which also means nothing stops them when ``up`` itself is
killed (``kill -9``, the OOM killer): they would keep running and holding their ports.
Linux's parent-death signal does not help (it follows the thread that started a child,
and ``runuser`` drops it).

So ``up`` starts this process first, in a session of its own, with a pipe on its standard
input, and puts a marker in its own environment, which every process it starts from then
on inherits (emulators, Azurite, the dev host and its workers, the load generator, a Redis
Cluster). The reaper only reads the pipe. ``up`` writes ``done`` to it once its own stop has
run; if instead the pipe ends without it, ``up`` died: the reaper finds every process whose
environment holds the marker, sends it SIGTERM, and SIGKILL to those still there after
``--grace`` seconds, saying what it did in its log. The environment, not a list of process
ids, names the stack's processes: a pid list could name a process that ended and whose pid
was reused, and it would miss the grandchildren (the dev host's workers).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER = "SLUICE_STACK_ID"
"""The environment variable ``up`` sets for its children; its value names one run."""
DONE = b"done"


def unmarked_environ() -> dict[str, str]:
    """This process's environment without the marker: for what the reaper must not stop (a PostgreSQL or Redis left
    to the next ``up``, a system service)."""
    return {name: value for name, value in os.environ.items() if name != MARKER}


def marked(marker: str, *, proc: Path = Path("/proc"), exclude: Iterable[int] = ()) -> list[int]:
    """The pids of the processes whose environment holds ``MARKER=marker`` (those we may read)."""
    wanted = f"{MARKER}={marker}".encode()
    skip = {os.getpid(), *exclude}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's process
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def reap(marker: str, *, grace: float, say: Callable[[str], None] = print) -> list[int]:
    """SIGTERM every process marked ``marker``, SIGKILL those left after ``grace`` seconds; the pids found."""
    found = marked(marker)
    if not found:
        say("no process of the stack was left")
        return found
    say(f"stopping {len(found)} processes of the stack: " + ", ".join(f"{pid} ({_name(pid)})" for pid in found))
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := [pid for pid in found if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        say(f"still running after {grace:g} s, killed: {', '.join(map(str, left))}")
        _signal(left, signal.SIGKILL)
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.reaper", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--marker", required=True, help=f"the value of {MARKER} in the stack's processes")
    parser.add_argument("--up-pid", type=int, required=True, help="the pid of the `sluice up` watched (for the log)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL (default 20)")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # only the end of the pipe decides
        signal.signal(sig, signal.SIG_IGN)

    def say(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} reaper: {line}", flush=True)

    said = sys.stdin.buffer.read()
    if said.strip().endswith(DONE):
        return 0
    say(f"sluice up (pid {args.up_pid}) ended without stopping its stack")
    reap(args.marker, grace=args.grace, say=say)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
