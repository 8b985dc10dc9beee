"""The layering of docs/architecture.md fails CI: ruff's banned imports (TID251), run on a file placed in each layer.

Each case writes a one-line module into a layer's directory (under a name no
one uses), runs ``ruff check`` on it with the repository's configuration, and
expects the violation, and that the same layer accepts an import it is allowed.
``function_app.py`` sits at the root, outside the nested configurations: it is
checked here by reading its imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = Path(sys.executable).with_name("ruff")


def ruff(directory: str, source: str) -> subprocess.CompletedProcess[str]:
    path = ROOT / directory / f"_layering_probe_{uuid.uuid4().hex[:8]}.py"
    path.write_text(f"{source}\n")
    try:
        return subprocess.run([str(RUFF), "check", "--no-cache", "--select", "TID251", "--output-format", "concise",
                               str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    finally:
        path.unlink()


VIOLATIONS = [
    ("shared/domain", "from shared.ports.feed import FeedPage", "shared.ports"),
    ("shared/domain", "from shared.adapters.cassandra.query import Queries", "shared.adapters"),
    ("shared/domain", "import cassandra.cluster", "cassandra"),
    ("shared/domain", "from azure.storage.blob import BlobClient", "azure.storage"),
    ("shared/services", "from shared.adapters.redis import RedisChangeSink", "shared.adapters"),
    ("shared/services", "import redis", "redis"),
    ("shared/services", "import psycopg", "psycopg"),
    ("shared/ports", "from shared.adapters.cassandra import reader", "shared.adapters"),
    ("functions", "from shared.adapters.cassandra.reader import CassandraEventReader", "shared.adapters"),
    ("functions", "from shared.domain.events import RawRecord", "shared.domain"),
    ("functions", "from shared.settings import Settings", "shared.settings"),
    ("functions", "from azure.eventhub import EventData", "azure.eventhub"),
    ("shared/adapters", "from tests.fixtures.cassandra import start_cassandra_emulator", "tests"),
    ("shared", "from emulators.cassandra.faults import inject_faults", "emulators"),
    ("sluice", "import devhost", "devhost"),
    ("functions", "from bench.ingest import main", "bench"),
]


@pytest.mark.parametrize(("directory", "source", "banned"), VIOLATIONS,
                         ids=[f"{d}:{b}" for d, _, b in VIOLATIONS])
def test_a_layering_violation_fails_ruff(directory: str, source: str, banned: str) -> None:
    result = ruff(directory, source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"`{banned}` is banned" in result.stdout


@pytest.mark.parametrize(("directory", "source"), [
    ("shared/domain", "from shared.domain.times import utc"),
    ("shared/services", "from shared.ports.feed import FeedPage"),
    ("shared/adapters", "import cassandra.cluster"),
    ("functions", "import azure.functions as func\nfrom shared import bootstrap\nfrom shared.exceptions import "
                  "DependencyUnavailable\nfrom shared.services.ingest import RawRecord"),
])
def test_what_a_layer_may_import_passes(directory: str, source: str) -> None:
    result = ruff(directory, source)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_function_app_imports_only_azure_functions_and_the_blueprints() -> None:
    imports = list(_imports(ROOT / "function_app.py"))
    assert imports and all(name == "azure.functions" or name.startswith("functions.") for name in imports), imports
