"""The Key Vault secrets REST API over aiohttp, as azure-keyvault-secrets 4.12 calls it.

Authentication is Key Vault's challenge protocol: a request without
``Authorization: Bearer <token>`` gets 401 with
``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
resource="https://vault.azure.net"``; the SDK then asks its credential for
``https://vault.azure.net/.default`` and replays the request with the token. Any
non-empty bearer token is accepted (a development vault; nothing is verified).

Operations (``api-version`` required, see :data:`API_VERSIONS`):

==========  =====================================  ==========================
PUT         /secrets/{name}                        set (adds a version)
GET         /secrets/{name}[/{version}]            get (latest when empty)
PATCH       /secrets/{name}/{version}              update properties
GET         /secrets, /secrets/{name}/versions     list (paged, ``nextLink``)
DELETE      /secrets/{name}                        soft delete
GET         /deletedsecrets[/{name}]               list / get deleted
DELETE      /deletedsecrets/{name}                 purge
POST        /deletedsecrets/{name}/recover         recover
==========  =====================================  ==========================

Anything else is answered with a JSON error naming it: 400 ``NotSupported`` for
an operation this emulator does not implement (backup, restore, keys,
certificates), 405 ``MethodNotAllowed`` for a wrong method on a known path.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from emulators.keyvault.store import (
    MAX_VALUE_BYTES,
    RECOVERABLE_DAYS,
    RECOVERY_LEVEL,
    Secret,
    Vault,
    VaultError,
    Version,
    bad_parameter,
    parse_properties,
)

logger = logging.getLogger(__name__)

TENANT = "00000000-0000-0000-0000-000000000000"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
API_VERSIONS = frozenset({"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"})
MAX_PAGE = 25
MAX_BODY_BYTES = 1024 * 1024  # far above any valid body (a 25 KiB value, 15 tags, a 255-character content type)
VAULT: web.AppKey[Vault] = web.AppKey("vault", Vault)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- JSON shapes ---------------------------------------------------------------------------

def _base(request: web.Request) -> str:
    return f"https://{request.host}"


def _attributes(version: Version) -> dict[str, Any]:
    attributes: dict[str, Any] = {"enabled": version.enabled}
    if version.nbf is not None:
        attributes["nbf"] = version.nbf
    if version.exp is not None:
        attributes["exp"] = version.exp
    attributes.update(created=version.created, updated=version.updated,
                      recoveryLevel=RECOVERY_LEVEL, recoverableDays=RECOVERABLE_DAYS)
    return attributes


def _common(version: Version) -> dict[str, Any]:
    body: dict[str, Any] = {"attributes": _attributes(version)}
    if version.content_type is not None:
        body["contentType"] = version.content_type
    if version.tags is not None:
        body["tags"] = version.tags
    return body


def _bundle(request: web.Request, secret: Secret, version: Version, *, value: bool) -> dict[str, Any]:
    body = {"id": f"{_base(request)}/secrets/{secret.name}/{version.version}", **_common(version)}
    if value:
        body = {"value": version.value, **body}
    return body


def _item(request: web.Request, secret: Secret, version: Version | None = None) -> dict[str, Any]:
    suffix = f"/{version.version}" if version else ""
    return {"id": f"{_base(request)}/secrets/{secret.name}{suffix}", **_common(version or secret.latest)}


def _deleted(request: web.Request, secret: Secret, body: dict[str, Any]) -> dict[str, Any]:
    return {"recoveryId": f"{_base(request)}/deletedsecrets/{secret.name}", "deletedDate": secret.deleted,
            "scheduledPurgeDate": secret.scheduled_purge, **body}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"x-ms-request-id": str(uuid.uuid4())})


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    response = _json({"error": {"code": code, "message": message}}, status)
    response.headers.update(headers)
    return response


# --- paging --------------------------------------------------------------------------------

def _page(request: web.Request, items: list[tuple[str, dict[str, Any]]]) -> web.Response:
    """One page of ``(sort key, item)`` pairs after ``$skiptoken``, with ``nextLink`` when more remain."""
    raw = request.query.get("maxresults")
    try:
        size = MAX_PAGE if raw is None else int(raw)
    except ValueError:
        raise bad_parameter(f"Query parameter 'maxresults' must be an integer, not {raw!r}") from None
    if not 1 <= size <= MAX_PAGE:
        raise bad_parameter(f"Query parameter 'maxresults' must be between 1 and {MAX_PAGE}, not {size}")
    after = _decode_token(request.query.get("$skiptoken"))
    remaining = [(key, item) for key, item in items if after is None or key > after]
    page, more = remaining[:size], len(remaining) > size
    next_link = None
    if more:
        query = urlencode({"api-version": request.query["api-version"], "$skiptoken": _encode_token(page[-1][0]),
                           "maxresults": size})
        next_link = f"{_base(request)}{request.path}?{query}"
    return _json({"value": [item for _, item in page], "nextLink": next_link})


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": key}).encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> str | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded))["after"]
        if isinstance(after, str):
            return after
    except (ValueError, KeyError, TypeError):
        pass
    raise bad_parameter(f"Query parameter '$skiptoken' is not a token this vault issued: {token!r}")


# --- middleware ----------------------------------------------------------------------------

@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as Azure's ``{"error": {...}}`` JSON, naming what was wrong."""
    try:
        response = await handler(request)
    except VaultError as exc:
        response = _json(exc.body(), exc.status)
    except web.HTTPMethodNotAllowed as exc:
        response = _error(405, "MethodNotAllowed",
                          f"{request.method} is not allowed on {request.path} (allowed: "
                          f"{', '.join(sorted(exc.allowed_methods))})", Allow=", ".join(sorted(exc.allowed_methods)))
    except web.HTTPNotFound:
        response = _error(400, "NotSupported",
                          f"{request.method} {request.path} is not supported by the Sluice Key Vault emulator "
                          "(it serves the secrets API only: see docs/emulators/keyvault.md)")
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        response = _error(500, "InternalServerError", f"the emulator failed on {request.method} {request.path}")
    logger.debug("%s %s -> %s", request.method, request.path, response.status)
    return response


_QUERY_PARAMETERS = {"api-version", "maxresults", "$skiptoken"}


@web.middleware
async def challenge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 with the Key Vault challenge unless a bearer token is present (any token is accepted)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                      **{"WWW-Authenticate": CHALLENGE})
    version = request.query.get("api-version")
    if not version:
        raise bad_parameter("The 'api-version' query parameter is required")
    if version not in API_VERSIONS:
        raise bad_parameter(f"The specified version ({version}) is not recognized. Supported: "
                            f"{', '.join(sorted(API_VERSIONS))}")
    unknown = sorted(set(request.query) - _QUERY_PARAMETERS)
    if unknown:  # e.g. outContentType: a certificate-backed secret's conversion, which this emulator has none of
        raise VaultError(400, "NotSupported", f"The query parameters {', '.join(unknown)} are not supported by the "
                         "Sluice Key Vault emulator (it takes api-version, maxresults and $skiptoken)")
    return await handler(request)


# --- handlers ------------------------------------------------------------------------------

async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        # aiohttp stops reading at client_max_size. Only a value can make a body that big: say so as Azure does for
        # a value over the limit (400 BadParameter), not as a 500, which the SDK would retry with the same body.
        raise bad_parameter(f"The request body is larger than {MAX_BODY_BYTES} bytes: Property 'value' may be at "
                            f"most {MAX_VALUE_BYTES} bytes (25 KiB)") from None
    except ValueError:
        raise bad_parameter("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_parameter("The request body must be a JSON object")
    return body


async def set_secret(request: web.Request) -> web.Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"value", "contentType", "tags", "attributes"})
    if unknown:
        raise bad_parameter(f"Unknown properties in the request body: {', '.join(unknown)}")
    props = parse_properties(body)
    secret, version = request.app[VAULT].set(request.match_info["name"], body.get("value"), props)
    return _json(_bundle(request, secret, version, value=True))


async def get_secret(request: web.Request) -> web.Response:
    secret, version = request.app[VAULT].get(request.match_info["name"], request.match_info.get("version", ""))
    return _json(_bundle(request, secret, version, value=True))


async def update_secret(request: web.Request) -> web.Response:
    body = await _body(request)
    if "value" in body:
        raise bad_parameter("Updating properties cannot change the value: set a new version with PUT instead")
    unknown = sorted(set(body) - {"contentType", "tags", "attributes"})
    if unknown:
        raise bad_parameter(f"Unknown properties in the request body: {', '.join(unknown)}")
    secret, version = request.app[VAULT].update(request.match_info["name"], request.match_info["version"],
                                                parse_properties(body))
    return _json(_bundle(request, secret, version, value=False))


async def list_secrets(request: web.Request) -> web.Response:
    secrets = request.app[VAULT].names()
    return _page(request, [(s.name.lower(), _item(request, s)) for s in secrets])


async def list_versions(request: web.Request) -> web.Response:
    secret, versions = request.app[VAULT].versions(request.match_info["name"])
    return _page(request, [(f"{i:08d}", _item(request, secret, v)) for i, v in enumerate(versions)])


async def delete_secret(request: web.Request) -> web.Response:
    secret = request.app[VAULT].delete(request.match_info["name"])
    return _json(_deleted(request, secret, _bundle(request, secret, secret.latest, value=False)))


async def get_deleted(request: web.Request) -> web.Response:
    secret = request.app[VAULT].deleted(request.match_info["name"])
    return _json(_deleted(request, secret, _bundle(request, secret, secret.latest, value=False)))


async def list_deleted(request: web.Request) -> web.Response:
    secrets = request.app[VAULT].deleted_names()
    return _page(request, [(s.name.lower(), _deleted(request, s, _item(request, s))) for s in secrets])


async def purge_deleted(request: web.Request) -> web.Response:
    request.app[VAULT].purge(request.match_info["name"])
    return web.Response(status=204, headers={"x-ms-request-id": str(uuid.uuid4())})


async def recover_deleted(request: web.Request) -> web.Response:
    secret = request.app[VAULT].recover(request.match_info["name"])
    return _json(_bundle(request, secret, secret.latest, value=False))


def _unsupported(operation: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raise VaultError(400, "NotSupported",
                         f"{operation} ({request.method} {request.path}) is not supported by the Sluice Key Vault "
                         "emulator")

    return handler


def create_app(vault: Vault) -> web.Application:
    app = web.Application(middlewares=[errors, challenge], client_max_size=MAX_BODY_BYTES)
    app[VAULT] = vault
    r = app.router
    r.add_get("/secrets", list_secrets)
    r.add_post("/secrets/restore", _unsupported("restore"))
    r.add_put("/secrets/{name}", set_secret)
    r.add_get("/secrets/{name}", get_secret)
    r.add_delete("/secrets/{name}", delete_secret)
    r.add_get("/secrets/{name}/versions", list_versions)
    r.add_post("/secrets/{name}/backup", _unsupported("backup"))
    r.add_get("/secrets/{name}/{version:[^/]*}", get_secret)
    r.add_patch("/secrets/{name}/{version:[^/]*}", update_secret)
    r.add_get("/deletedsecrets", list_deleted)
    r.add_get("/deletedsecrets/{name}", get_deleted)
    r.add_delete("/deletedsecrets/{name}", purge_deleted)
    r.add_post("/deletedsecrets/{name}/recover", recover_deleted)
    return app
