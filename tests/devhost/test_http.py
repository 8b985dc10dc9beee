"""``python -m devhost`` serving HTTP-triggered functions, and refusing apps it cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.launcher import Running
from tests.fixtures.devhost import ROOT, start_devhost, write_app

APP = '''
import asyncio
import json
import threading
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="items/{id:guid}", methods=["GET"])
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    body = {"id": req.route_params["id"], "query": dict(req.params), "header": req.headers.get("x-test"),
            "method": req.method, "url": req.url}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="items/{n:int}", methods=["GET"])
def get_numbered(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"n": int(req.route_params["n"])}), mimetype="application/json")


@app.route(route="items", methods=["POST", "PUT"])
def create_item(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    item = req.get_json()
    return func.HttpResponse(json.dumps({"created": item, "function": context.function_name}), status_code=201,
                             headers={"Location": f"/v1/items/{item['id']}"}, mimetype="application/json")


@app.route(route="files/{*path}", methods=["GET"])
def files(req: func.HttpRequest) -> str:
    return req.route_params.get("path", "")


@app.route(route="hello/{name?}", auth_level=func.AuthLevel.ANONYMOUS)
async def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"hello {req.route_params.get('name') or 'world'}")


@app.route(route="where/async", auth_level=func.AuthLevel.ANONYMOUS)
async def where_async(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(float(req.params.get("sleep") or 0))
    return func.HttpResponse(threading.current_thread().name)


@app.route(route="where/sync", auth_level=func.AuthLevel.ANONYMOUS)
def where_sync(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(threading.current_thread().name)


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")
'''

KEY = "local-test-key"


def call(host: Running, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://{host.address}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def http_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("http") / "app"
    settings = write_app(root, APP, host_json={"version": "2.0", "extensions": {"http": {"routePrefix": "v1"}}},
                         values={"DEVHOST_FUNCTION_KEY": KEY})
    running = start_devhost(root, settings=settings)
    yield running
    assert running.stop(stop_timeout=20) == 0


@pytest.mark.timeout(60)
def test_routes_parameters_methods_and_bodies(http_host: Running) -> None:
    key = {"x-functions-key": KEY}
    item = str(uuid.uuid4())
    status, headers, body = call(http_host, "GET", f"/v1/items/{item}?a=1&a=2&b=x%20y", headers={**key, "X-Test": "t"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    got = json.loads(body)
    assert got["id"] == item and got["query"] == {"a": "1,2", "b": "x y"} and got["header"] == "t"
    assert got["method"] == "GET" and got["url"].endswith(f"/v1/items/{item}?a=1&a=2&b=x%20y")

    assert json.loads(call(http_host, "GET", "/v1/items/42", headers=key)[2]) == {"n": 42}
    assert call(http_host, "GET", "/v1/items/not-a-guid", headers=key)[0] == 404
    status, headers, _ = call(http_host, "DELETE", f"/v1/items/{item}", headers=key)
    assert status == 405 and headers["Allow"] == "GET"

    status, headers, body = call(http_host, "POST", "/v1/items", body=json.dumps({"id": "a1"}).encode(),
                                 headers={**key, "Content-Type": "application/json"})
    assert status == 201 and headers["Location"] == "/v1/items/a1"
    assert json.loads(body) == {"created": {"id": "a1"}, "function": "create_item"}

    status, _, body = call(http_host, "GET", "/v1/files/a/b/c.txt", headers=key)
    assert (status, body) == (200, b"a/b/c.txt")
    assert call(http_host, "GET", "/v1/hello")[2] == b"hello world"
    assert call(http_host, "GET", "/v1/HELLO/bob")[2] == b"hello bob"
    assert call(http_host, "GET", "/v1/boom")[0] == 500
    assert call(http_host, "GET", "/api/hello")[0] == 404
    status, _, body = call(http_host, "GET", "/admin/host/status")
    assert status == 200 and json.loads(body)["state"] == "Running"
    assert "Executed 'Functions.create_item' (Succeeded" in http_host.output()


@pytest.mark.timeout(60)
def test_async_functions_run_on_the_hosts_event_loop_and_sync_ones_on_its_threads(http_host: Running) -> None:
    from concurrent.futures import ThreadPoolExecutor

    assert call(http_host, "GET", "/v1/where/async")[2] == b"MainThread"  # the host's loop
    assert call(http_host, "GET", "/v1/where/sync")[2].startswith(b"function")  # the worker's thread pool
    # 24 invocations that each wait 0.5 s overlap on the one loop: far fewer than the thread pool's 6 at a time
    started = time.perf_counter()
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: call(http_host, "GET", "/v1/where/async?sleep=0.5")[2], range(24)))
    took = time.perf_counter() - started
    assert answers == [b"MainThread"] * 24 and took < 1.9, f"24 concurrent async invocations took {took:.2f}s"


@pytest.mark.timeout(60)
def test_function_keys_are_checked_only_when_a_key_is_set(http_host: Running) -> None:
    assert call(http_host, "GET", "/v1/items/7")[0] == 401
    assert call(http_host, "GET", "/v1/items/7?code=wrong")[0] == 401
    assert call(http_host, "GET", f"/v1/items/7?code={KEY}")[0] == 200
    assert call(http_host, "GET", "/v1/hello")[0] == 200  # anonymous


UNSUPPORTED = '''
import azure.functions as func

app = func.FunctionApp()


@app.queue_trigger(arg_name="msg", queue_name="work", connection="AzureWebJobsStorage")
def from_queue(msg: func.QueueMessage) -> None:
    pass


@app.route(route="save")
@app.blob_output(arg_name="out", path="things/{rand-guid}", connection="AzureWebJobsStorage")
def save(req: func.HttpRequest, out: func.Out[str]) -> str:
    return "ok"
'''


@pytest.mark.timeout(60)
def test_unsupported_triggers_and_bindings_stop_start_up_with_their_names(tmp_path: Path) -> None:
    settings = write_app(tmp_path / "app", UNSUPPORTED)
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--script-root", str(tmp_path / "app"), "--settings", str(settings),
         "--port", "0"], capture_output=True, text=True, timeout=60, cwd=str(ROOT),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "UnsupportedBindingError" in result.stderr
    assert "function 'from_queue': trigger 'queueTrigger' is not supported" in result.stderr
    assert "function 'save': out binding 'blob' ('out') is not supported" in result.stderr
    assert "listening on" not in result.stdout


EVENTHUB_APP = '''
import azure.functions as func

app = func.FunctionApp()


@app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="Conn", cardinality="many")
def consume(events: list[func.EventHubEvent]) -> None:
    pass
'''


@pytest.mark.timeout(60)
def test_unreachable_storage_fails_start_up_naming_the_setting(tmp_path: Path) -> None:
    closed = "http://127.0.0.1:9/devstoreaccount1"  # discard port: nothing listens
    settings = write_app(tmp_path / "app", EVENTHUB_APP, values={
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                               f"AccountKey=a2V5;BlobEndpoint={closed};",
        "Conn": "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true",
    })
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--script-root", str(tmp_path / "app"), "--settings", str(settings),
         "--port", "0"], capture_output=True, text=True, timeout=50, cwd=str(ROOT),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "function 'consume': cannot create the checkpoint container 'azure-webjobs-eventhub' in " \
        "AzureWebJobsStorage" in result.stderr
    assert "listening on" not in result.stdout
