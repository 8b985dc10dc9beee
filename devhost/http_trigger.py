"""HTTP triggers on a real HTTP server (aiohttp), at ``http://HOST:PORT/<routePrefix>/<route>``.

Each ``httpTrigger`` becomes a route: its ``route`` template (the function name when
absent) under ``extensions.http.routePrefix`` (``api`` by default), restricted to its
``methods`` (all methods when absent). A request becomes a ``func.HttpRequest`` (method,
full URL, headers, query parameters, route parameters, body); the function's
``func.HttpResponse`` (or ``str``/``bytes``) becomes the response. Repeated query
parameters and headers are joined with commas, as the host's conversion does. A path
no route matches is 404; a path some route matches with a method none of them accepts
is 405 with an ``Allow`` header listing theirs (ASP.NET Core endpoint routing, which
the host uses, answers so; ``TRACE`` is never routed). Both have an empty body, as the
host's own answers do. Route parameters are matched on the decoded path, control
characters included (``/api/devices/%C3%89%0A/latest`` reaches the function, which
rejects the id). An exception in the function is a 500 with an empty body.

Keys: like ``func start``, the dev host does not check function keys. Set
``DEVHOST_FUNCTION_KEY`` to make it check them: routes with ``authLevel`` function or
admin then need that key in the ``code`` query parameter or the ``x-functions-key``
header (401 otherwise); anonymous routes stay open.

``GET /admin/host/status`` answers ``{"id": <host id>, "state": "Running"}``, as the
host's status endpoint does.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from aiohttp import web
from multidict import MultiMapping

from devhost.app_loader import FunctionSpec
from devhost.errors import DevHostError
from devhost.invocation import Invoker
from devhost.routes import RouteTemplate

logger = logging.getLogger(__name__)

KEY_SETTING = "DEVHOST_FUNCTION_KEY"
MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's request size limit
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class HttpRoute:
    spec: FunctionSpec
    template: RouteTemplate
    methods: frozenset[str]
    auth_level: str

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> HttpRoute:
        trigger = spec.trigger
        route = str(trigger.get("route") or spec.name)
        methods = trigger.get("methods") or []
        try:
            template = RouteTemplate.compile(route)
        except DevHostError as exc:
            raise DevHostError(f"function {spec.name!r}: {exc}") from exc
        chosen = frozenset(str(m).upper() for m in methods) or ALL_METHODS
        unknown = chosen - ALL_METHODS
        if unknown:
            raise DevHostError(f"function {spec.name!r}: unknown HTTP methods {sorted(unknown)}")
        return cls(spec, template, chosen, str(trigger.get("authLevel") or "function").lower())


def _joined(values: MultiMapping[str]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for key in values:
        if key not in joined:
            joined[key] = ",".join(values.getall(key))
    return joined


def _response(result: Any) -> web.Response:
    if result is None:
        return web.Response(status=204)
    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = f"{result.mimetype}; charset={result.charset}"
        return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
    if isinstance(result, str):
        return web.Response(status=200, text=result)
    if isinstance(result, bytes | bytearray):
        return web.Response(status=200, body=bytes(result), content_type="application/octet-stream")
    raise TypeError(f"an HTTP function must return func.HttpResponse, str or bytes, not {type(result).__name__}")


class HttpServer:
    """Serves every HTTP-triggered function of the app."""

    def __init__(self, routes: list[HttpRoute], invoker: Invoker, *, route_prefix: str, host_id: str,
                 environ: Mapping[str, str]) -> None:
        self.routes = sorted(routes, key=lambda r: r.template.rank)
        self._invoker = invoker
        self._prefix = route_prefix.strip("/")
        self._host_id = host_id
        self._key = environ.get(KEY_SETTING) or None
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url_for(self, route: HttpRoute, host: str) -> str:
        path = "/".join(p for p in (self._prefix, route.template.template.strip("/")) if p)
        return f"http://{host}:{self.port}/{path}"

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/admin/host/status", self._status)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)  # "." would stop at a decoded newline
        return app

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"id": self._host_id, "state": "Running"})

    def _path(self, request: web.Request) -> str | None:
        path = request.path.strip("/")
        if not self._prefix:
            return path
        if path.lower() == self._prefix.lower():
            return ""
        if path.lower().startswith(self._prefix.lower() + "/"):
            return path[len(self._prefix) + 1:]
        return None

    def _authorised(self, route: HttpRoute, request: web.Request) -> bool:
        if self._key is None or route.auth_level == "anonymous":
            return True
        given = request.headers.get("x-functions-key") or request.query.get("code") or ""
        return hmac.compare_digest(given.encode(), self._key.encode())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request)
        if path is None:
            return web.Response(status=404)
        method = request.method.upper()
        allowed: set[str] = set()
        for route in self.routes:
            params = route.template.match(path)
            if params is None:
                continue
            if method not in route.methods or method == "TRACE":
                allowed |= route.methods
                continue
            if not self._authorised(route, request):
                return web.Response(status=401)
            return await self._invoke(route, params, request)
        if allowed:
            return web.Response(status=405, headers={"Allow": ", ".join(sorted(allowed - {"TRACE"}))})
        return web.Response(status=404)

    async def _invoke(self, route: HttpRoute, params: dict[str, str], request: web.Request) -> web.Response:
        body = await request.read()
        http_request = func.HttpRequest(
            method=request.method.upper(),
            url=str(request.url),
            headers=_joined(request.headers),
            params=_joined(request.query),
            route_params=params,
            body=body,
        )
        reason = f"This function was programmatically called via the host APIs ({request.method} {request.path})"
        try:
            result = await self._invoker.call(route.spec, {route.spec.trigger_param: http_request}, reason=reason)
            return _response(result)
        except Exception:
            logger.exception("Functions.%s failed for %s %s", route.spec.name, request.method, request.path_qs)
            return web.Response(status=500)
