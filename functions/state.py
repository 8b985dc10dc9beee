"""HTTP trigger of ``GET /api/devices/{device_id}/state?at=T``: a device's state at a time (``docs/openapi.json``).

200 with the device's latest event at or before ``at`` (``shared.services.state``);
400 naming the bad parameter (``at`` missing or not an RFC 3339 time with an
offset, a malformed device id); 404 when the device has no event at or before
``at``; 503 when Cassandra cannot answer. The error bodies are the lookups'.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC
from typing import Any

import azure.functions as func

from functions.parameters import BadParameter, logged_path, parse_device_id, parse_until
from shared import bootstrap
from shared.exceptions import DependencyUnavailable

logger = logging.getLogger(__name__)

bp = func.Blueprint()

RETRY_AFTER_SECONDS = 5


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, separators=(",", ":")), status_code=status, mimetype="application/json",
                             charset="utf-8", headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                                       **(headers or {})})


@bp.function_name("device_state_at")
@bp.route(route="devices/{device_id}/state", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def device_state_at(req: func.HttpRequest) -> func.HttpResponse:
    try:
        device_id = parse_device_id(req.route_params.get("device_id"))
        value = req.params.get("at")
        if value is None or value == "":
            raise BadParameter("at", "is required: an RFC 3339 time with an offset, e.g. 2026-11-23T09:30:00Z")
        at = parse_until(value, "at")
        assert at is not None
        document = bootstrap.state_service().at(device_id, at.astimezone(UTC))
    except BadParameter as exc:
        return _json({"error": "bad_request", "message": exc.detail, "parameter": exc.parameter}, 400)
    except DependencyUnavailable as exc:
        logger.warning("state lookup %s failed: %s", logged_path(req.url), exc)
        return _json({"error": "dependency_unavailable", "message": str(exc), "dependency": exc.dependency}, 503,
                     {"Retry-After": str(RETRY_AFTER_SECONDS)})
    if document is None:
        return _json({"error": "not_found", "message": f"device {device_id!r} has no event at or before {value}"}, 404)
    return _json(document, 200)
