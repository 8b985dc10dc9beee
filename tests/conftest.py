"""Test-wide configuration: every module in tests/fixtures/ is a pytest plugin.

Fixtures that start services (the emulators, Azurite) or connect to the
machine's PostgreSQL and Redis live in ``tests/fixtures/<service>.py``; adding
a file there makes its fixtures available to every test.
"""

from __future__ import annotations

import pkgutil

from tests import fixtures

pytest_plugins = [f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules(fixtures.__path__)]
