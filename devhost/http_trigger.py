"""HTTP triggers on a real HTTP server (aiohttp), at ``http://HOST:PORT/<routePrefix>/<route>``.

Each ``httpTrigger`` becomes a route: its ``route`` template (the function name when
absent) under ``extensions.http.routePrefix`` (``api`` by default), restricted to its
``methods`` (all methods when absent). As in the host (``WebScriptHostHttpRoutesManager``:
one ASP.NET ``Route`` per function in a ``RouteCollection``), routes are tried in the order
of their function names (case-insensitive) and the first whose template, constraints and
methods match takes the request. A request no route takes is 404, a wrong method included
(the host restricts methods with a route constraint: no 405, no ``Allow``), with an empty
body. Route parameters are matched on the path as Kestrel decodes it: control characters
included (``/api/devices/%C3%89%0A/latest`` reaches the function, which rejects the id),
``%2F`` left encoded (``/api/devices/a%2Fb/latest`` gives ``device_id`` ``a%2Fb``), ``.`` and
``..`` segments removed once decoded (``/api/files/a/%2E%2E/b`` is ``/api/files/b``), and a
path holding ``%00`` refused with 400 before any route. The request line, the headers and the
body are read with Kestrel's limits and as Kestrel passes them on: headers up to 32 KB each
(Kestrel: 32 KB in all), at most 100 of them, and a body sent with ``Content-Encoding: gzip``
given to the function compressed.

A request becomes a ``func.HttpRequest`` (method, full URL, headers, query parameters,
route parameters, body). Repeated headers are joined with commas. Query parameters are
given as the host sends them to the Python worker (``ToRpcHttp``, without the
``UseNullableValueDictionaryForHttp`` capability): names compared ignoring case (the first
spelling kept), repeated values joined with commas, empty ones skipped, and a parameter with
no non-empty value left out. The body is passed only with a ``Content-Length`` above 0, as
the host does: a chunked body never reaches an out-of-process function (a warning says so).

What the function returns is encoded by azure-functions' own ``HttpResponseConverter``,
as the worker does: a ``func.HttpResponse`` (its content type is the mimetype, with
``; charset=`` only for ``text/`` types; each ``Set-Cookie`` header becomes a cookie of
its own) or a ``str`` (200, ``text/plain; charset=utf-8``). Anything else (``None``,
``bytes``) cannot be encoded: the invocation fails. A failed invocation is a 500 with an
empty body. ``extensions.http.customHeaders`` of host.json are added to every response
that does not set them already (the host's ``CustomHttpHeadersMiddleware``).

Keys: like ``func start``, the dev host does not check function keys. Set
``DEVHOST_FUNCTION_KEY`` to make it check them: routes with ``authLevel`` function or
admin then need that key in the ``x-functions-key`` header or, when that header is absent,
the ``code`` query parameter (its name in any case), 401 otherwise; anonymous routes stay
open.

``GET /admin/host/status`` answers ``{"id": <host id>, "state": "Running"}``, as the
host's status endpoint does.

Refused at start-up, as the host refuses to load such a function (``ScriptHost.ValidateFunction``):
a route in the host's own route space (starting with ``admin`` or ``runtime``), and two
functions with the same route (compared without ``/`` at either end, ignoring case) and a
method in common.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions.http import HttpResponseConverter
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from devhost.app_loader import FunctionSpec
from devhost.errors import DevHostError
from devhost.invocation import Invoker
from devhost.routes import RouteTemplate

logger = logging.getLogger(__name__)

KEY_SETTING = "DEVHOST_FUNCTION_KEY"
MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's request size limit
# Kestrel's KestrelServerLimits defaults, which the host keeps: MaxRequestLineSize 8 KB, MaxRequestHeaderCount 100 and
# MaxRequestHeadersTotalSize 32 KB (all headers together; aiohttp can only cap each one, so each one is capped at that).
# auto_decompress off: the host has no request decompression, a gzip body reaches the function as sent.
PARSER_ARGS = {"max_line_size": 8 * 1024, "max_headers": 100, "max_field_size": 32 * 1024, "auto_decompress": False}
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"})
_ENCODED_SLASH = re.compile(r"(%2[fF])")


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
        # ScriptHost.ValidateHttpFunction: the host's own routes are off limits.
        if route.strip().strip("/").lower().startswith(("admin", "runtime")):
            raise DevHostError(f"function {spec.name!r}: the route {route!r} conflicts with one or more built in "
                               "routes (a route may not start with 'admin' or 'runtime')")
        return cls(spec, template, chosen, str(trigger.get("authLevel") or "function").lower())

    def conflicts_with(self, other: HttpRoute) -> bool:
        """ScriptHost.HttpRoutesConflict: the same route text (without '/' at either end, ignoring case) and a
        method in common (no methods meaning all)."""
        same = self.template.template.strip("/").lower() == other.template.template.strip("/").lower()
        return same and bool(self.methods & other.methods)


def in_host_order(routes: list[HttpRoute]) -> list[HttpRoute]:
    """The order the host tries routes in: WebScriptHostHttpRoutesManager adds one per function, in
    FunctionMetadataManager's order (function names, OrdinalIgnoreCase), to a RouteCollection, which takes the first
    that matches. No ordering by specificity."""
    return sorted(routes, key=lambda r: r.spec.name.upper())


def check_routes(routes: list[HttpRoute]) -> None:
    """Refuse functions whose route conflicts with an earlier one's, as ScriptHost.ValidateFunction refuses to load
    them (in function name order, the order the host loads them)."""
    problems = [f"function {route.spec.name!r}: the route specified conflicts with the route defined by function "
                f"{earlier.spec.name!r}"
                for index, route in enumerate(routes) for earlier in routes[:index] if route.conflicts_with(earlier)]
    if problems:
        raise DevHostError("cannot host this app:\n  " + "\n  ".join(problems))


def _joined(values: MultiMapping[str]) -> dict[str, str]:
    """The headers as the host gives them to the worker (ToRpcHttp): each name's values joined by
    StringValues.ToString(), which skips empty ones (``X-A:`` then ``X-A: b`` is ``b``); a name whose values are all
    empty stays, as ``""``."""
    joined: dict[str, str] = {}
    for key in values:
        if key not in joined:
            joined[key] = ",".join(value for value in values.getall(key) if value)
    return joined


def _query(values: MultiMapping[str]) -> dict[str, str]:
    """The query as the host gives it to the worker (GrpcMessageConversionExtensions.ToRpcHttp): names compared
    ignoring case (ASP.NET's QueryFeature, the first spelling kept), each name's values joined by
    StringValues.ToString(), which skips empty ones, and the name left out when that is empty."""
    spelling: dict[str, str] = {}
    grouped: dict[str, list[str]] = {}
    for key, value in values.items():
        folded = key.lower()
        spelling.setdefault(folded, key)
        if value:
            grouped.setdefault(folded, []).append(value)
    return {spelling[folded]: ",".join(parts) for folded, parts in grouped.items()}


def _given_key(request: web.Request) -> str:
    """The key a request carries, read as the host reads it (AuthenticationLevelHandler.GetAuthorizationKeyInfoAsync):
    the first ``x-functions-key`` header when the header is there at all, even empty (no fallback to ``code`` then),
    else the first ``code`` query value, the name compared ignoring case as ASP.NET's query collection compares it
    (``?CODE=`` and ``?Code=`` are the key too). No key is the empty string, which matches none."""
    if "x-functions-key" in request.headers:
        return request.headers["x-functions-key"]
    return next((value for name, value in request.query.items() if name.lower() == "code"), "")


def kestrel_path(raw_path: str) -> str:
    """A request path decoded as Kestrel decodes it (PathNormalizer.DecodePath): every escape but ``%2F``, which stays
    as sent, decoded once, then the dot segments removed."""
    decoded = "".join(part if _ENCODED_SLASH.fullmatch(part) else URL.build(path="/" + part, encoded=True).path[1:]
                      for part in _ENCODED_SLASH.split(raw_path))
    return without_dot_segments(decoded)


def without_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 remove_dot_segments, as Kestrel's PathNormalizer.RemoveDotSegments applies it to the decoded
    path: ``.`` segments go, ``..`` ones take the segment before them (none above the root), and a dot segment at the
    end leaves a final ``/``. Segments are split on ``/`` only: ``%2F`` is no separator and ``%2E`` (what ``%252E``
    decodes to) no dot."""
    if not path.startswith("/"):
        return path
    segments = path[1:].split("/")
    kept: list[str] = []
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and kept:
                kept.pop()
            if index == len(segments) - 1:
                kept.append("")
        else:
            kept.append(segment)
    return "/" + "/".join(kept)


def encode_result(result: Any) -> web.Response:
    """What the function returned, encoded as the worker encodes an ``http`` ``$return`` (azure-functions'
    ``HttpResponseConverter``) and turned into a response as the host does. Raises TypeError for a value the
    converter cannot encode (``None``, ``bytes``, ...), as the worker fails such an invocation."""
    try:
        datum = HttpResponseConverter.encode(result, expected_type=None)
    except NotImplementedError:
        raise TypeError(f'unable to encode outgoing TypedData: unsupported type "http" for Python type '
                        f'"{type(result).__name__}"') from None
    if datum.type == "string":
        return web.Response(status=200, text=str(datum.value))
    http = datum.value
    # RawScriptResult sets the content type as response.ContentType, which Kestrel writes as "Content-Type".
    headers = CIMultiDict(("Content-Type" if str(name).lower() == "content-type" else str(name), str(value.value))
                          for name, value in http["headers"].items())
    for cookie in http["cookies"] or []:  # each one a Set-Cookie of its own (the host's Cookies.Append)
        for morsel in cookie.values():
            headers.add("Set-Cookie", morsel.OutputString())
    return web.Response(status=int(http["status_code"].value), body=http["body"].value, headers=headers)


class HttpServer:
    """Serves every HTTP-triggered function of the app."""

    def __init__(self, routes: list[HttpRoute], invoker: Invoker, *, route_prefix: str, host_id: str,
                 environ: Mapping[str, str], custom_headers: Mapping[str, str] | None = None) -> None:
        self.routes = in_host_order(routes)
        check_routes(self.routes)
        self._invoker = invoker
        self._prefix = route_prefix.strip("/")
        self._host_id = host_id
        self._key = environ.get(KEY_SETTING) or None
        self._custom_headers = dict(custom_headers or {})
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url_for(self, route: HttpRoute, host: str) -> str:
        path = "/".join(p for p in (self._prefix, route.template.template.strip("/")) if p)
        return f"http://{host}:{self.port}/{path}"

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args=PARSER_ARGS)
        if self._custom_headers:
            app.on_response_prepare.append(self._add_custom_headers)
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

    async def _add_custom_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """host.json extensions.http.customHeaders, on every response (CustomHttpHeadersMiddleware: TryAdd)."""
        for name, value in self._custom_headers.items():
            if name not in response.headers:
                response.headers[name] = value

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"id": self._host_id, "state": "Running"})

    def _path(self, request: web.Request) -> str | None:
        """The path after the route prefix and the ``/`` that follows it, or None when the prefix is not there.
        Only the path's own leading ``/`` is dropped: every other one is left for the template, which, as ASP.NET's
        PathTokenizer, reads ``//`` as an empty segment (``//api/...`` has no prefix; ``/api//x`` is empty first)."""
        path = kestrel_path(request.rel_url.raw_path).removeprefix("/")
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
        try:
            given = _given_key(request).encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them as surrogates): a wrong key, unlogged
            return False
        return hmac.compare_digest(given, self._key.encode())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if "%00" in request.rel_url.raw_path:  # Kestrel: "The path contains null characters.", before routing
            return web.Response(status=400)
        path = self._path(request)
        if path is None:
            return web.Response(status=404)
        method = request.method.upper()
        for route in self.routes:  # a method the route does not take is one more unmatched constraint: no 405
            if method not in route.methods:
                continue
            params = route.template.match(path)
            if params is None:
                continue
            if not self._authorised(route, request):
                return web.Response(status=401)
            return await self._invoke(route, params, request)
        return web.Response(status=404)

    async def _invoke(self, route: HttpRoute, params: dict[str, str], request: web.Request) -> web.Response:
        body = await request.read()
        if body and not request.content_length:  # ToRpcHttp passes a body only when ContentLength > 0
            logger.warning("Functions.%s: a body sent without Content-Length (chunked) does not reach an "
                           "out-of-process function in Azure; it gets an empty body here too", route.spec.name)
            body = b""
        http_request = func.HttpRequest(
            method=request.method.upper(),
            url=str(request.url),
            headers=_joined(request.headers),
            params=_query(request.query),
            route_params=params,
            body=body,
        )
        reason = f"This function was programmatically called via the host APIs ({request.method} {request.path})"
        try:
            response: web.Response = await self._invoker.call(
                route.spec, {route.spec.trigger_param: http_request}, reason=reason, convert=encode_result)
            return response
        except Exception:
            # the path only: the query may hold the function key (?code=)
            logger.exception("Functions.%s failed for %s %s", route.spec.name, request.method, request.path)
            return web.Response(status=500)
