"""The dev host limits glibc's malloc arenas as the image's ``MALLOC_ARENA_MAX=2`` does.

Each case runs in a process of its own (the limit is per process and fixed once glibc
needs a ninth arena): it optionally calls ``limit_malloc_arenas``, has eight threads
allocate at the same time, and counts the arenas glibc reports (``malloc_info``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import ctypes, json, sys, tempfile, threading
from devhost.__main__ import limit_malloc_arenas

limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
barrier = threading.Barrier(9)

def allocate():
    blocks = [bytearray(4096) for _ in range(200)]  # past pymalloc: from this thread's arena
    barrier.wait()  # every thread holds its arena at once
    barrier.wait()
    del blocks

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
barrier.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    arenas = open(report.name).read().count("<heap nr=")
barrier.wait()
for thread in threads:
    thread.join()
print(json.dumps({"limited": limited, "arenas": arenas}))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas are Linux's")


def probe(mode: str, **env: str) -> dict[str, object]:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_without_the_limit_each_thread_gets_an_arena() -> None:
    # The baseline the next test is measured against: glibc's own default here.
    assert probe("none")["arenas"] >= 5


def test_the_dev_host_limits_itself_to_two_arenas() -> None:
    assert probe("limit") == {"limited": True, "arenas": 2}


def test_a_limit_in_the_environment_is_left_as_it_is() -> None:
    result = probe("limit", MALLOC_ARENA_MAX="4")
    assert result == {"limited": False, "arenas": 4}
