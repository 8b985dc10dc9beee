"""HTTP triggers of the lookup API (route prefix ``api``; the contract is ``docs/openapi.json``).

Each handler parses its parameters, awaits the lookup service and maps the
outcome: 200 with the JSON document and ``X-Cache: hit | miss | bypass``; 400
naming the bad parameter; 404 for an unknown id; 503 when a dependency is down
and nothing is cached. Data endpoints use auth level FUNCTION (keys are enforced
by the host on Azure, not locally); health and the OpenAPI document are anonymous.

The handlers are coroutines: the Python worker (and the dev host) runs them on
its event loop, where the service's Redis and Cassandra reads are awaited, so
concurrent lookups do not each hold a thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import cache, wraps
from pathlib import Path
from typing import Any

import azure.functions as func

from functions.parameters import BadParameter, logged_path, parse_device_id, parse_event_id, parse_limit, parse_since
from shared import bootstrap, telemetry
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.services.lookups import Lookup

logger = logging.getLogger(__name__)

bp = func.Blueprint()

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
RETRY_AFTER_SECONDS = 5


def _json(body: str | dict[str, Any], status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return func.HttpResponse(text, status_code=status, mimetype="application/json", charset="utf-8",
                             headers={"X-Content-Type-Options": "nosniff", **(headers or {})})


def _error(status: int, error: str, message: str, **extra: str) -> func.HttpResponse:
    # no-store as on every lookup answer: a shared cache must not serve a 503 (or a 400) after it has passed
    headers = {"Cache-Control": "no-store"}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return _json({"error": error, "message": message, **extra}, status, headers)


# The cache outcome of the request being answered (hit, miss, negative, bypass), for its metrics: set by
# _answer, read by _mapped's wrapper in the same task; "none" when the request never got an answer from the
# service (a bad parameter, a dependency down).
_outcome: ContextVar[str] = ContextVar("lookup_cache_outcome", default="none")


def _answer(lookup: Lookup, missing: str) -> func.HttpResponse:
    _outcome.set(lookup.outcome)
    headers = {"X-Cache": lookup.cache, "Cache-Control": "no-store"}
    if lookup.document is None:
        return func.HttpResponse(json.dumps({"error": "not_found", "message": missing}), status_code=404,
                                 mimetype="application/json", charset="utf-8",
                                 headers={"X-Content-Type-Options": "nosniff", **headers})
    return _json(lookup.document, 200, headers)


Handler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]


def _mapped(route: str) -> Callable[[Handler], Handler]:
    """Map the service's errors to HTTP (bad parameter 400, dependency down 503) and record the request's
    ``sluice.lookup.requests`` and ``sluice.lookup.duration`` under the route template."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def wrapper(req: func.HttpRequest) -> func.HttpResponse:
            started = time.perf_counter()
            token = _outcome.set("none")
            status = 500  # anything else raised: the host answers 500, and the request counts as one
            try:
                try:
                    response = await handler(req)
                except BadParameter as exc:
                    response = _error(400, "bad_request", exc.detail, parameter=exc.parameter)
                except DependencyUnavailable as exc:
                    logger.warning("lookup %s failed: %s", logged_path(req.url), exc)
                    response = _error(503, "dependency_unavailable", str(exc), dependency=exc.dependency)
                status = response.status_code
                return response
            finally:
                try:
                    telemetry.record_lookup(route, _outcome.get(), status, time.perf_counter() - started)
                finally:
                    _outcome.reset(token)

        return wrapper

    return decorate


@bp.function_name("device_latest")
@bp.route(route="devices/{device_id}/latest", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped("devices/{device_id}/latest")
async def device_latest(req: func.HttpRequest) -> func.HttpResponse:
    device_id = parse_device_id(req.route_params.get("device_id"))
    return _answer(await bootstrap.lookup_service().latest(device_id), f"device {device_id!r} has no events")


@bp.function_name("device_critical")
@bp.route(route="devices/{device_id}/critical", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped("devices/{device_id}/critical")
async def device_critical(req: func.HttpRequest) -> func.HttpResponse:
    device_id = parse_device_id(req.route_params.get("device_id"))
    service = bootstrap.lookup_service()
    limit = parse_limit(req.params.get("limit"), service.critical_default_limit)
    since = parse_since(req.params.get("since"))
    return _answer(await service.critical(device_id, since=since, limit=limit), f"device {device_id!r} has no events")


@bp.function_name("event_by_id")
@bp.route(route="events/{event_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped("events/{event_id}")
async def event_by_id(req: func.HttpRequest) -> func.HttpResponse:
    event_id = parse_event_id(req.route_params.get("event_id"))
    return _answer(await bootstrap.lookup_service().event(event_id), f"event {event_id} does not exist")


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    healthy, body = await bootstrap.lookup_service().health()
    return _json(body, 200 if healthy else 503, {"Cache-Control": "no-store"})


@cache
def _openapi() -> str:
    return OPENAPI_PATH.read_text(encoding="utf-8")


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    # The lookups pods' readiness probe asks for this document every few seconds: it starts the worker (settings,
    # telemetry and the sluice.eventhub.lag gauge these pods export), so a pod no one looks anything up on reports
    # from its start, not from its first lookup. Once started, this is a cached no-op. The document itself needs no
    # setting: with settings that do not validate (which the startup probe refuses) it is still served.
    try:
        bootstrap.start_worker()
    except ConfigurationError as exc:
        logger.warning("the worker did not start: %s", exc)
    return _json(_openapi(), 200)
