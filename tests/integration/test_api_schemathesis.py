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
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.functions import _index
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed import make_event

app_env, keyspace, session, store = (changefeed_tests.app_env, changefeed_tests.keyspace, changefeed_tests.session,
                                     changefeed_tests.store)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
           503: "Service Unavailable"}


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
                                function.get_user_function()))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for pattern, methods, user_function in self.routes:
            match = pattern.match(path)
            if match:
                if method not in methods:
                    return self._reply(start_response, 405, b"", [])
                request = func.HttpRequest(method, f"http://localhost{path}", headers=headers, params=query,
                                           route_params=match.groupdict(), body=body)
                response = user_function(request)
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
def test_every_operation_conforms_to_the_openapi_document_with_no_server_errors(app_env, store) -> None:
    app_env()
    now = datetime.now(UTC).replace(microsecond=0)
    seeded = [make_event("dev-1", now - timedelta(minutes=3), severity="critical"),
              make_event("dev-1", now - timedelta(minutes=2), measurements={"temperature": 95.5}),
              make_event("dev-1", now - timedelta(minutes=1))]
    store.write(seeded)
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", FunctionsWsgi())
    statuses: dict[str, set[int]] = {}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/devices/{device_id}/latest", "/api/devices/{device_id}/critical",
                                              "/api/events/{event_id}", "/api/health"}
    for operation in operations:
        # the seeded data, so 200 answers are checked against their schema too
        for path_parameters, query in _known(operation.path, seeded):
            case = operation.Case(path_parameters=path_parameters, query=query)
            response = case.call()
            case.validate_response(response, checks=CHECKS)
            assert response.status_code == 200, (operation.path, response.text)

        for mode in schemathesis.GenerationMode:
            if mode is schemathesis.GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
                continue  # nothing to break in a request without parameters
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=40, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call()
                statuses.setdefault(case.operation.path, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS)

            check()
    assert all(code < 500 for codes in statuses.values() for code in codes), statuses
    assert 400 in statuses["/api/devices/{device_id}/critical"] and 404 in statuses["/api/events/{event_id}"]


def _known(path: str, seeded) -> list[tuple[dict, dict]]:
    if path == "/api/devices/{device_id}/latest":
        return [({"device_id": "dev-1"}, {})]
    if path == "/api/devices/{device_id}/critical":
        return [({"device_id": "dev-1"}, {}), ({"device_id": "dev-1"}, {"limit": 1, "since": "2000-01-01T00:00:00Z"})]
    if path == "/api/events/{event_id}":
        return [({"event_id": str(seeded[0].event_id)}, {})]
    return []
