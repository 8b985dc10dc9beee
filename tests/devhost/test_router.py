"""The dev host's router on the edge cases schemathesis found: decoded control characters and wrong methods.

The app is the repository's lookups blueprint, so the answers are the real
functions' (no store is needed: a bad id is rejected before any read).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from devhost.routes import RouteTemplate
from sluice.launcher import Running
from tests.fixtures.devhost import start_devhost, write_app

APP = '''
import azure.functions as func

from functions.lookups import bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(bp)
'''


def call(host: Running, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://{host.address}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("router") / "app"
    running = start_devhost(root, settings=write_app(root, APP))
    yield running
    running.stop(stop_timeout=20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/api/devices/%C3%89%0A/latest", "/api/devices/a%0Ab/latest",
                                  "/api/devices/%0A/critical", "/api/devices/x%0D%0A/latest"])
def test_an_id_with_a_newline_reaches_the_function_and_gets_its_json_400(host: Running, path: str) -> None:
    status, headers, body = call(host, "GET", path)
    assert status == 400 and headers["Content-Type"].startswith("application/json"), (status, body)
    error = json.loads(body)
    assert error["error"] == "bad_request" and error["parameter"] == "device_id"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["TRACE", "DELETE", "POST", "PUT", "PATCH"])
def test_a_method_the_route_does_not_take_is_404_without_allow(host: Running, method: str) -> None:
    """The host restricts methods with a route constraint (legacy ASP.NET routing): no route matched, no 405."""
    status, headers, body = call(host, method, "/api/health")
    assert status == 404 and "Allow" not in headers and body == b""


@pytest.mark.timeout(60)
def test_unknown_paths_stay_404(host: Running) -> None:
    assert call(host, "GET", "/api/nothing-here")[0] == 404
    assert call(host, "TRACE", "/api/nothing-here")[0] == 404
    assert call(host, "GET", "/elsewhere")[0] == 404


def test_a_template_does_not_match_a_path_with_a_trailing_newline_as_if_it_had_none() -> None:
    template = RouteTemplate.compile("health")
    assert template.match("health") == {} and template.match("health/") == {}
    assert template.match("health\n") is None
    assert RouteTemplate.compile("devices/{id}/latest").match("devices/\u00c9\n/latest") == {"id": "\u00c9\n"}
