"""Each shipped artifact, installed alone in a fresh virtual environment, imports everything it ships.

* The function app image: ``requirements.txt`` only, and the files the Dockerfile copies
  (``function_app.py``, ``functions/``, ``shared/``, ``sluice/``), laid out as in the image.
* The emulators: ``pip install ./emulators`` (the ``sluice-emulators`` distribution) only.

Importing every module is not enough: commands import some packages inside functions. So
every absolute import anywhere in a shipped file (nested ones included) must import too.
A dependency that is installed here only because a dev tool pulls it in (``sortedcontainers``
via hypothesis, ``rich`` from requirements-dev.txt) fails these tests. One virtual environment
per artifact per session, from the configured package index, with pip's cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import venv
from pathlib import Path

import pytest
from cassandra.cluster import Cluster

from sluice.launcher import start
from tests.unit.test_dockerfile import APP_ROOT, build_context, in_image

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)

# Run inside the fresh environment: argv = [root, top-level name...]. Imports every module under each
# name, then the top-level name of every absolute import in those files that is not one of them (an
# import inside a try that handles ImportError or Exception is optional on purpose, and skipped).
IMPORT_EVERYTHING = r'''
import ast, importlib, pathlib, sys
root, local = pathlib.Path(sys.argv[1]), sys.argv[2:]
files = [p for name in local for p in ([root / f"{name}.py"] if (root / f"{name}.py").is_file()
                                         else sorted((root / name).rglob("*.py")))]
OPTIONAL = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
def optional(handler):  # an import guarded by this handler may be missing on purpose
    names = [] if handler.type is None else getattr(handler.type, "elts", [handler.type])
    return handler.type is None or any(getattr(n, "id", None) in OPTIONAL for n in names)
def imports(node, guarded=False):
    if isinstance(node, ast.Try) and any(optional(h) for h in node.handlers):
        guarded = True
    if not guarded and isinstance(node, ast.Import):
        yield from (alias.name.split(".")[0] for alias in node.names)
    elif not guarded and isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        yield node.module.split(".")[0]
    for child in ast.iter_child_nodes(node):
        yield from imports(child, guarded)
third_party = set()
for path in files:
    parts = path.relative_to(root).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    importlib.import_module(module)
    third_party.update(imports(ast.parse(path.read_text(encoding="utf-8"))))
for name in sorted(third_party - set(local) - {"__future__"}):
    importlib.import_module(name)
print(len(files), "modules;", len(third_party), "imported names")
'''


def _fresh_venv(directory: Path, *install: str) -> Path:
    """A virtual environment with only ``install`` (pip arguments) in it; returns its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    python = directory / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *install],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONSAFEPATH": "1"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="session")
def product_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fresh_venv(tmp_path_factory.mktemp("product-venv"), "-r", str(ROOT / "requirements.txt"))


@pytest.fixture(scope="session")
def emulators_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path_factory.mktemp("emulators-src") / "emulators"
    shutil.copytree(ROOT / "emulators", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    return _fresh_venv(tmp_path_factory.mktemp("emulators-venv"), str(source))


def test_the_image_imports_everything_it_ships_with_requirements_txt_alone(
        product_python: Path, tmp_path: Path) -> None:
    site = tmp_path / "wwwroot"
    for path in sorted(build_context()):
        target = in_image(path)
        if target is not None and target.is_relative_to(APP_ROOT) and (ROOT / path).is_file():
            destination = site / target.relative_to(APP_ROOT)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes((ROOT / path).read_bytes())
    shipped = sorted({p.relative_to(site).parts[0].removesuffix(".py") for p in site.iterdir()
                      if p.suffix == ".py" or (p / "__init__.py").is_file()})
    assert shipped == ["function_app", "functions", "shared", "sluice"]
    # the image's working directory is the app root: run from there so the app's packages import
    done = subprocess.run([str(product_python), "-c", IMPORT_EVERYTHING, str(site), *shipped], cwd=site,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_emulators_import_everything_with_their_own_requirements_alone(
        emulators_python: Path, tmp_path: Path) -> None:
    located = _run(emulators_python, "-c", "import emulators, pathlib; print(pathlib.Path(emulators.__file__).parent)",
                   cwd=tmp_path)
    assert located.returncode == 0, located.stderr[-2000:]
    package = Path(located.stdout.strip())
    assert package.parent.name == "site-packages", package  # installed, not the checkout
    assert (package / "eventhubs" / "config.json").is_file()
    done = _run(emulators_python, "-c", IMPORT_EVERYTHING, str(package.parent), "emulators", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("emulator", ["cassandra", "eventhubs", "keyvault"])
def test_each_installed_emulator_runs_from_another_directory(
        emulators_python: Path, tmp_path: Path, emulator: str) -> None:
    done = _run(emulators_python, "-m", f"emulators.{emulator}", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--port" in done.stdout


def test_an_installed_emulator_serves_the_real_sdk(emulators_python: Path, tmp_path: Path) -> None:
    running = start("installed-cassandra-emulator",
                    [str(emulators_python), "-m", "emulators.cassandra", "--host", "127.0.0.1", "--port", "0"],
                    cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        cluster = Cluster(contact_points=[running.host], port=running.port, protocol_version=4)
        try:
            session = cluster.connect()
            keyspace = f"ks_{uuid.uuid4().hex[:12]}"
            session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                            "{'class': 'SimpleStrategy', 'replication_factor': 1}")
            session.execute(f"CREATE TABLE {keyspace}.t (k text, c int, v text, PRIMARY KEY (k, c))")
            insert = session.prepare(f"INSERT INTO {keyspace}.t (k, c, v) VALUES (?, ?, ?)")
            for c in (3, 1, 2):
                session.execute(insert, ("device", c, f"v{c}"))
            rows = session.execute(f"SELECT c, v FROM {keyspace}.t WHERE k = %s", ("device",))
            assert [(r.c, r.v) for r in rows] == [(1, "v1"), (2, "v2"), (3, "v3")]  # clustering order
        finally:
            cluster.shutdown()
    finally:
        running.stop()
    assert sys.executable != str(emulators_python)
