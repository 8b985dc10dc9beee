"""host.json's functionTimeout, enforced as the Functions host enforces it on a language worker.

The host fails an invocation that outlives the limit and restarts the worker, ending whatever else was in flight.
The dev host is host and worker in one process and cannot stop a thread, so it exits with FUNCTION_TIMEOUT_EXIT
(`sluice up` starts it again); a function that blocks the event loop is caught as well.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devhost.invocation import FUNCTION_TIMEOUT_EXIT
from tests.fixtures.devhost import write_app
from tests.fixtures.waiting import poll

APP = '''
import time
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="quick")
def quick(req: func.HttpRequest) -> func.HttpResponse:
    time.sleep(0.5)
    return func.HttpResponse("done")


@app.route(route="hang")
def hang(req: func.HttpRequest) -> func.HttpResponse:
    time.sleep(120)
    return func.HttpResponse("too late")


@app.route(route="hang_async")
async def hang_async(req: func.HttpRequest) -> func.HttpResponse:
    time.sleep(120)  # blocks the event loop
    return func.HttpResponse("too late")
'''


def _get(running: Any, path: str, timeout: float) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://{running.address}{path}", timeout=timeout) as response:
        return response.status, response.read()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("function", ["hang", "hang_async"])
def test_an_invocation_past_function_timeout_ends_the_worker(
    tmp_path: Path, devhost_factory: Any, function: str,
) -> None:
    settings = write_app(tmp_path / "app", APP, host_json={"version": "2.0", "functionTimeout": "00:00:02"})
    host = devhost_factory(tmp_path / "app", settings=settings)
    assert _get(host, "/api/quick", 10) == (200, b"done")  # within the limit: nothing happens

    def call() -> None:
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):  # the process goes away
            _get(host, f"/api/{function}", 60)

    started = time.monotonic()
    threading.Thread(target=call, daemon=True).start()
    code = host.process.wait(timeout=30)
    waited = time.monotonic() - started
    assert code == FUNCTION_TIMEOUT_EXIT, host.output()
    assert 2 <= waited < 10, f"exited after {waited:.1f}s"
    # The launcher's reader thread may not have read the last line yet when the process is gone (a busy machine).
    message = f"Timeout value of 00:00:02 was exceeded by function: Functions.{function}"
    poll(lambda: message in host.output(), 10, "the timeout message in the dev host's output")
