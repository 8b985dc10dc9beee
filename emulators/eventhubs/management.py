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
signature, an unknown rule, an expired token or a token for another resource;
400 a missing or unsupported token ``type`` or a missing ``name``.

Audiences: as in Azure, a SAS token is valid only for the resource in its ``sr``
and the resources under it, and put-token's ``name`` says which resource the
client wants (the SDK signs for ``sb://<host>/<hub>``, its consumers for
``sb://<host>/<hub>/consumergroups/<group>``, and puts the same URI in
``name``). The emulator accepts a put-token only if ``sr`` covers ``name``
(:meth:`Audience.covers`): the same host (case-insensitively; scheme and port
are ignored, and both hosts come from the client, so the address the emulator
listens on never matters) and ``sr``'s path segments a case-insensitive prefix
of ``name``'s. ``sb://<host>/`` (a namespace-level token) thus covers every hub,
``sb://<host>/<hub>`` that hub, its partitions and consumer groups, and neither
``sb://<host>/<hub>2`` nor another host. Each accepted ``name`` is recorded in
the connection's :class:`Grants`; a hub link is attached only if one of them
covers its address, and a ``$management`` READ only if its ``security_token``
covers the hub it reads (or, without one, the connection's grants do). SASL
PLAIN with the emulator's key grants everything, as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit

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


@dataclass(frozen=True)
class Audience:
    """A resource URI (a token's ``sr``, a put-token ``name``) as host and path segments, both case-folded.

    ``sb://Host:5672/Hub/ConsumerGroups/$Default`` is host ``host`` and path ``(hub, consumergroups, $default)``;
    the scheme and port are dropped, and a URI without a scheme (``host/hub``, which Azure accepts in ``sr``)
    starts with its host.
    """

    uri: str
    host: str
    path: tuple[str, ...]

    @classmethod
    def parse(cls, uri: Any, what: str) -> Audience:
        if isinstance(uri, bytes):
            uri = uri.decode("utf-8", "replace")
        if not isinstance(uri, str) or not uri.strip():
            raise TokenError(401, f"Malformed authorization token: {what} is empty; expected a URI such as "
                                  "sb://<namespace>/<event hub>")
        try:
            parts = urlsplit(uri if "://" in uri else f"//{uri}")
            host = (parts.hostname or "").casefold()
        except ValueError:  # e.g. an unclosed IPv6 bracket
            host = ""
        if not host:
            raise TokenError(401, f"Malformed authorization token: {what} {uri!r} names no host; expected a URI "
                                  "such as sb://<namespace>/<event hub>")
        return cls(uri, host, segments(parts.path))

    def covers(self, other: Audience) -> bool:
        """Same host, and this path a prefix of the other's by whole segments."""
        return self.host == other.host and self.covers_path(other.path)

    def covers_path(self, path: Sequence[str]) -> bool:
        """This audience's path is a prefix of ``path`` (segments, compared case-insensitively)."""
        folded = tuple(part.casefold() for part in path)
        return folded[:len(self.path)] == self.path


def segments(path: str) -> tuple[str, ...]:
    """The non-empty, percent-decoded, case-folded segments of a URI path."""
    return tuple(unquote(part).casefold() for part in path.split("/") if part)


class Grants:
    """What one connection may reach: everything (SASL PLAIN) or what its accepted put-tokens name."""

    def __init__(self) -> None:
        self.everything = False
        self.audiences: list[Audience] = []

    def __bool__(self) -> bool:
        return self.everything or bool(self.audiences)

    def grant_all(self) -> None:
        self.everything = True

    def add(self, audience: Audience) -> None:
        if audience not in self.audiences:
            self.audiences.append(audience)

    def covers(self, path: Sequence[str]) -> bool:
        """Whether an entity path (``[hub, ...]``, as in a link address) is covered."""
        return self.everything or any(audience.covers_path(path) for audience in self.audiences)

    def describe(self) -> str:
        return ", ".join(repr(audience.uri) for audience in self.audiences) or "none"


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


def put_token(application: dict[Any, Any], body: Any, grants: Grants) -> Reply:
    """Handle a ``$cbs`` request; 202 means ``grants`` now include the request's ``name``."""
    operation = application.get("operation")
    if operation != "put-token":
        return Reply(400, f"unsupported $cbs operation {operation!r}: only put-token")
    token_type = application.get("type")
    if token_type != SAS_TOKEN_TYPE:
        return Reply(400, f"unsupported token type {token_type!r}: the emulator accepts {SAS_TOKEN_TYPE} only")
    name = application.get("name")
    if name is None:
        return Reply(400, "put-token without a name: name is the audience, the URI of the resource the token is "
                          "for (sb://<namespace>/<event hub>)")
    try:
        token_audience = Audience.parse(verify_sas_token(body), "the token's sr")
        wanted = Audience.parse(name, "the put-token name")
        if not token_audience.covers(wanted):
            raise TokenError(401, f"Unauthorized: the token is for {token_audience.uri!r} (its sr), which does not "
                                  f"cover the audience {wanted.uri!r}; a token is valid only for the resource in "
                                  "its sr and the resources under it")
    except TokenError as exc:
        logger.info("put-token refused (%s): %s", exc.status, exc.description)
        return Reply(exc.status, exc.description)
    grants.add(wanted)
    logger.debug("put-token accepted for %s", wanted.uri)
    return Reply(202, "Accepted")


def read(broker: Broker, application: dict[Any, Any], grants: Grants, hostname: str | None = None) -> Reply:
    """Handle a ``$management`` request (READ of an event hub or a partition).

    Authorised by its ``security_token`` when it has one (the SDK always sends it): the token's ``sr`` must cover
    the hub read (its host is compared with ``hostname``, the one in the client's open frame, when there is one);
    without a token, by the connection's ``grants``.
    """
    token = application.get("security_token")
    token_audience = None
    if token is not None:
        try:
            token_audience = Audience.parse(verify_sas_token(token), "the security_token's sr")
        except TokenError as exc:
            return Reply(exc.status, exc.description)
    operation = application.get("operation")
    if operation != "READ":
        return Reply(501, f"unsupported $management operation {operation!r}: only READ")
    kind = application.get("type")
    name = application.get("name")
    hub_path = segments(str(name)) if name is not None else ()
    if token_audience is not None:
        host = hostname.casefold() if hostname else token_audience.host
        if not (token_audience.host == host and token_audience.covers_path(hub_path)):
            return Reply(401, f"Unauthorized: the security_token is for {token_audience.uri!r} (its sr), which does "
                              f"not cover event hub {name!r}")
    elif not grants.covers(hub_path):
        return Reply(401, f"Unauthorized: no security_token, and no token put on $cbs on this connection covers "
                          f"event hub {name!r} (tokens accepted for: {grants.describe()})")
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
