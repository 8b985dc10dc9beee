"""HTTP triggers of the operations page and its JSON routes (the contract is ``docs/openapi.json``).

``/api/dashboard`` serves one self-contained page (``functions/static``: the HTML
with its CSS and JS inlined, no CDN, a Content-Security-Policy that allows only
those inlined hashes); the page polls the JSON routes below. Every route has
auth level FUNCTION, like the lookups; the page passes its own ``code`` query
parameter on to the routes it calls.

Parameters are parsed here; bad ones get the lookups' 400 JSON body naming the
parameter, a down store 503, as in ``functions/lookups.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import cache, wraps
from pathlib import Path
from typing import Any

import azure.functions as func

from functions.parameters import BadParameter, logged_path, parse_device_id, parse_limit, parse_since, parse_until
from shared import bootstrap
from shared.exceptions import DependencyUnavailable
from shared.services.history import BadToken
from shared.services.reports import HEALTH_STATES

logger = logging.getLogger(__name__)

bp = func.Blueprint()

STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER_SECONDS = 5
DEFAULT_HISTORY = timedelta(hours=24)
DEFAULT_LIMIT = 100
_SITE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits: \d matches other scripts' too
EARLIEST = datetime.min.replace(tzinfo=UTC)
_LAST_MILLISECOND = datetime.max.replace(microsecond=999000, tzinfo=UTC)
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,400}\.[A-Za-z0-9_\-]{1,64}")


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A JSON answer; ``nosniff`` because bodies carry device data and echo bad input (a 400 repeats it)."""
    return func.HttpResponse(json.dumps(body, separators=(",", ":"), ensure_ascii=False), status_code=status,
                             mimetype="application/json", charset="utf-8",
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                      **(headers or {})})


def _mapped(handler: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
    """Bad parameter or token 400, dependency down 503 (the lookups' error body)."""

    @wraps(handler)
    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return handler(req)
        except BadParameter as exc:
            return _json({"error": "bad_request", "message": exc.detail, "parameter": exc.parameter}, 400)
        except BadToken as exc:
            return _json({"error": "bad_request", "message": str(exc), "parameter": "page"}, 400)
        except DependencyUnavailable as exc:
            logger.warning("%s failed: %s", logged_path(req.url), exc)
            return _json({"error": "dependency_unavailable", "message": str(exc), "dependency": exc.dependency}, 503,
                         {"Retry-After": str(RETRY_AFTER_SECONDS)})

    return wrapper


def _given(req: func.HttpRequest, name: str) -> str | None:
    """The parameter's value; ``None`` when absent or empty. The Functions host drops a query parameter whose value
    is empty before the worker sees it (``?to=`` arrives as no ``to``), so an empty one means absent here too."""
    value: str | None = req.params.get(name)
    return value or None


def _limit(req: func.HttpRequest, default: int) -> int:
    return parse_limit(_given(req, "limit"), default)


def _time(req: func.HttpRequest, name: str) -> datetime | None:
    try:
        # `from` is a lower bound, `to` an upper one: a finer time than microseconds rounds inwards
        value = (parse_since if name == "from" else parse_until)(_given(req, name), name)
        return value.astimezone(UTC) if value is not None else None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before the first representable instant
        raise BadParameter(name, f"is out of range, got {req.params.get(name)!r}") from None


def _range(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    start = start or (end - default if end - EARLIEST > default else EARLIEST)
    if start > end:
        raise BadParameter("from", f"must not be after to ({start.isoformat()} > {end.isoformat()})")
    millisecond = start.replace(microsecond=start.microsecond // 1000 * 1000)
    if start != millisecond and millisecond == end.replace(microsecond=end.microsecond // 1000 * 1000):
        # both inside one millisecond, `from` past its start: rounded inwards (the reader, the answer) they cross
        raise BadParameter("from", f"and to hold no whole millisecond, the precision of event times "
                                   f"({start.isoformat()}, {end.isoformat()})")
    return start, end


def _day(req: func.HttpRequest, name: str) -> date | None:
    value = _given(req, name)
    if value is None:
        return None
    try:
        if not _DAY.fullmatch(value):  # fullmatch: `$` also matches before a final newline
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise BadParameter(name, f"must be a date such as 2026-11-23, got {value!r}") from None


def _site(req: func.HttpRequest) -> str | None:
    value = _given(req, "site_id")
    if value is None:
        return None
    if not _SITE_ID.fullmatch(value):
        raise BadParameter("site_id", f"must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {value!r}")
    return value


@cache
def _page() -> tuple[bytes, str]:
    """The page with its CSS and JS inlined, and a CSP naming exactly those two."""
    html = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    css = (STATIC / "dashboard.css").read_text(encoding="utf-8")
    js = (STATIC / "dashboard.js").read_text(encoding="utf-8")

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    page = html.replace("/*STYLE*/", css).replace("/*SCRIPT*/", js)
    policy = (f"default-src 'none'; connect-src 'self'; img-src 'self' data:; style-src {digest(css)}; "
              f"script-src {digest(js)}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page.encode("utf-8"), policy


@bp.function_name("dashboard")
@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    body, policy = _page()
    return func.HttpResponse(body, status_code=200, mimetype="text/html", charset="utf-8",
                             headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                                      "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


@bp.function_name("status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped
def status(req: func.HttpRequest) -> func.HttpResponse:
    body = bootstrap.status_service().status()
    return _json({**body, "refresh_seconds": bootstrap.settings().dashboard.refresh_seconds})


@bp.function_name("critical_feed")
@bp.route(route="critical", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped
def critical_feed(req: func.HttpRequest) -> func.HttpResponse:
    limit = _limit(req, 20)
    return _json(bootstrap.status_service().critical(limit))


@bp.function_name("device_events")
@bp.route(route="devices/{device_id}/events", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped
def device_events(req: func.HttpRequest) -> func.HttpResponse:
    device_id = parse_device_id(req.route_params.get("device_id"))
    start, end = _range(_time(req, "from"), _time(req, "to"), DEFAULT_HISTORY)
    limit = _limit(req, DEFAULT_LIMIT)
    token = _given(req, "page")
    if token is not None and not _TOKEN.fullmatch(token):
        raise BadToken("the page token is malformed")
    page = bootstrap.history_service().page(device_id, start=start, end=end, limit=limit, token=token)
    return _json({"device_id": device_id, "from": _iso(start, up=True), "to": _iso(end), "events": page.events,
                  "next_page": page.next_token})


@bp.function_name("report_sites")
@bp.route(route="reports/sites", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped
def report_sites(req: func.HttpRequest) -> func.HttpResponse:
    site_id, day_from, day_to = _site(req), _day(req, "from"), _day(req, "to")
    if day_from and day_to and day_from > day_to:
        raise BadParameter("from", f"must not be after to ({day_from} > {day_to})")
    limit = _limit(req, DEFAULT_LIMIT)
    return _json(bootstrap.report_service().sites(site_id=site_id, day_from=day_from, day_to=day_to, limit=limit))


@bp.function_name("report_devices")
@bp.route(route="reports/devices", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_mapped
def report_devices(req: func.HttpRequest) -> func.HttpResponse:
    site_id = _site(req)
    health = _given(req, "health")
    if health is not None and health not in HEALTH_STATES:
        raise BadParameter("health", f"must be one of {', '.join(HEALTH_STATES)}, got {health!r}")
    limit = _limit(req, DEFAULT_LIMIT)
    return _json(bootstrap.report_service().devices(site_id=site_id, health=health, limit=limit))


def _iso(moment: datetime, *, up: bool = False) -> str:
    """A history bound as the read applies it, in whole milliseconds as events are stored: towards the past for
    ``to``, and ``up`` to the next millisecond for a finer ``from`` (a time stored in the millisecond it falls in is
    before it). Within the last millisecond of 9999 no next one exists: that ``from`` is written to the microsecond."""
    moment = moment.astimezone(UTC)
    if up and moment.microsecond % 1000:
        if moment > _LAST_MILLISECOND:
            return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
        moment += timedelta(microseconds=1000 - moment.microsecond % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
