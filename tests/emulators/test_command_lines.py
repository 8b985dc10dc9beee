"""Each emulator refuses a port out of range as an argument error naming ``--port``, before it binds."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("emulator", ["cassandra", "eventhubs", "keyvault"])
@pytest.mark.parametrize("port", ["70000", "-1", "amqp"])
def test_a_port_out_of_range_is_an_argument_error(emulator: str, port: str) -> None:
    """``--port 70000`` reached ``bind()`` and died with an OverflowError traceback; now argparse refuses it and
    exits 2."""
    done = subprocess.run([sys.executable, "-m", f"emulators.{emulator}", "--port", port],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"argument --port: '{port}'" in done.stderr
    assert "Traceback" not in done.stderr
