"""Where the dev host could differ from the Functions host + Python worker: retries, paths, bodies, query, host.json.

Each test says what the real host does, with the source it is read from, at these commits:

* host:   Azure/azure-functions-host 89dc438d (src/WebJobs.Script*, src/WebJobs.Script.Grpc)
* sdk:    Azure/azure-webjobs-sdk f79ea0bf (src/Microsoft.Azure.WebJobs.Host)
* worker: Azure/azure-functions-python-worker 7e6acf36 (azure_functions_worker)
* aspnet: dotnet/aspnetcore (src/Shared/UrlDecoder, src/Http/Http/src/Features/QueryFeature.cs,
  src/Servers/Kestrel/Core/src/Internal/Http/PathNormalizer.cs, KestrelServerLimits.cs)
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devhost.app_loader import FunctionSpec, RetryPolicy
from devhost.errors import DevHostError
from devhost.invocation import Invoker, Outcome
from devhost.settings import load_host_json
from sluice.launcher import Running
from tests.fixtures.devhost import start_devhost, write_app

pytestmark = pytest.mark.timeout(120)


# --- 1. retry_context.exception -----------------------------------------------------------------------------------


def _spec(function: Any, retry: RetryPolicy) -> FunctionSpec:
    return FunctionSpec(name="f", trigger_type="eventHubTrigger", trigger={"name": "events"},
                        user_function=function, is_async=False, accepts_context=True, retry=retry)


def test_a_retry_sees_the_previous_attempts_exception_in_retry_context(tmp_path: Path) -> None:
    """sdk FunctionExecutorExtensions.TryExecuteAsync: before each retry `retryContext.Exception =
    functionResult?.Exception` (the failed attempt's exception); host ScriptInvocationContextExtensions.SetRetryContext
    copies it into InvocationRequest.RetryContext.Exception as an RpcException (Message from
    ExceptionFormatter.GetFormattedException, StackTrace, Source); worker dispatcher._get_context builds
    bindings.RetryContext(retry_count, max_retry_count, invoc_request.retry_context.exception), which is what
    azure.functions' RetryContext.exception (an RpcException with message/stack_trace/source) documents.

    Before: devhost/invocation.py Invoker.call builds RetryContext(retry_count, max_retry_count) and never passes
    the exception, so `context.retry_context.exception` is None on every retry. A function that branches on the
    previous failure (e.g. dead-letter at once on a non-transient error) behaves differently locally."""
    seen: list[Any] = []

    def fails(events: Any, context: func.Context) -> None:
        seen.append(context.retry_context.exception)
        raise RuntimeError(f"store down on attempt {context.retry_context.retry_count}")

    invoker = Invoker(tmp_path, threads=1)
    try:
        outcome = asyncio.run(invoker.call_with_retry(
            _spec(fails, RetryPolicy("fixed_delay", 1, delay=timedelta(0))), {"events": []},
            reason="test", stopping=asyncio.Event()))
    finally:
        invoker.shutdown()
    assert outcome is Outcome.FAILED and len(seen) == 2
    previous = seen[1]
    assert previous is not None, "retry 1 got no exception from attempt 0"
    assert "store down on attempt 0" in previous.message


# --- 2. HTTP: what reaches the function -----------------------------------------------------------------------------

HTTP_APP = '''
import json
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="devices/{device_id}/latest", methods=["GET"])
def latest(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"device_id": req.route_params.get("device_id")}), mimetype="application/json")


@app.route(route="echo", methods=["GET", "POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    body = {"body": req.get_body().decode("latin-1"), "params": dict(req.params)}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="files/{*rest}")
def files(req: func.HttpRequest) -> str:
    return "files:" + req.route_params.get("rest", "")


@app.route(route="open/{id}")
def open_item(req: func.HttpRequest) -> str:
    return "open:" + req.route_params["id"]


@app.route(route="upload", methods=["POST"])
def upload(req: func.HttpRequest) -> func.HttpResponse:
    body = {"length": len(req.get_body()), "encoding": req.headers.get("content-encoding")}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="whoami")
def whoami(req: func.HttpRequest) -> str:
    return "len:" + str(len(req.headers.get("authorization") or ""))
'''


@pytest.fixture(scope="module")
def http_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("review-http") / "app"
    running = start_devhost(root, settings=write_app(root, HTTP_APP))
    yield running
    running.stop(stop_timeout=20)


def _get(host: Running, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{host.address}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _raw(host: Running, method: str, path: str, headers: list[tuple[str, str]] | None = None,
         body: bytes | None = None) -> tuple[int, bytes]:
    """One request sent as written: http.client does not normalise the path, nor compress or limit anything."""
    connection = http.client.HTTPConnection(host.host, host.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or []:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_an_encoded_slash_in_a_route_parameter_reaches_the_function_still_encoded(http_host: Running) -> None:
    """aspnet: Kestrel decodes the request path with UrlDecoder.DecodeInPlace, whose SkipUnescape leaves %2F encoded
    ("skip %2F - '/'"), so Request.Path of /api/devices/a%2Fb/latest is ".../a%2Fb/latest": one segment. The host's
    routing (WebJobsRouter -> ASP.NET Route/TemplateMatcher on Request.Path) matches devices/{device_id}/latest with
    device_id "a%2Fb", and ToRpcHttp (PopulateHttpRouteDataAsParams) passes that value to the worker.

    Before: HttpServer._path uses aiohttp's request.path, fully decoded ("a/b"), so the path has one segment
    too many, no route matches and the client gets an empty 404, where the real host runs the function (Sluice's
    lookups answer a JSON 400 naming device_id)."""
    status, body = _get(http_host, "/api/devices/a%2Fb/latest")
    assert status == 200, f"dev host answered {status} {body!r}"
    assert json.loads(body) == {"device_id": "a%2Fb"}


def test_a_path_with_an_encoded_nul_is_refused_before_any_function_runs(http_host: Running) -> None:
    """aspnet: Kestrel's UrlDecoder.DecodeCore throws InvalidOperationException("The path contains null
    characters.") for %00 in the path; Kestrel rejects the request target with 400 Bad Request before routing, so
    no function runs.

    Before: aiohttp decodes %00 to "\\x00" and the route parameter reaches the function (200 here)."""
    status, body = _get(http_host, "/api/devices/a%00b/latest")
    assert status == 400, f"dev host answered {status} {body!r}"


def test_a_chunked_request_body_does_not_reach_the_function(http_host: Running) -> None:
    """host: GrpcMessageConversionExtensions.ToRpcHttp fills the body only `if (request.Body != null &&
    request.ContentLength > 0)`; a request sent with Transfer-Encoding: chunked has no Content-Length, so the Python
    worker gets no body (the function sees b""). Maintainers: Azure/azure-functions-host#7930 ("Chunked requests are
    not currently supported for the OOP scenarios"), #4926.

    Before: HttpServer._invoke does `await request.read()`, which reads the chunked body, so a client that streams
    its body works locally and sends empty requests in Azure."""
    connection = http.client.HTTPConnection(http_host.host, http_host.port, timeout=10)
    try:
        connection.request("POST", "/api/echo", body=iter([b'{"a": ', b"1}"]), encode_chunked=True,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    assert status == 200
    assert json.loads(body)["body"] == "", "the function got the chunked body, which the host does not pass on"


def test_query_names_that_differ_only_in_case_are_one_parameter(http_host: Running) -> None:
    """aspnet: QueryFeature.ParseNullableQueryInternal accumulates the query in a dictionary with
    StringComparer.OrdinalIgnoreCase, so ?limit=5&LIMIT=7 is one parameter "limit" with values 5 and 7; host
    ToRpcHttp sends it as limit="5,7" (StringValues.ToString()).

    Before: _query() iterates aiohttp's case-sensitive MultiDict, so the function gets {"limit": "5", "LIMIT": "7"}
    and reads 5 where Azure gives "5,7" (Sluice's parse_limit: a 400 in Azure, a 200 locally)."""
    status, body = _get(http_host, "/api/echo?limit=5&LIMIT=7")
    assert status == 200
    assert json.loads(body)["params"] == {"limit": "5,7"}


@pytest.mark.parametrize(("path", "expected"), [
    ("/api/files/a/../b", b"files:b"),
    ("/api/files/a/%2E%2E/b", b"files:b"),
    ("/api/files/./a", b"files:a"),
    ("/api/files/a/.", b"files:a/"),
    ("/api/files/../open/z", b"open:z"),
    ("/api/files/a%2F../b", b"files:a%2F../b"),
    ("/api/files/%252E%252E/b", b"files:%2E%2E/b"),
])
def test_dot_segments_are_removed_before_routing(http_host: Running, path: str, expected: bytes) -> None:
    """aspnet: Kestrel's PathNormalizer.DecodePath decodes the path (UrlDecoder.DecodeInPlace, ``%2F`` left as is)
    and then removes ``.`` and ``..`` segments (RemoveDotSegments, RFC 3986 5.2.4) before routing, so in Azure
    ``/api/files/a/../b`` is ``/api/files/b`` and a catch-all never sees ``..``. ``a%2F..`` is one segment, not a
    dot one, and ``%252E`` decodes once to ``%2E``, no dot either (the operations page sends the ids ``.`` and
    ``..`` so).

    Before: HttpServer._path decoded the path but routed it with its dot segments: the function got ``a/../b`` (a
    path-traversal check that passes locally never runs in Azure) and ``/api/files/../open/z`` reached ``files``."""
    assert _raw(http_host, "GET", path) == (200, expected)


def test_a_gzip_request_body_reaches_the_function_as_sent(http_host: Running) -> None:
    """host: no request decompression (no RequestDecompression middleware; Kestrel passes the bytes on), so a body
    sent with ``Content-Encoding: gzip`` reaches the worker compressed and the function must gunzip it.

    Before: aiohttp's request.read() inflated it (auto_decompress), so a function that forgets to gunzip worked
    locally and failed in Azure."""
    sent = gzip.compress(json.dumps({"rows": list(range(2000))}).encode())
    status, body = _raw(http_host, "POST", "/api/upload", headers=[("Content-Encoding", "gzip")], body=sent)
    assert status == 200, body
    assert json.loads(body) == {"length": len(sent), "encoding": "gzip"}


def test_a_header_kestrel_accepts_is_not_refused(http_host: Running) -> None:
    """aspnet: KestrelServerLimits caps the request headers at 32 KB together (MaxRequestHeadersTotalSize), with no
    limit on one header, so a 12 KB ``Authorization: Bearer`` token (Entra ID tokens with many group claims) is
    served in Azure.

    Before: aiohttp's default max_field_size (8190 bytes) answered 400 before any function ran."""
    token = "Bearer " + "x" * 12000
    assert _raw(http_host, "GET", "/api/whoami", headers=[("Authorization", token)]) == (
        200, f"len:{len(token)}".encode())
    # past 32 KB Kestrel answers 431; aiohttp 400: refused either way
    assert _raw(http_host, "GET", "/api/whoami", headers=[("Authorization", "x" * 40000)])[0] in (400, 431)


# --- 3. host.json settings ----------------------------------------------------------------------------------------


def _host_json(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "host.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize(("section", "keys"), [
    ({"retry": {"strategy": "fixedDelay", "maxRetryCount": 3, "delayInterval": "00:00:05"}}, ["retry"]),
    ({"extensions": {"http": {"routePrefix": "api", "maxConcurrentRequests": 10, "maxOutstandingRequests": 20}}},
     ["maxConcurrentRequests", "maxOutstandingRequests"]),
], ids=["retry", "http-throttles"])
def test_host_json_settings_the_dev_host_does_not_implement_are_refused_or_warned(
        tmp_path: Path, section: dict[str, Any], keys: list[str]) -> None:
    """host: HostJsonFileConfigurationSource knows "retry" and "functions" as host.json properties;
    ScriptHost.CreateTypeAttributes turns host.json `retry` into a retry attribute on every function (functions
    without @app.retry are retried); FunctionMetadataManager.ApplyAllowList loads only the functions named in
    `functions`; extensions.http maxConcurrentRequests/maxOutstandingRequests make the host's HTTP extension throttle
    requests (429).

    Before: settings.load_host_json reads only functionTimeout, extensions.eventHubs, extensions.http.routePrefix/
    customHeaders and singleton; anything else is dropped without a warning (only unknown extensions.eventHubs keys
    are reported), so an app relying on these behaves differently locally with nothing said."""
    path = _host_json(tmp_path, {"version": "2.0", **section})
    try:
        options = load_host_json(path)
    except DevHostError:
        return  # refused at start-up: fine
    unmentioned = [key for key in keys if not any(key in warning for warning in options.warnings)]
    assert not unmentioned, f"host.json {unmentioned} silently ignored (warnings: {options.warnings})"


def test_without_function_timeout_the_hosts_default_limit_applies(tmp_path: Path) -> None:
    """host: ScriptJobHostOptionsSetup.ConfigureFunctionTimeout: when host.json has no functionTimeout the limit is
    DefaultFunctionTimeout, 30 minutes (5 on Consumption); only an explicit -1 means no limit, and only on SKUs that
    allow it. AKS/Premium/Dedicated (Sluice's deployment) get 30 minutes.

    Before: load_host_json maps a missing functionTimeout to None, no limit (docs/devhost.md says so), so an
    invocation that runs 45 minutes passes locally and is killed (worker restarted) in Azure."""
    options = load_host_json(_host_json(tmp_path, {"version": "2.0"}))
    assert options.function_timeout == timedelta(minutes=30)


PEP585_TRIGGER_APP = """
from __future__ import annotations

import typing

import azure.functions as func

app = func.FunctionApp()


@app.event_hub_message_trigger(arg_name="events", event_hub_name="hub", connection="EventHubConnection",
                               cardinality="many", data_type="binary")
def pep585(events: list[func.EventHubEvent]) -> None:
    pass


@app.event_hub_message_trigger(arg_name="events", event_hub_name="hub2", connection="EventHubConnection",
                               cardinality="many", data_type="binary")
def typing_list(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006
    pass
"""


def test_a_binding_annotation_the_python_worker_refuses_is_refused(tmp_path: Path) -> None:
    """The Python worker indexes every function and refuses a binding parameter whose annotation is neither a class
    nor a ``typing`` generic (``functions.py`` ``validate_function_params``): ``list[func.EventHubEvent]`` on Python
    3.11 (worker issue 1034). One refused function fails the indexing, so the real host would load no function of
    the app; the dev host refuses it too, naming it, and takes ``typing.List``."""
    from devhost.app_loader import find_app, import_script, index
    from devhost.errors import UnsupportedBindingError

    (tmp_path / "pep585_app.py").write_text(PEP585_TRIGGER_APP, encoding="utf-8")  # not sys.modules' function_app
    with pytest.raises(UnsupportedBindingError) as refused:
        index(find_app(import_script(tmp_path, "pep585_app.py")))
    message = str(refused.value)
    assert "function 'pep585': binding events has invalid non-type annotation list[" in message
    assert "typing_list" not in message


def test_the_apps_own_functions_pass_the_python_workers_annotation_checks() -> None:
    """Every binding annotation of function_app.py passes the worker's load checks (the ingest trigger once had
    ``list[func.EventHubEvent]``, which would have left every pod with no function)."""
    from devhost.app_loader import parameter_annotation_problems
    from tests.fixtures.functions import _index  # the shared index: get_functions() may run only once per app

    functions = _index().values()
    problems = [problem for function in functions
                for problem in parameter_annotation_problems(function.get_function_name() or "?",
                                                             function.get_user_function(),
                                                             json.loads(function.get_function_json())["bindings"])]
    assert problems == []
    assert "ingest" in {function.get_function_name() for function in functions}


def test_host_json_has_no_application_insights_settings_the_host_ignores() -> None:
    """With ``"telemetryMode": "OpenTelemetry"`` the Functions host never reads ``logging.applicationInsights``
    (azure-functions-host ``ScriptHostBuilderExtensions.ConfigureTelemetry`` configures Application Insights only in
    its other modes; issue 11366 calls the mix a configuration error): sampling set there would be dead settings."""
    from tests.fixtures.devhost import ROOT as APP_ROOT

    host = json.loads((APP_ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
    assert "applicationInsights" not in host.get("logging", {})


# --- 4. app settings: host.json overrides, the functions list, disabled functions ------------------------------------


THREE_FUNCTIONS_APP = """
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="alpha", methods=["GET"])
def alpha(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("alpha")


@app.route(route="beta", methods=["GET"])
def beta(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("beta")


@app.route(route="gamma", methods=["GET"])
def gamma(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("gamma")
"""


def _statuses(host: Running, *paths: str) -> list[int]:
    return [_get(host, path)[0] for path in paths]


def test_an_app_setting_overrides_host_json_in_the_running_host(tmp_path: Path, devhost_factory: Any) -> None:
    """host: the host's configuration is host.json with the AzureFunctionsJobHost__ app settings over it
    (functions-host-json#override-hostjson-values; Core Tools takes them from local.settings.json Values, the
    container from its environment): routePrefix set by a setting moves every route.

    Before: only host.json was read; /custom/alpha was 404 locally and 200 in the container."""
    settings = write_app(tmp_path / "app", THREE_FUNCTIONS_APP,
                         values={"AzureFunctionsJobHost__extensions__http__routePrefix": "custom"})
    host = devhost_factory(tmp_path / "app", settings=settings)
    assert _statuses(host, "/custom/alpha", "/api/alpha") == [200, 404], host.output()


def test_the_functions_list_from_app_settings_loads_only_the_functions_it_names(tmp_path: Path,
                                                                                devhost_factory: Any) -> None:
    """host: FunctionMetadataManager loads only the functions host.json `functions` names, ignoring case; k8s-keda
    Deployments set it as AzureFunctionsJobHost__functions__N to split the app. A function left out has no route.

    Before: the setting was ignored and every function answered, so a function missing from a Deployment's list
    worked locally and was absent in production."""
    settings = write_app(tmp_path / "app", THREE_FUNCTIONS_APP, values={
        "AzureFunctionsJobHost__functions__0": "alpha", "AzureFunctionsJobHost__functions__1": "GAMMA"})
    host = devhost_factory(tmp_path / "app", settings=settings)
    assert _statuses(host, "/api/alpha", "/api/beta", "/api/gamma") == [200, 404, 200], host.output()


def test_the_functions_list_is_read_from_the_colon_separated_setting_too(tmp_path: Path, devhost_factory: Any) -> None:
    """host: ``AzureFunctionsJobHost:functions:0`` is the configuration key itself (Core Tools puts it in the
    environment from local.settings.json Values, and AddEnvironmentVariables reads ``__`` as ``:``, names ignoring
    case), so the host loads only the function it names.

    Before: only the ``AzureFunctionsJobHost__`` spelling was recognised and every function answered."""
    settings = write_app(tmp_path / "app", THREE_FUNCTIONS_APP, values={"azurefunctionsjobhost:Functions:0": "alpha"})
    host = devhost_factory(tmp_path / "app", settings=settings)
    assert _statuses(host, "/api/alpha", "/api/beta", "/api/gamma") == [200, 404, 404], host.output()


def test_a_function_the_app_does_not_define_in_the_functions_list_is_refused(tmp_path: Path) -> None:
    """host: a name in `functions` that matches no function is dropped and the host starts without it. Here start-up
    fails naming it: a Deployment listing a misspelt or renamed function would run nothing for it in production."""
    from devhost.app_loader import find_app, import_script, index

    (tmp_path / "allow_list_app.py").write_text(THREE_FUNCTIONS_APP, encoding="utf-8")  # not sys.modules' function_app
    with pytest.raises(DevHostError, match=r"lists \['delta'\], which the app does not define"):
        index(find_app(import_script(tmp_path, "allow_list_app.py")), ("alpha", "delta"))


def test_a_disabled_http_function_is_not_served(tmp_path: Path, devhost_factory: Any) -> None:
    """host: AzureWebJobs.<name>.Disabled=true (disable-function; the same entry in local.settings.json Values for
    Core Tools) leaves a function loaded but not publicly addressable: its route is 404. Where a variable name cannot
    hold a dot (Linux containers), AzureWebJobs_<name>_Disabled is the same setting.

    Before: nothing read the setting; a function switched off in production answered locally."""
    settings = write_app(tmp_path / "app", THREE_FUNCTIONS_APP, values={
        "AzureWebJobs.alpha.Disabled": "true", "AzureWebJobs_beta_Disabled": "1",
        "AzureWebJobs.gamma.Disabled": "false"})
    host = devhost_factory(tmp_path / "app", settings=settings)
    assert _statuses(host, "/api/alpha", "/api/beta", "/api/gamma") == [404, 404, 200], host.output()
