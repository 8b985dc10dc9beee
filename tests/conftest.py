"""Test-wide configuration: every module in tests/fixtures/ is a pytest plugin.

Fixtures that start services (the emulators, Azurite) or connect to the
machine's PostgreSQL and Redis live in ``tests/fixtures/<service>.py``; adding
a file there makes its fixtures available to every test.
"""

from __future__ import annotations

import os
import pkgutil
import threading
from collections.abc import Iterator

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



@pytest.fixture(autouse=True)
def _gauge_threads_end_with_their_test() -> Iterator[None]:
    """A gauge's reading thread (``RefreshedFigures``) that outlives its test reads with closed clients every period
    for ten minutes (its idle stop), beside the other tests on the machine's two cores: the test that started it
    must stop it (``bootstrap.reset()`` stops those it registered)."""
    from shared.adapters.refreshed_figures import THREAD_PREFIX

    def readers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)}

    before = readers()
    yield
    left = readers() - before
    for thread in left:
        thread.join(timeout=20)  # a stopped thread ends after the reading under way (an SDK's retries: about 12 s)
    running = sorted(t.name for t in left if t.is_alive())
    assert not running, f"gauge reading threads left running by the test: {running}"
