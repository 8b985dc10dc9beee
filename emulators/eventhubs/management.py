"""Claims-based security (``$cbs`` put-token) and ``$management`` READ requests.

Both are request/response over a pair of links: the client sends a request on
its sender link, the reply goes back on the link the client attached with the
same node as source, carrying ``correlation-id`` = the request's
``message-id`` and the application properties ``status-code`` /
``status-description``.

Tokens: only ``servicebus.windows.net:sastoken`` (what connection strings
produce) is accepted. A token is verified like Azure does: HMAC-SHA256 with
the key of its ``skn`` rule over ``quote_plus(sr) + "\\n" + se``, not expired.
The emulator knows one rule, ``RootManageSharedAccessKey`` with key
``SAS_KEY_VALUE`` (as Microsoft's emulator). Statuses, as Azure answers them:
202 accepted; 401 a malformed token ("Malformed authorization token"), a wrong
signature, an unknown rule or an expired token; 400 a missing or unsupported
token ``type``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote_plus

from emulators.eventhubs import message
from emulators.eventhubs.broker import Broker
from emulators.eventhubs.codec import Array, Int, Long, Timestamp
from emulators.eventhubs.errors import AmqpError

logger = logging.getLogger(__name__)

KEY_NAME = "RootManageSharedAccessKey"
KEY_VALUE = "SAS_KEY_VALUE"
SAS_TOKEN_TYPE = "servicebus.windows.net:sastoken"
EVENTHUB_TYPE = "com.microsoft:eventhub"
PARTITION_TYPE = "com.microsoft:partition"


@dataclass(frozen=True)
class Reply:
    """A response: status code and description, and the amqp-value body."""

    status: int
    description: str
    body: Any = None


class TokenError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def verify_sas_token(token: Any, *, keys: dict[str, str] | None = None, now: float | None = None) -> str:
    """Check a ``SharedAccessSignature sr=..&sig=..&se=..&skn=..`` token; returns its audience ``sr``."""
    keys = keys if keys is not None else {KEY_NAME: KEY_VALUE}
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    if not isinstance(token, str) or not token.startswith("SharedAccessSignature "):
        raise TokenError(401, "Malformed authorization token: expected "
                              "'SharedAccessSignature sr=...&sig=...&se=...&skn=...'")
    fields = parse_qs(token[len("SharedAccessSignature "):], keep_blank_values=True)
    try:
        sr, sig, se, skn = (fields[name][0] for name in ("sr", "sig", "se", "skn"))
        expiry = int(se)
    except (KeyError, IndexError, ValueError):
        raise TokenError(401, "Malformed authorization token: sr, sig, se (integer) and skn are all required") from None
    key = keys.get(skn)
    if key is None:
        raise TokenError(401, f"unknown shared access key name {skn!r}")
    expected = base64.b64encode(hmac.new(key.encode(), f"{quote_plus(sr)}\n{expiry}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, sig.encode()):
        raise TokenError(401, "invalid signature: the token was not signed with the emulator's key")
    if expiry < (now if now is not None else time.time()):
        raise TokenError(401, f"token expired at {expiry}")
    return sr


def put_token(application: dict[Any, Any], body: Any) -> Reply:
    """Handle a ``$cbs`` request; 202 means the connection is now authorised."""
    operation = application.get("operation")
    if operation != "put-token":
        return Reply(400, f"unsupported $cbs operation {operation!r}: only put-token")
    token_type = application.get("type")
    if token_type != SAS_TOKEN_TYPE:
        return Reply(400, f"unsupported token type {token_type!r}: the emulator accepts {SAS_TOKEN_TYPE} only")
    try:
        audience = verify_sas_token(body)
    except TokenError as exc:
        logger.info("put-token refused (%s): %s", exc.status, exc.description)
        return Reply(exc.status, exc.description)
    logger.debug("put-token accepted for %s", audience)
    return Reply(202, "Accepted")


def read(broker: Broker, application: dict[Any, Any]) -> Reply:
    """Handle a ``$management`` request (READ of an event hub or a partition)."""
    token = application.get("security_token")
    if token is not None:
        try:
            verify_sas_token(token)
        except TokenError as exc:
            return Reply(exc.status, exc.description)
    operation = application.get("operation")
    if operation != "READ":
        return Reply(501, f"unsupported $management operation {operation!r}: only READ")
    kind = application.get("type")
    name = application.get("name")
    try:
        hub = broker.hub(str(name))
        if kind == EVENTHUB_TYPE:
            return Reply(200, "OK", {
                "name": hub.name,
                "type": EVENTHUB_TYPE,
                "created_at": Timestamp(hub.created_ms),
                "partition_count": Int(len(hub.partitions)),
                "partition_ids": Array(0xA1, [p.id for p in hub.partitions]),
            })
        if kind == PARTITION_TYPE:
            partition = hub.partition(str(application.get("partition")))
            props = partition.properties()
            return Reply(200, "OK", {
                "name": hub.name,
                "type": PARTITION_TYPE,
                "partition": partition.id,
                "begin_sequence_number": Long(props["begin_sequence_number"]),
                "last_enqueued_sequence_number": Long(props["last_enqueued_sequence_number"]),
                "last_enqueued_offset": props["last_enqueued_offset"],
                "last_enqueued_time_utc": Timestamp(props["last_enqueued_time_utc"]),
                "is_partition_empty": props["is_partition_empty"],
            })
    except AmqpError as exc:
        return Reply(404, exc.description)
    return Reply(400, f"unsupported $management type {kind!r}: {EVENTHUB_TYPE} or {PARTITION_TYPE}")


def encode_reply(request_properties: list[Any], reply: Reply) -> bytes:
    """The reply message for a request whose properties section is ``request_properties``."""
    message_id = request_properties[0]
    properties = [uuid.uuid4(), None, None, None, None, message_id, None, None, None, None, None, None, None]
    # Both spellings: the SDK's CBS link reads ``status-code``/``status-description``, its management link
    # ``status-code`` and (whatever it is told) ``statusDescription``; sending both costs nothing.
    application = {"status-code": Int(reply.status), "status-description": reply.description,
                   "statusCode": Int(reply.status), "statusDescription": reply.description}
    return message.build(properties=properties, application_properties=application, value=reply.body)
