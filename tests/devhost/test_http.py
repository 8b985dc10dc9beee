"""``python -m devhost`` serving HTTP-triggered functions, and refusing apps it cannot run."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@app.route(route="ssn/{ssn:regex(^\\\\d{{3}}-\\\\d{{2}}-\\\\d{{4}}$)}", auth_level=func.AuthLevel.ANONYMOUS)
def ssn(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.route_params["ssn"])


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")
'''

KEY = "local-test-key"


def call(host: Running, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """Status, headers (an ``email.message.Message``: case-insensitive, ``get_all`` for repeated ones), body."""
    request = urllib.request.Request(f"http://{host.address}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


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
    assert status == 404 and "Allow" not in headers  # a method no route takes is no route: 404, as in the host

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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["CODE", "Code"])
def test_the_code_query_parameter_is_found_whatever_its_case(http_host: Running, name: str) -> None:
    """host: AuthenticationLevelHandler.GetAuthorizationKeyInfoAsync reads the key with
    ``request.Query.TryGetValue("code", ...)``, and ASP.NET Core's query collection compares names ignoring case: a
    client that sends ``?CODE=<key>`` is let in by Azure (aiohttp's query is case-sensitive)."""
    status, _, body = call(http_host, "GET", f"/v1/items/7?{name}={KEY}")
    assert status == 200, body
    assert call(http_host, "GET", f"/v1/items/7?{name}=wrong")[0] == 401


@pytest.mark.timeout(60)
def test_a_repeated_header_is_joined_without_its_empty_values(http_host: Running) -> None:
    """host: ToRpcHttp gives the worker each header as StringValues.ToString(), which joins the values with ``,``
    skipping empty ones, as for the query. The dev host kept them: ``X-Test:`` then ``X-Test: b`` reached the
    function as ``,b``."""
    def header(*values: str) -> object:
        address, port = http_host.address.rsplit(":", 1)
        connection = http.client.HTTPConnection(address, int(port), timeout=10)
        try:
            connection.putrequest("GET", f"/v1/items/{uuid.uuid4()}")
            connection.putheader("x-functions-key", KEY)
            for value in values:
                connection.putheader("X-Test", value)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200, body
        return json.loads(body)["header"]

    assert header("", "b", "", "c") == "b,c"
    assert header("", "") == ""


@pytest.mark.timeout(60)
def test_an_empty_key_header_is_the_key_given_and_code_is_not_read(http_host: Running) -> None:
    """host: GetAuthorizationKeyInfoAsync takes the ``x-functions-key`` header whenever it is present (header takes
    precedence) and reads ``code`` only without it; an empty header is an empty key, which grants nothing. So a
    right ``?code=`` beside an empty header is 401 in Azure, and so here."""
    assert call(http_host, "GET", f"/v1/items/7?code={KEY}", headers={"x-functions-key": ""})[0] == 401
    assert call(http_host, "GET", "/v1/items/7?code=wrong", headers={"x-functions-key": KEY})[0] == 200


@pytest.mark.timeout(60)
def test_a_key_header_that_is_not_utf8_is_a_wrong_key(http_host: Running) -> None:
    """host: such a request is 400 (Kestrel refuses header bytes that are not UTF-8) or 401, never 500. aiohttp keeps
    the bytes as surrogates (surrogateescape); HttpServer._authorised encoded them to compare, and the
    UnicodeEncodeError was a 500 whose logged traceback quoted a character of the key."""
    address, port = http_host.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(address, int(port), timeout=10)
    try:
        connection.putrequest("GET", "/v1/items/7")
        connection.putheader("x-functions-key", b"\xe9" + KEY.encode())
        connection.endheaders()
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status == 401
    assert "UnicodeEncodeError" not in http_host.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/v1//items/7", "//v1/items/7", "/v1/items/7//", "/v1/items//7"])
def test_an_empty_path_segment_matches_no_route(http_host: Running, path: str) -> None:
    """host: ASP.NET Core's RoutePatternMatcher.TryMatch walks the path with PathTokenizer, which yields an empty
    segment for ``//`` (only one final ``/`` is ignored), and refuses the match at once (``stringSegment.Length ==
    0``); Kestrel does not collapse ``//``. A client whose base URL ends in ``/`` gets 404 in Azure, and so here."""
    key = {"x-functions-key": KEY}
    assert call(http_host, "GET", "/v1/items/7", headers=key)[0] == 200
    assert call(http_host, "GET", "/v1/items/7/", headers=key)[0] == 200  # one final "/" is ignored
    status, _, body = call(http_host, "GET", path, headers=key)
    assert status == 404, body


@pytest.mark.timeout(60)
def test_a_catch_all_parameter_keeps_the_trailing_slash(http_host: Running) -> None:
    """host: RoutePatternMatcher.SavePathSegmentsAsValues: "A catch-all captures til the end of the string", the
    final ``/`` included, so a function can tell ``dir/`` from ``dir``; empty segments inside it are its own."""
    key = {"x-functions-key": KEY}
    assert call(http_host, "GET", "/v1/files/a/b/", headers=key)[2] == b"a/b/"
    assert call(http_host, "GET", "/v1/files/a//b", headers=key)[2] == b"a//b"
    assert call(http_host, "GET", "/v1/files//a", headers=key)[0] == 404  # empty where the catch-all starts


@pytest.mark.timeout(60)
def test_a_regex_constraint_writes_its_braces_doubled(http_host: Running) -> None:
    """host: in a route template ``{{`` and ``}}`` stand for a literal brace (RoutePatternParser), and ASP.NET Core's
    routing docs give ``{ssn:regex(^\\d{{3}}-\\d{{2}}-\\d{{4}}$)}`` as the way to write ``\\d{3}`` in a regex
    constraint. The Functions host loads such a function and serves it; the dev host refused to start
    ("unbalanced braces")."""
    status, _, body = call(http_host, "GET", "/v1/ssn/123-45-6789")
    assert (status, body) == (200, b"123-45-6789")
    assert call(http_host, "GET", "/v1/ssn/1234-45-6789")[0] == 404


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("document", ['{"IsEncrypted": false, "Values": ["A=1"]}', "[1]"], ids=["Values", "document"])
def test_malformed_local_settings_stop_start_up_with_a_clear_error(tmp_path: Path, document: str) -> None:
    """Settings refused are exit status 2 with one line naming the setting (docs/devhost.md); a ``Values`` array or a
    document that is no object ended in an AttributeError traceback, exit status 1."""
    settings = write_app(tmp_path / "app", "import azure.functions as func\napp = func.FunctionApp()\n")
    settings.write_text(document, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--script-root", str(tmp_path / "app"), "--settings", str(settings),
         "--port", "0"], capture_output=True, text=True, timeout=50, cwd=str(ROOT),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "local.settings.json" in result.stderr and "DevHostError" in result.stderr


EVENTHUB_APP = '''
import typing

import azure.functions as func

app = func.FunctionApp()


@app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="Conn", cardinality="many")
def consume(events: typing.List[func.EventHubEvent]) -> None:  # the worker refuses list[...]
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


ROUTING_APP = """
import json
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="only-get", methods=["GET"])
def only_get(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("only_get")


# Defined first in the file, but its name sorts after "a_item".
@app.function_name("b_special")
@app.route(route="things/special")
def b_special(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("b_special")


@app.function_name("a_item")
@app.route(route="things/{id}")
def a_item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("a_item " + req.route_params["id"])


@app.route(route="json")
def as_json(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse('{"a": 1}', mimetype="application/json")


@app.route(route="query")
def query(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(dict(req.params)), mimetype="application/json")


@app.route(route="nothing")
def nothing(req: func.HttpRequest):
    return None


@app.route(route="raw-bytes")
def raw_bytes(req: func.HttpRequest):
    return b"abc"


@app.route(route="cookies")
def cookies(req: func.HttpRequest) -> func.HttpResponse:
    response = func.HttpResponse("ok")
    response.headers.add("Set-Cookie", "first=1; Path=/")
    response.headers.add("Set-Cookie", "second=2; Path=/")
    return response
"""

ROUTING_HOST_JSON = {"version": "2.0",
                     "extensions": {"http": {"customHeaders": {"X-Custom-Header": "from-host-json"}}}}


@pytest.fixture(scope="module")
def routing_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("routing") / "app"
    settings = write_app(root, ROUTING_APP, host_json=ROUTING_HOST_JSON)
    running = start_devhost(root, settings=settings)
    yield running
    running.stop(stop_timeout=20)


@pytest.mark.timeout(60)
def test_a_method_the_route_does_not_accept_is_404_without_allow(routing_host: Running) -> None:
    """host: WebScriptHostHttpRoutesManager maps each function with ASP.NET legacy routing (WebJobsRouteBuilder ->
    Microsoft.AspNetCore.Routing.Route in a RouteCollection, UseRouter) and restricts methods with an
    HttpMethodRouteConstraint: a wrong method is no route matched, a 404 without an Allow header."""
    status, headers, _ = call(routing_host, "POST", "/api/only-get")
    assert status == 404 and "Allow" not in headers
    assert call(routing_host, "HEAD", "/api/only-get")[0] == 404


@pytest.mark.timeout(60)
def test_routes_are_tried_in_function_name_order_not_by_specificity(routing_host: Running) -> None:
    """host: FunctionMetadataManager orders functions by name (OrdinalIgnoreCase); WebScriptHostHttpRoutesManager
    adds one Route per function in that order to a RouteCollection, which takes the first route that matches. So
    'a_item' (things/{id}) shadows 'b_special' (things/special)."""
    status, _, body = call(routing_host, "GET", "/api/things/special")
    assert (status, body) == (200, b"a_item special")


@pytest.mark.timeout(60)
def test_only_text_mimetypes_get_a_charset(routing_host: Running) -> None:
    """lib: HttpResponseConverter.encode adds '; charset=...' only to a mimetype starting with 'text/'; the host
    copies the content type to the response."""
    status, headers, _ = call(routing_host, "GET", "/api/json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert call(routing_host, "GET", "/api/only-get")[1]["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.timeout(60)
def test_empty_query_values_are_dropped_and_skipped_when_joining(routing_host: Running) -> None:
    """host: GrpcMessageConversionExtensions.ToRpcHttp, without the worker capability UseNullableValueDictionaryForHttp
    (the Python worker does not declare it), sends a query parameter only when its value is not empty; repeated
    values are joined by StringValues.ToString(), which skips empty ones."""
    status, _, body = call(routing_host, "GET", "/api/query?empty=&flag&b=1&c=1&c=&c=2")
    assert status == 200
    assert json.loads(body) == {"b": "1", "c": "1,2"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/api/nothing", "/api/raw-bytes"], ids=["None", "bytes"])
def test_a_return_value_the_http_binding_cannot_encode_fails_the_invocation(routing_host: Running,
                                                                            path: str) -> None:
    """worker: the $return of an http function is always encoded (bindings.to_outgoing_proto);
    HttpResponseConverter.encode takes str and HttpResponse only, so None or bytes raise 'unable to encode outgoing
    TypedData: unsupported type "http" ...' (azure-functions-python-worker#683): the invocation fails, a 500."""
    assert call(routing_host, "GET", path)[0] == 500
    name = "nothing" if path.endswith("nothing") else "raw_bytes"
    deadline = time.monotonic() + 10  # the host's output reaches the test through a reader thread
    while f"Executed 'Functions.{name}' (Failed" not in routing_host.output():
        assert time.monotonic() < deadline, routing_host.output()
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_several_set_cookie_headers_all_reach_the_client(routing_host: Running) -> None:
    """lib: HttpResponseConverter.encode turns every 'Set-Cookie' header into the `cookies` list; host:
    RawScriptResult appends each one with response.Cookies.Append."""
    status, headers, _ = call(routing_host, "GET", "/api/cookies")
    assert status == 200
    assert headers.get_all("Set-Cookie") == ["first=1; Path=/", "second=2; Path=/"]


@pytest.mark.timeout(60)
def test_host_json_custom_headers_are_added_to_responses(routing_host: Running) -> None:
    """host: extensions.http.customHeaders is bound to CustomHttpHeadersOptions, and CustomHttpHeadersMiddleware
    adds them to every HTTP response (TryAdd)."""
    assert call(routing_host, "GET", "/api/json")[1]["X-Custom-Header"] == "from-host-json"
    assert call(routing_host, "GET", "/api/no-such-route")[1]["X-Custom-Header"] == "from-host-json"


def _start(tmp_path: Path, source: str) -> tuple[bool, str]:
    """(did it start serving, its output)."""
    settings = write_app(tmp_path / "app", source)
    process = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--script-root", str(tmp_path / "app"), "--settings", str(settings),
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT))
    try:
        output, _ = process.communicate(timeout=20)
        return False, output
    except subprocess.TimeoutExpired:
        process.terminate()
        output, _ = process.communicate(timeout=20)
        return True, output


RESERVED_ROUTE_APP = """
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="administration/users")
def users(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("users")
"""


@pytest.mark.timeout(60)
def test_a_route_in_the_reserved_admin_or_runtime_space_is_refused(tmp_path: Path) -> None:
    """host: ScriptHost.ValidateHttpFunction refuses a route whose lower-cased, trimmed text starts with 'admin' or
    'runtime' ('The specified route conflicts with one or more built in routes.'): the function is not loaded."""
    started, output = _start(tmp_path, RESERVED_ROUTE_APP)
    assert not started and "function 'users'" in output and "built in routes" in output, output


CONFLICTING_ROUTES_APP = """
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="orders", methods=["GET", "POST"])
def list_orders(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("list")


@app.route(route="Orders/", methods=["POST"])
def create_order(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("create")
"""


@pytest.mark.timeout(60)
def test_two_functions_with_the_same_route_and_a_common_method_are_refused(tmp_path: Path) -> None:
    """host: ScriptHost.ValidateFunction/HttpRoutesConflict: the same route (trimmed of '/', case-insensitive) with
    a method in common -> 'The route specified conflicts with the route defined by function ...'; the later function
    in name order is not loaded."""
    started, output = _start(tmp_path, CONFLICTING_ROUTES_APP)
    assert not started, output
    assert "function 'list_orders': the route specified conflicts with the route defined by function " \
        "'create_order'" in output


BYTES_ANNOTATION_APP = """
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="blob")
def blob(req: func.HttpRequest) -> bytes:
    return b"abc"
"""


@pytest.mark.timeout(60)
def test_a_return_annotation_the_http_binding_cannot_encode_is_refused(tmp_path: Path) -> None:
    """worker: FunctionRegistry.get_function_return_type raises FunctionLoadError 'Python return annotation "bytes"
    does not match binding type "http"' (HttpResponseConverter.check_output_type_annotation takes HttpResponse and
    str only)."""
    started, output = _start(tmp_path, BYTES_ANNOTATION_APP)
    assert not started, output
    assert 'function \'blob\': Python return annotation "bytes" does not match binding type "http"' in output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("connection", [
    "garbage-not-a-connection-string",
    "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=listen;EntityPath=telemetry",
], ids=["garbage", "no-key"])
def test_a_malformed_event_hubs_connection_string_fails_start_up_naming_the_setting(
        tmp_path: Path, azurite_connection_string: str, connection: str) -> None:
    """A malformed Event Hubs connection string passed every start-up check; once storage had been contacted and
    HTTP served, azure-eventhub raised a bare ValueError: a traceback and exit status 1. docs/devhost.md: a
    configuration refused is exit status 2, before anything connects, naming the function and setting."""
    settings = write_app(tmp_path / "app", EVENTHUB_APP, values={"AzureWebJobsStorage": azurite_connection_string,
                                                                  "Conn": connection})
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--script-root", str(tmp_path / "app"), "--settings", str(settings),
         "--port", "0"], capture_output=True, text=True, timeout=50, cwd=str(ROOT),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "function 'consume': the connection setting 'Conn' is not an Event Hubs connection string" in result.stderr
    assert "listening on" not in result.stdout
