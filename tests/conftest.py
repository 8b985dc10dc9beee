"""Test-wide configuration: every module in tests/fixtures/ is a pytest plugin.

Fixtures that start services (the emulators, Azurite) or connect to the
machine's PostgreSQL and Redis live in ``tests/fixtures/<service>.py``; adding
a file there makes its fixtures available to every test.
"""

from __future__ import annotations

import os
import pkgutil

import pytest

from tests import fixtures

DEFAULT_WORKERS = 4

pytest_plugins = [f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules(fixtures.__path__)]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many pytest-xdist workers ``-n auto`` (pyproject's addopts) starts.

    Most tests wait on child processes (emulators, dev hosts, Azurite, PostgreSQL),
    not on the CPU, so more workers than cores pay (4 on a 2-core machine: the whole
    suite in about a quarter of its serial time). ``SLUICE_TEST_WORKERS`` sets the
    number (0: no workers, everything in this process, as before). A run of one test
    file needs no workers: it would only pay for starting them and their session
    fixtures (every worker starts its own emulators). ``--dist loadfile`` keeps a
    module's tests on one worker, so a module-scoped fixture (a module's own emulator
    or dev host, the packaging tests' virtual environments) is set up once.
    """
    wanted = os.environ.get("SLUICE_TEST_WORKERS")
    if wanted:
        return int(wanted)
    named = {str(arg).split("::")[0] for arg in config.args}
    if len(named) == 1 and next(iter(named)).endswith(".py"):
        return 0
    return DEFAULT_WORKERS

