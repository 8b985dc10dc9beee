"""The event contract: what a device sends through Event Hubs, validated with pydantic.

A body is UTF-8 JSON holding one event object or an array of them (see
``docs/events.md`` and ``docs/event.schema.json``). Validation never raises for bad
input: :func:`parse_records` returns the valid events and, for everything else, a
:class:`Rejected` that keeps the reason and the original bytes, so the caller can
dead-letter it and nothing is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.config import JsonDict

from shared.domain.times import leap_second, utc

SUPPORTED_SCHEMA_VERSIONS = (1,)
# RFC 3339 date-time: seconds required, any fraction, "Z" or a +hh:mm offset ("T" may be a space, as section 5.6 notes);
# also the form of a time in a reference CSV (shared/adapters/reference.py)
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)\Z", re.ASCII)
# The canonical UUID text, as the schema's "format": "uuid" (RFC 9562) takes it; pydantic alone would also take
# "urn:uuid:...", "{...}" and 32 hex digits, which a producer validating against the schema could never send.
UUID_PATTERN = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
_UUID = re.compile(UUID_PATTERN.replace("$", "\\Z"), re.ASCII)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000): PostgreSQL text and jsonb cannot hold it")
    return value


# Text that reaches PostgreSQL (enriched rows, figures): refused with NUL, which PostgreSQL cannot store, so such an
# event is dead-lettered here instead of stopping the enrichment of its window at every run.
NO_NUL = "^[^\\u0000]*$"
NoNul = (AfterValidator(_no_nul), Field(json_schema_extra={"pattern": NO_NUL}))
# a key's constraints are published as the object's propertyNames (pydantic would make them patternProperties,
# which leave keys that do not match unconstrained)
NAME_SCHEMA: JsonDict = {"propertyNames": {"minLength": 1, "maxLength": 64, "pattern": NO_NUL}}
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=64), *NoNul]
MeasurementName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_no_nul)]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_no_nul)]
AttributeValue = Annotated[str, StringConstraints(max_length=1024), *NoNul]
Measurement = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one event; they come from the ingest settings."""

    max_body_bytes: int = 1_048_576
    max_future_skew: timedelta = timedelta(minutes=5)
    max_measurements: int = 64
    max_attributes: int = 32


@dataclass(frozen=True, slots=True)
class EventMetadata:
    """Where an event came from in Event Hubs; kept with the event and with its dead letter."""

    partition_id: str | None = None
    offset: str | None = None
    sequence_number: int | None = None
    enqueued_time: datetime | None = None
    partition_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition_id": self.partition_id,
            "offset": self.offset,
            "sequence_number": self.sequence_number,
            "enqueued_time": self.enqueued_time.isoformat() if self.enqueued_time else None,
            "partition_key": self.partition_key,
        }


class DeviceEvent(BaseModel):
    """One validated device event (schema version 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    event_id: uuid.UUID = Field(json_schema_extra={"pattern": UUID_PATTERN})
    device_id: DeviceId
    event_type: EventType
    timestamp: AwareDatetime
    severity: Severity = "info"
    measurements: dict[MeasurementName, Measurement] = Field(default_factory=dict, json_schema_extra=NAME_SCHEMA)
    attributes: dict[AttributeName, AttributeValue] = Field(default_factory=dict, json_schema_extra=NAME_SCHEMA)
    schema_version: int = Field(1, json_schema_extra={"enum": list(SUPPORTED_SCHEMA_VERSIONS)})

    @field_validator("event_id", mode="before")
    @classmethod
    def _uuid_from_text(cls, value: object) -> object:
        if not isinstance(value, str) or not _UUID.match(value):
            raise ValueError("must be a UUID string in its 8-4-4-4-12 hex form "
                             "(e.g. 5b7e3c52-6a0e-4f57-9d7b-2f3f3f0d6a11)")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: object) -> object:
        # pydantic also takes Unix numbers (as numbers and as text, "1700000000"; past 2e10 read as milliseconds),
        # offset-less text and times without seconds; the contract does not.
        if not isinstance(value, str) or not RFC3339.match(value):
            raise ValueError("must be an RFC 3339 string with a UTC offset (e.g. 2026-11-23T11:00:00.123Z)")
        return leap_second(value) if value[17:19] == "60" else value

    @field_validator("timestamp")
    @classmethod
    def _not_too_far_ahead(cls, value: datetime, info: ValidationInfo) -> datetime:
        # Judged against when Event Hubs enqueued the event (context "enqueued"): an event cannot be far ahead of
        # the moment the hub accepted it, and that moment is the same on every attempt, redelivery and replay, so
        # the verdict is too. The receiver's clock ("now") only stands in for a record without an enqueued time.
        context = info.context or {}
        limits: Limits = context.get("limits") or Limits()
        enqueued: datetime | None = context.get("enqueued")
        reference = utc(enqueued) if enqueued is not None else (context.get("now") or datetime.now(UTC))
        if value - reference > limits.max_future_skew:
            against = "when Event Hubs enqueued it" if enqueued is not None else "the receiver's clock"
            raise ValueError(f"is more than {limits.max_future_skew} ahead of {against} ({reference.isoformat()})")
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC; pydantic reports only ValueErrors
            raise ValueError("is before 0001-01-01T00:00:00Z, the earliest time that can be stored") from None

    @field_validator("measurements")
    @classmethod
    def _bounded_measurements(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        limits: Limits = (info.context or {}).get("limits") or Limits()
        if len(value) > limits.max_measurements:
            raise ValueError(f"has {len(value)} entries; at most {limits.max_measurements} are allowed")
        return value

    @field_validator("attributes")
    @classmethod
    def _bounded_attributes(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        limits: Limits = (info.context or {}).get("limits") or Limits()
        if len(value) > limits.max_attributes:
            raise ValueError(f"has {len(value)} entries; at most {limits.max_attributes} are allowed")
        return value

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_version(cls, value: object) -> object:
        # JSON has one number type: 1.0 is the integer 1 (JSON Schema counts it so); true is no number.
        if type(value) is float and value.is_integer():
            value = int(value)
        if type(value) is not int or value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(f"{_shown(value)} is not a supported schema version {SUPPORTED_SCHEMA_VERSIONS}")
        return value


@dataclass(frozen=True, slots=True)
class Event:
    """A valid event and where it came from."""

    body: DeviceEvent
    metadata: EventMetadata

    @property
    def event_id(self) -> uuid.UUID:
        return self.body.event_id

    @property
    def device_id(self) -> str:
        return self.body.device_id

    @property
    def timestamp(self) -> datetime:
        return self.body.timestamp

    @property
    def arrival_time(self) -> datetime:
        """When Event Hubs accepted the event (deterministic across replays); the event time if unknown."""
        return self.metadata.enqueued_time or self.body.timestamp


@dataclass(frozen=True, slots=True)
class BadElement:
    """One bad element of a JSON array body: its position, what is wrong with it, its id when readable.

    ``problem`` is the reason without the element's position (``is a JSON number, not an object``), so the many
    elements of one body that fail alike share one text.
    """

    index: int
    problem: str
    event_id: str | None = None

    @property
    def reason(self) -> str:
        return f"element {self.index}{_naming(self.event_id)} {self.problem}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """Input that could not become an event: the reason, the original bytes and where they came from.

    ``original`` is always the whole body exactly as received, once per record: the
    bad elements of one array body are one ``Rejected``, listed in ``elements``
    (each with its index and reason), so dead-lettering a body costs about its size
    however many elements it has. ``index`` and ``event_id`` are those of the
    (first) bad element (``index`` ``None``: the whole body is refused, e.g. not
    JSON); ``event_id`` is filled when the bad item still carried a readable id.
    """

    reason: str
    original: bytes
    metadata: EventMetadata
    index: int | None = None
    event_id: str | None = None
    elements: tuple[BadElement, ...] = ()
    lettered: datetime | None = None
    """The record's ``RawRecord.lettered``: the day of the dead letter it was replayed from."""
    lettered_hub: str | None = None
    """The record's ``RawRecord.lettered_hub``: the hub tag of the dead letter it was replayed from."""
    lettered_from: str | None = None
    """The record's ``RawRecord.lettered_from``: the hub that dead letter names in its metadata."""

    @property
    def count(self) -> int:
        """How many items were refused: the bad elements of an array body, or the one body."""
        return len(self.elements) or 1


def _rejected_elements(record: RawRecord, bad: Sequence[BadElement], total: int) -> Rejected:
    first = bad[0]
    reason = first.reason if len(bad) == 1 else f"{len(bad)} of {total} elements are invalid; the first: {first.reason}"
    return Rejected(reason, record.body, record.metadata, first.index, first.event_id, tuple(bad), record.lettered,
                    record.lettered_hub, record.lettered_from)


@dataclass(slots=True)
class Parsed:
    """The outcome of parsing a batch: valid events, rejected input, exact duplicates dropped."""

    oks: list[Event] = field(default_factory=list)
    errs: list[Rejected] = field(default_factory=list)
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class Pending:
    """The elements of an array body that a rejected dead letter holds as not stored.

    The others were stored at ingest (or, the store down on the final attempt, are in their batch's letter, which
    holds the body whole). A replay runs only these, so it never writes an element stored long ago over a later
    correction of its id. ``indexes``: the bad elements the letter names. ``others_if_invalid``: the letter is of
    the older per-element shape and names one bad element, the body's other bad ones having letters of their own; an
    element outside ``indexes`` is then still run when it is invalid (so the body's one letter, written by the
    replay, names every element still invalid) and skipped when valid (stored at ingest, or by the replay of its own
    letter).
    """

    indexes: frozenset[int]
    others_if_invalid: bool = False


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Event Hubs event as received: its body bytes and metadata.

    ``pending``: replayed from a rejected letter of an array body, the elements still to ingest (``None``: all).
    ``lettered``: replayed from a dead letter, the day its name carries (midnight UTC). A record without an
    enqueued time is dead-lettered again under that day, not the day of the replay: the same name, so a letter
    still invalid stays one letter however many days it is replayed on.
    ``lettered_hub``: replayed from a dead letter, the hub tag its name carries (``""``: a name of the layout before
    names carried one), so it is dead-lettered again under that same name too, whichever hub the replay is run for.
    ``lettered_from``: replayed from a dead letter, the hub (``<namespace>/<hub>``) it names in its metadata (``None``:
    none), which the letter written again names too, not the hub the replay is run for.
    """

    body: bytes
    metadata: EventMetadata
    pending: Pending | None = None
    lettered: datetime | None = None
    lettered_hub: str | None = None
    lettered_from: str | None = None


def parse_records(records: Iterable[RawRecord], *, limits: Limits, now: datetime | None = None) -> Parsed:
    """Validate every record; never raises for bad input.

    A record whose body is an array yields one event per valid element; its bad
    elements are rejected together, in one :class:`Rejected` naming each (index,
    reason), which keeps the body once. An event id seen twice in the
    batch is a duplicate (``duplicates``): the later copy, with its Event Hubs
    metadata, replaces the earlier (which is the one counted), whether it is an
    at-least-once re-send with the same content or a correction re-sent under its
    id: as if each had come in a batch of its own, where the last write of an id
    wins. So how a redelivery after a crash cuts the batches never changes what is
    stored, not even the stored copy's sequence number.
    A timestamp's future skew is judged against the record's Event Hubs enqueued
    time, so a record gets the same verdict on every retry, redelivery and replay;
    ``now`` (the clock by default) stands in only for a record without one.
    """
    clock = {"limits": limits, "now": now or datetime.now(UTC)}
    parsed = Parsed()
    # By the id's int (equal ids, and no Python-level UUID.__hash__ per lookup): the event and its place in oks.
    seen: dict[int, tuple[DeviceEvent, int]] = {}
    for record in records:
        bad: list[BadElement] = []
        total = 0
        context = {**clock, "enqueued": record.metadata.enqueued_time}  # the skew's reference, when known
        for item in _items(record, limits, context):
            total += 1
            if item is None:  # an element stored before (a replayed letter's body): counted, not run again
                continue
            if isinstance(item, Rejected):
                parsed.errs.append(item if record.lettered is None and record.lettered_hub is None
                                   else replace(item, lettered=record.lettered, lettered_hub=record.lettered_hub,
                                                lettered_from=record.lettered_from))
                continue
            if isinstance(item, BadElement):
                bad.append(item)
                continue
            event, _ = item
            key = event.event_id.int
            earlier = seen.get(key)
            if earlier is None:
                seen[key] = (event, len(parsed.oks))
                parsed.oks.append(Event(event, record.metadata))
                continue
            # The later copy wins, in the earlier's place, and the earlier counts as the duplicate: a correction, and
            # an identical re-send too, whose Event Hubs metadata is the later record's, as in a batch of its own.
            parsed.duplicates += 1
            seen[key] = (event, earlier[1])
            parsed.oks[earlier[1]] = Event(event, record.metadata)
        if bad:
            parsed.errs.append(_rejected_elements(record, bad, total))
    return parsed


def _items(record: RawRecord, limits: Limits,
           context: dict[str, Any]) -> Iterator[Rejected | BadElement | tuple[DeviceEvent, int | None] | None]:
    """Each item of the body: an event, a bad element, the rejected body, or ``None`` for an element the record's
    ``pending`` leaves out (stored before)."""
    body = record.body
    if len(body) > limits.max_body_bytes:
        yield Rejected(f"body is {len(body)} bytes; at most {limits.max_body_bytes} are allowed", body, record.metadata)
        return
    if body.startswith(b"\xef\xbb\xbf"):
        yield Rejected("body starts with a UTF-8 byte order mark; send plain UTF-8 JSON", body, record.metadata)
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Rejected(f"body is not valid UTF-8 (byte {exc.start}: {exc.reason})", body, record.metadata)
        return
    if body.lstrip(_JSON_WHITESPACE)[:1] == b"{":
        # One event object, the usual body: pydantic parses and validates it in one pass, with no Python dict
        # in between. Anything it refuses takes the path below, which says why in the terms of the contract.
        try:
            yield DeviceEvent.model_validate_json(body, context=context), None
            return
        except ValidationError:
            pass
    try:
        document = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        # Nesting beyond the parser's limit, or a number past it, is no JSON error: read each element on its own, so
        # one element nested too deep or holding such a number is refused by its index and id and its siblings are
        # stored. Only such bodies pay for it.
        document = _unread(body) if str(exc).startswith(_PARSER_LIMITS) else None
        if document is None:
            hint = "; NaN and Infinity are not JSON" if b"NaN" in body or b"Infinity" in body else ""
            yield Rejected(f"body is not valid JSON ({exc}){hint}", body, record.metadata)
            return
    if isinstance(document, dict):
        elements: Sequence[tuple[int | None, Any]] = [(None, document)]
    elif isinstance(document, list) and document:
        elements = list(enumerate(document))
    elif isinstance(document, list):
        yield Rejected("body is an empty JSON array", body, record.metadata)
        return
    elif isinstance(document, _Unread):
        elements = [(None, document)]
    else:
        yield Rejected(
            f"body is a JSON {_json_type(document)}, not an event object or an array of them", body, record.metadata
        )
        return
    held_indexes = record.pending.indexes if record.pending is not None else None
    others_run_if_invalid = record.pending is None or record.pending.others_if_invalid
    for index, element in elements:
        held = held_indexes is None or index is None or index in held_indexes
        if not held and not others_run_if_invalid:
            yield None
            continue
        if not isinstance(element, dict):
            problem, event_id = _not_an_object(element)
        else:
            try:
                valid = DeviceEvent.model_validate(element, context=context)
                yield (valid, index) if held else None
                continue
            except ValidationError as exc:
                raw_id = element.get("event_id")
                problem, event_id = f"is invalid: {_describe(exc)}", raw_id if isinstance(raw_id, str) else None
        if index is None:
            yield Rejected(f"event{_naming(event_id)} {problem}", body, record.metadata, None, event_id)
        else:
            yield BadElement(index, problem, event_id)


_JSON_WHITESPACE = b" \t\r\n"

# How deep the JSON parser (pydantic_core's jiter) reads nested arrays and objects; deeper, it stops with _RECURSION.
MAX_JSON_DEPTH = 200
_RECURSION = "recursion limit exceeded"
# A number whose integer part has more than 4,300 digits (Python's int limit) the parser refuses with _OUT_OF_RANGE:
# valid JSON, far beyond double range, so no valid event holds one. Its other errors are JSON errors.
_OUT_OF_RANGE = "number out of range"
_PARSER_LIMITS = (_RECURSION, _OUT_OF_RANGE)
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
# The tokens that delimit a body's top-level values: whole strings (so their commas and brackets are skipped),
# brackets, braces and commas, or a quote that opens a string never closed. That last one must be a token (as in
# _DEEP_TOKENS): without it the search would go on from the next byte, inside the unclosed string, and at each of
# its quotes scan to the end of the body again, which is quadratic (``"\\"\\"\\"...``: an hour for 1 MiB).
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]|"', re.DOTALL)
_OPENING = {ord("]"): ord("["), ord("}"): ord("{")}


@dataclass(frozen=True, slots=True)
class _Unread:
    """A value (an event, or an element of an array body) the parser does not read though it is JSON: nested deeper
    than :data:`MAX_JSON_DEPTH`, or holding a number out of its range. ``problem``: why, as a reason says it;
    ``event_id``: its event id when readable."""

    problem: str
    event_id: str | None


def _unread(body: bytes) -> Any:
    """The document of a body the parser refused for one of its limits (:data:`_PARSER_LIMITS`): an array of its
    elements, each parsed on its own (:class:`_Unread` for one past a limit), or an :class:`_Unread` object;
    ``None`` when the body is not valid JSON apart from that (the caller then says so, as before)."""
    stripped = body.strip(_JSON_WHITESPACE)
    if stripped[:1] == b"{":
        value = _value(stripped)
        return None if value is _NOT_JSON else value
    if stripped[:1] != b"[" or stripped[-1:] != b"]":
        return None
    spans = _top_level(stripped[1:-1])
    if spans is None:
        return None
    values = [_value(span) for span in spans]
    return None if any(v is _NOT_JSON for v in values) else values


def _top_level(inner: bytes) -> list[bytes] | None:
    """The values between an array's brackets, split at its top-level commas; ``None`` when brackets do not match
    or a string is never closed."""
    stack: list[int] = []
    spans: list[bytes] = []
    start = 0
    for match in _TOKENS.finditer(inner):
        if match.group() == b'"':  # a lone quote (a whole string is 2 bytes at least): not JSON, stop here
            return None
        token = match.group()[0]
        if token in (ord("["), ord("{")):
            stack.append(token)
        elif token in _OPENING:
            if not stack or stack.pop() != _OPENING[token]:
                return None
        elif token == ord(",") and not stack:
            spans.append(inner[start:match.start()])
            start = match.end()
    if stack:
        return None
    spans.append(inner[start:])
    return spans


_NOT_JSON = object()


def _value(span: bytes) -> Any:
    """One top-level value: parsed, :class:`_Unread`, or :data:`_NOT_JSON`."""
    try:
        return pydantic_core.from_json(span, allow_inf_nan=False)
    except ValueError as exc:
        if not str(exc).startswith(_PARSER_LIMITS):
            return _NOT_JSON
        too_deep = str(exc).startswith(_RECURSION)
    return _walked(span, too_deep=too_deep)


# The tokens of a value read by :func:`_walked`: a whole string, a run of "[" (and the "{" after it), a run of
# "]" and "}", a brace, colon or comma, whitespace, a run of anything else (a number or literal, or not JSON), or a
# quote that opens a string never closed. Runs, so a body of thousands of brackets costs a few tokens.
_DEEP_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|\[+{?|[\]}]+|[{:,]|[ \t\r\n]+|[^ \t\r\n\[\]{}:,"]+|"', re.DOTALL)
_CLOSING_TO_OPENING = bytes.maketrans(b"]}", b"[{")
# What may come next in :func:`_walked`: a value; a value or "]" (after "["); a key; a key or "}" (after "{");
# the colon after a key; a comma or a closing bracket (after a value inside an array or object); nothing.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _COMMA_OR_CLOSE, _END = range(7)


def _walked(span: bytes, *, too_deep: bool) -> Any:
    """A value the parser stopped reading at one of its limits (``too_deep``: its depth limit, else a number out of
    range): :class:`_Unread` with its event id, or :data:`_NOT_JSON` when it is not JSON elsewhere too.

    The judgement must be the parser's, at any depth: the nesting is followed here with a stack of open brackets
    (no recursion, so no depth limit of Python's either), and each string, number and literal is read by the parser
    itself, which refuses what it refuses in place (a lone surrogate escape, ``NaN``, ``tru``) but for a JSON number
    out of its range, whose place is kept for the reason. The id is the ``event_id`` string of a top-level object
    (the last one, as a parsed object keeps)."""
    stack = bytearray()
    path: list[Any] = []  # for each open bracket, the key or index of the member being read in it
    out_of_range: list[Any] | None = None  # the path of the first number out of range
    expect = _VALUE
    event_id: str | None = None
    read: dict[bytes, Any] = {}  # strings and scalars read so far (keys repeat at every level)
    for match in _DEEP_TOKENS.finditer(span):
        token = match.group()
        first = token[:1]
        if first in b" \t\r\n":
            continue
        if first == b"]" or first == b"}":
            closes = token.translate(_CLOSING_TO_OPENING)[::-1]
            if expect not in (_COMMA_OR_CLOSE, _VALUE_OR_CLOSE if first == b"]" else _KEY_OR_CLOSE) \
                    or not stack.endswith(closes):
                return _NOT_JSON
            del stack[len(stack) - len(closes):]
            del path[len(path) - len(closes):]
            expect = _COMMA_OR_CLOSE if stack else _END
        elif first == b":" or first == b",":
            if expect != (_COLON if first == b":" else _COMMA_OR_CLOSE):
                return _NOT_JSON
            if first == b"," and stack[-1] == ord("["):
                path[-1] += 1
            expect = _VALUE if first == b":" or stack[-1] == ord("[") else _KEY
        elif first == b'"' and expect in (_KEY, _KEY_OR_CLOSE):
            path[-1], expect = _read(token, read), _COLON
            if path[-1] is _NOT_JSON:
                return _NOT_JSON
        elif expect not in (_VALUE, _VALUE_OR_CLOSE):
            return _NOT_JSON
        else:  # a value: a string, a number or literal, or opening brackets
            opens = first == b"[" or first == b"{"
            value = None if opens else _read(token, read)
            if value is _NOT_JSON:
                return _NOT_JSON
            if value is _OUT_OF_RANGE_NUMBER and out_of_range is None:
                out_of_range = path.copy()
            if stack == b"{" and path[-1] == "event_id":
                event_id = value if isinstance(value, str) else None
            if opens:
                stack += token
                path.extend(None if bracket == ord("{") else 0 for bracket in token)
                expect = _KEY_OR_CLOSE if token.endswith(b"{") else _VALUE_OR_CLOSE
            else:
                expect = _COMMA_OR_CLOSE if stack else _END
    if expect != _END:
        return _NOT_JSON
    if too_deep:
        return _Unread(f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; the JSON parser reads at "
                       f"most {MAX_JSON_DEPTH}", event_id)
    if out_of_range is None:  # the parser's number was not found: judged as before, not JSON
        return _NOT_JSON
    if not out_of_range:  # the value itself is the number
        return _Unread("is a JSON number, not an object", None)
    return _Unread(f"is invalid: {_location(out_of_range)}: number out of range: its integer part has more than "
                   "4,300 digits, which the JSON parser does not read (far beyond double range)", event_id)


_OUT_OF_RANGE_NUMBER = object()


def _read(token: bytes, read: dict[bytes, Any]) -> Any:
    """A string, number or literal as the parser reads it, :data:`_OUT_OF_RANGE_NUMBER` for a JSON number it
    refuses as out of its range, or :data:`_NOT_JSON`."""
    if token not in read:
        try:
            read[token] = pydantic_core.from_json(token, allow_inf_nan=False)
        except ValueError as exc:
            if not (str(exc).startswith(_OUT_OF_RANGE) and _JSON_NUMBER.match(token)):
                return _NOT_JSON
            read[token] = _OUT_OF_RANGE_NUMBER
    return read[token]


def _not_an_object(element: Any) -> tuple[str, str | None]:
    """The problem of an element that is no JSON object (or was not read as one: past a limit of the parser), and
    its id."""
    if isinstance(element, _Unread):
        return element.problem, element.event_id
    return f"is a JSON {_json_type(element)}, not an object", None


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))
"""JSON's name for each Python type the parser yields (``bool`` first: it is an ``int``)."""


def _json_type(value: Any) -> str:
    """The JSON type of a parsed value (a letter's reason is for the producer, who knows JSON's names, not Python's)."""
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def _naming(raw_id: str | None) -> str:
    return f" (event_id {raw_id})" if isinstance(raw_id, str) and len(raw_id) <= 64 else ""


# The most characters of the input a reason holds for one value or key, so that it stays short whatever was sent.
_SHOWN = 64


def _shown(value: object) -> str:
    """A value as a reason names it: as JSON when a short scalar, else by its JSON type (a string with its length)."""
    kind = _json_type(value)
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"a JSON string of {len(value)} characters"
    if isinstance(value, str | float | bool) or value is None or (isinstance(value, int) and value.bit_length() < 256):
        text = json.dumps(value)
        if len(text) <= _SHOWN:
            return f"{text} (a JSON {kind})"
    return f"a JSON {kind}"


def _location(parts: Iterable[Any]) -> str:
    """Where in an event a problem is (``measurements.t``), each key cut to its first :data:`_SHOWN` characters."""
    texts = (str(part) for part in parts)
    return ".".join(text if len(text) <= _SHOWN else f"{text[:_SHOWN]}\u2026" for text in texts)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = _location(error["loc"]) or "event"
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems)
