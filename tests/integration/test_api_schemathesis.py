"""schemathesis (property-based) against the registered HTTP functions, driven by docs/openapi.json.

A small WSGI adapter routes requests to the functions ``function_app.app``
registers, as the Functions host would (route prefix ``api``, route templates
from the bindings), and calls each with a real ``func.HttpRequest``. Every
generated request must get a documented status code, content type and body
schema, and never a server error; Redis and the Cassandra emulator are real.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import azure.functions as func
import pytest
import schemathesis
import schemathesis.specs.openapi.checks
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import CHECKS as REGISTRY

from tests.fixtures.functions import _index, run
from tests.integration import test_changefeed as changefeed_tests
from tests.integration import test_dashboard_api
from tests.integration.test_changefeed import make_event

app_env, keyspace, session, store = (changefeed_tests.app_env, changefeed_tests.keyspace, changefeed_tests.session,
                                     changefeed_tests.store)
dash_env = test_dashboard_api.dash_env

CHECKS = REGISTRY.get_all()  # every check, as `schemathesis run --checks all`
KEY = "schemathesis-function-key"
AUTH = {"x-functions-key": KEY}
REASONS = {
    200: "OK",
    401: "Unauthorized",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class FunctionsWsgi:
    """Route ``/api/<route>`` to the registered HTTP functions, like the host does."""

    def __init__(self) -> None:
        self.routes = []
        for function in _index().values():
            binding = json.loads(function.get_function_json())["bindings"][0]
            if binding["type"] != "httpTrigger":
                continue
            template = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(binding["route"]))
            self.routes.append((re.compile(f"^/api/{template}$"), {m.upper() for m in binding["methods"]},
                                function.get_user_function(), binding.get("authLevel", "function").lower()))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for pattern, methods, user_function, auth_level in self.routes:
            match = pattern.match(path)
            if match:
                if method not in methods:
                    return self._reply(start_response, 405, b"", [("Allow", ", ".join(sorted(methods)))])
                if auth_level != "anonymous" and (headers.get("x-functions-key") or query.get("code")) != KEY:
                    return self._reply(start_response, 401, b"", [])  # the host checks keys before the function
                request = func.HttpRequest(method, f"http://localhost{path}", headers=headers, params=query,
                                           route_params=match.groupdict(), body=body)
                response = run(user_function(request))  # an async function: awaited on the worker loop
                content_type = f"{response.mimetype}; charset={response.charset}" if response.mimetype else None
                extra = [(k, v) for k, v in response.headers.items() if k.lower() != "content-type"]
                if content_type:
                    extra.append(("Content-Type", content_type))
                return self._reply(start_response, response.status_code, response.get_body(), extra)
        return self._reply(start_response, 404, b"", [])

    @staticmethod
    def _reply(start_response, status: int, body: bytes, headers: list[tuple[str, str]]):
        start_response(f"{status} {REASONS.get(status, 'Status')}", [*headers, ("Content-Length", str(len(body)))])
        return [body]


@pytest.mark.timeout(240)
def test_every_operation_conforms_to_the_openapi_document_with_no_server_errors(dash_env, store) -> None:
    dash_env()
    now = datetime.now(UTC).replace(microsecond=0)
    seeded = [make_event("dev-1", now - timedelta(minutes=3), severity="critical"),
              make_event("dev-1", now - timedelta(minutes=2), measurements={"temperature": 95.5}),
              make_event("dev-1", now - timedelta(minutes=1))]
    store.write(seeded)
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", FunctionsWsgi())
    statuses: dict[str, set[int]] = {}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/devices/{device_id}/latest", "/api/devices/{device_id}/critical",
                                              "/api/events/{event_id}", "/api/health", "/api/dashboard", "/api/status",
                                              "/api/critical", "/api/devices/{device_id}/events",
                                              "/api/reports/sites", "/api/reports/devices"}
    for operation in operations:
        # the seeded data, so 200 answers are checked against their schema too
        for path_parameters, query in _known(operation.path, seeded):
            case = operation.Case(path_parameters=path_parameters, query=query)
            response = case.call(headers=AUTH)
            case.validate_response(response, checks=CHECKS, headers=AUTH)
            assert response.status_code == 200, (operation.path, response.text)

        for mode in schemathesis.GenerationMode:
            if mode is schemathesis.GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
                continue  # nothing to break in a request without parameters
            strategy = operation.as_strategy(generation_mode=mode)
            if mode is schemathesis.GenerationMode.POSITIVE:
                strategy = strategy.map(_semantically_valid)

            @given(case=strategy)
            @settings(max_examples=40, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call(headers=AUTH)
                statuses.setdefault(case.operation.path, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS, headers=AUTH)

            check()
    assert all(code < 500 for codes in statuses.values() for code in codes), statuses
    assert 400 in statuses["/api/devices/{device_id}/critical"] and 404 in statuses["/api/events/{event_id}"]
    assert 400 in statuses["/api/devices/{device_id}/events"] and 400 in statuses["/api/reports/sites"]


def _semantically_valid(case):
    """What a schema cannot say, made true of positive cases: ``from`` is not after ``to``, and a page token
    is one the service signed (one that merely matches the pattern is a 400 by design; ``test_dashboard_api``
    proves both 400s), so positive cases order the range and go without a token."""
    if not case.query:
        return case
    query = {k: v for k, v in case.query.items() if k != "page"}
    start, end = query.get("from"), query.get("to")
    # (an empty value is absent: allowEmptyValue, as the Functions host drops it)
    if isinstance(start, str) and isinstance(end, str) and start and end and _moment(start) > _moment(end):
        query["from"], query["to"] = end, start
    case.query = query
    return case


def _moment(text: str) -> datetime:
    """A date or an RFC 3339 time (up to microseconds) as an aware datetime, for ordering."""
    value = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.upper().replace("Z", "+00:00")))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _known(path: str, seeded) -> list[tuple[dict, dict]]:
    if path == "/api/devices/{device_id}/latest":
        return [({"device_id": "dev-1"}, {})]
    if path == "/api/devices/{device_id}/critical":
        return [({"device_id": "dev-1"}, {}), ({"device_id": "dev-1"}, {"limit": 1, "since": "2000-01-01T00:00:00Z"})]
    if path == "/api/events/{event_id}":
        return [({"event_id": str(seeded[0].event_id)}, {})]
    if path == "/api/devices/{device_id}/events":
        return [({"device_id": "dev-1"}, {}), ({"device_id": "dev-1"}, {"limit": 1, "from": "2000-01-01T00:00:00Z"})]
    if path in ("/api/dashboard", "/api/status", "/api/critical", "/api/reports/sites", "/api/reports/devices"):
        return [({}, {})]
    return []
