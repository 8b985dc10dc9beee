"""``schemathesis run --checks all`` against the whole API as the dev host serves it, on the local stack.

Unlike ``tests/integration/test_api_schemathesis.py`` (which calls the functions
through a small WSGI stand-in), requests here go through the dev host's HTTP
server and router, with its function key check on, so what the host answers
itself (unrouted methods, undecodable or odd paths, missing keys) is checked
against the OpenAPI document too. Every phase the CLI has for a stateless run
(examples, coverage, fuzzing) runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import test_pipeline

pipeline = test_pipeline.pipeline
ROOT = Path(__file__).resolve().parents[2]
KEY = "schemathesis-devhost-key"


@pytest.mark.timeout(420)
def test_schemathesis_with_every_check_finds_nothing(pipeline, tmp_path) -> None:
    start, _, values = pipeline
    values.update(DEVHOST_FUNCTION_KEY=KEY)
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2))
    host = start()
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"http://{host.address}/api/openapi.json",
         # unsupported_method expects 405; the Functions host answers a method no route takes with 404 (its routes
         # are ASP.NET routes with a method constraint: no route matched), and so does the dev host (docs/devhost.md)
         "--checks", "all", "--exclude-checks", "unsupported_method",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "30", "--workers", "1",
         "-H", f"x-functions-key: {KEY}", "--suppress-health-check", "all", "--seed", "20261205"],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    assert "No issues found" in run.stdout or "passed" in run.stdout.lower(), run.stdout[-3000:]
