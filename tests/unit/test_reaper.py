"""The reaper of a killed `sluice up`: it stops exactly the processes marked with its run, and only when `up`
died without saying `done`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sluice.launcher import python_module
from sluice.reaper import MARKER, marked


def _sleeper(marker: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    if marker is not None:
        env[MARKER] = marker
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def _reaper(marker: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(python_module("sluice.reaper", "--marker", marker, "--up-pid", "1", "--grace", "5"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_the_end_of_the_pipe_without_done_stops_the_marked_processes_only() -> None:
    ours, other_run, unmarked = _sleeper("run-a"), _sleeper("run-b"), _sleeper(None)
    try:
        assert marked("run-a") == [ours.pid]
        reaper = _reaper("run-a")
        assert reaper.stdin is not None and reaper.stdout is not None
        reaper.stdin.close()  # as when `up` is killed: the kernel closes its end
        out = reaper.stdout.read()
        assert reaper.wait(timeout=20) == 0
        assert ours.wait(timeout=10) == -15, "not stopped with SIGTERM"
        assert other_run.poll() is None and unmarked.poll() is None
        assert f"{ours.pid} (" in out.decode(), out
    finally:
        for process in (ours, other_run, unmarked):
            process.kill()
            process.wait()


def test_done_means_up_stopped_its_stack_itself_and_nothing_is_touched() -> None:
    """A child `up` chose to keep (none today) or one whose stop failed is `up`'s to report, not the reaper's to
    kill after a stop that ran."""
    ours = _sleeper("run-c")
    try:
        reaper = _reaper("run-c")
        reaper.communicate(b"done\n", timeout=20)
        time.sleep(0.2)
        assert reaper.returncode == 0 and ours.poll() is None
    finally:
        ours.kill()
        ours.wait()
