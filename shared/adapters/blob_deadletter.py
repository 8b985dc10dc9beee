"""``BlobDeadLetterSink``: dead letters as JSON blobs in Azure Blob storage (Azurite locally).

Dead letters live in the Functions host's storage account, not in Cassandra, so
they do not share the event store's fate. One blob per rejected record, named
from where it came from, so writing the same record twice is one dead letter:

    rejected/<yyyy>/<mm>/<dd>/p<partition>/<sequence>-<hub tag>-body.json       (the whole body refused)
    rejected/<yyyy>/<mm>/<dd>/p<partition>/<sequence>-<hub tag>-elements.json   (bad elements of an array body)
    batches/<yyyy>/<mm>/<dd>/p<partition>/<first sequence>-<last sequence>-<hub tag>.json

Every hub numbers its records from 0, so the name holds the hub (:func:`hub_tag`): after ingest moves to another
hub, its letters never overwrite the old hub's of the same day, partition and sequence numbers. Letters written
before names held it (no ``-<hub tag>``, and those of a sink given no hub) are still read, replayed and audited;
a record replayed from a letter is lettered again under that letter's own name, tag or none, and with the hub that
letter names in its metadata (none if it names none, or names a hub its tag is not of), never the replaying one's.

An array body's letter holds the body once and names every bad element in
``elements``: one entry per distinct (problem, event id) with the elements' indexes
as ``[first, last]`` ranges, so a body of many elements that fail alike costs one
small letter. Past :data:`MAX_ELEMENT_GROUPS` entries the remaining indexes go to
``elements_more`` without their reasons, which bounds the letter whatever the body
holds. Letters written before that (``<sequence>-<index>.json``, one per bad element,
each with the whole body) are still read and replayed.

The valid elements of such a body were stored at ingest, so a letter is read back
with the elements it holds as not stored (``RawRecord.pending``): a replay runs only
those, and never writes an element stored long ago over a later correction of its id.

A dead letter that was replayed successfully (``python -m sluice deadletter
replay``) moves under ``replayed/`` with the same name, so it is kept but not
replayed twice. Two replays may run at once: a letter one of them moved is
skipped by the other (``TakenLetter``, or ``mark_replayed`` returning ``Move.GONE``).
The move is conditional on the version the replay read (its etag): a letter written
again under the same name meanwhile stays, to be replayed (``Move.KEPT``).

The date is the Event Hubs enqueued time (the time of writing if unknown; a record
replayed from a letter keeps that letter's date, so it is lettered again under the
same name, not once more per day it is replayed on). Each
blob holds the reason, the original bytes (base64, and as text when it is UTF-8),
the index of the (first) bad element inside an array body, and the Event Hubs metadata.
Writes are retried (tenacity, bounded); what still fails raises ``TransientError``
(``RejectedLettersFailed`` from ``put_rejected``, naming the letters written before it).
Each letter written names the hub its records came from in its blob metadata,
``eventhub=<namespace>/<hub>`` (kept when it moves under ``replayed/``): the audit of
a hub counts only its own batch letters and those that name no hub (written before
letters named it), never another hub's numbered alike (``BlobDeadLetteredBatches``).
The container is created by a worker's first letter; one deleted later (by hand,
or soft-deleted) is created again by the next write that finds it gone
(``ContainerNotFound``), with a WARNING naming it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings, StorageErrorCode
from tenacity import RetryCallState, retry, retry_if_exception_type, wait_exponential

from shared.adapters.blob_service import failure
from shared.domain.events import BadElement, EventMetadata, Pending, RawRecord, Rejected
from shared.domain.times import utc
from shared.exceptions import DependencyUnavailable, TransientError
from shared.ports.ingest import RejectedLettersFailed

logger = logging.getLogger(__name__)

_JSON = ContentSettings(content_type="application/json")


def _original(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"original_base64": base64.b64encode(data).decode("ascii"), "original_bytes": len(data)}
    with contextlib.suppress(UnicodeDecodeError):
        out["original_text"] = data.decode("utf-8")
    return out


def _day(metadata: EventMetadata, now: datetime) -> str:
    return utc(metadata.enqueued_time or now).strftime("%Y/%m/%d")  # a naive time is UTC, not local time


_NAME_DAY = re.compile(r"^(?:rejected|batches)/(\d{4}/\d{2}/\d{2})/")


def _lettered(name: str) -> datetime | None:
    """The day a letter's name carries (midnight UTC), ``None`` for a name without one (hand-made)."""
    match = _NAME_DAY.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match[1], "%Y/%m/%d").replace(tzinfo=UTC)
    except ValueError:  # 2024/13/45: no day
        return None


def hub_tag(hub: str) -> str:
    """The short, stable tag of a hub (``<namespace>/<hub>``) in its letters' names: the hub's name as a slug (for
    people) and 10 hex digits of the SHA-256 of the whole identity in lower case (two namespaces can each have a
    ``telemetry``), e.g. ``telemetry-v2.3f9a0c1b2d``."""
    identity = hub.lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", identity.rsplit("/", 1)[-1]).strip("-")[:40] or "hub"
    return f"{slug}.{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:10]}"


def _tagged(tag: str) -> str:
    return f"-{tag}" if tag else ""


# A letter's position (_position) and hub tag. A rejected letter names one position, a batch letter two, so each kind
# has its own pattern: a slug may start with digits (hub "2024-orders"), which one pattern with an optional second
# position would read as a position.
_POSITION_RE = r"(?:\d+|sha256-[0-9a-f]{32})"
_TAG_RE = r"(?P<tag>[a-z0-9-]*\.[0-9a-f]{10})"
_REJECTED_TAG = re.compile(rf"/p[^/]+/{_POSITION_RE}-{_TAG_RE}-(?:body|elements)\.json$")
_BATCH_TAG = re.compile(rf"/p[^/]+/{_POSITION_RE}-{_POSITION_RE}-{_TAG_RE}\.json$")


def _name_tag(name: str) -> str:
    """The hub tag a letter's name holds, ``""`` for a name without one (written before names held it)."""
    match = (_BATCH_TAG if name.removeprefix("replayed/").startswith("batches/") else _REJECTED_TAG).search(name)
    return match["tag"] if match else ""


def _position(metadata: EventMetadata, data: bytes) -> str:
    if metadata.sequence_number is not None:
        return str(metadata.sequence_number)
    return "sha256-" + hashlib.sha256(data).hexdigest()[:32]


def _ranges(indexes: Iterable[int]) -> list[list[int]]:
    """Sorted indexes as ``[first, last]`` runs of consecutive ones."""
    runs: list[list[int]] = []
    for index in sorted(indexes):
        if runs and runs[-1][1] == index - 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return runs


# An array body's letter lists its bad elements' reasons for this many distinct (problem, event id) pairs at most.
MAX_ELEMENT_GROUPS = 1000


def _elements(bad: Sequence[BadElement]) -> dict[str, Any]:
    """The bad elements of an array body, grouped by (problem, event id), with index ranges; bounded."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    more: list[int] = []
    for element in bad:
        key = (element.problem, element.event_id)
        if key in groups or len(groups) < MAX_ELEMENT_GROUPS:
            groups.setdefault(key, []).append(element.index)
        else:
            more.append(element.index)
    out: dict[str, Any] = {
        "elements_invalid": len(bad),
        "elements": [{"problem": problem, "event_id": event_id, "indexes": _ranges(indexes)}
                     for (problem, event_id), indexes in groups.items()],
    }
    if more:
        out["elements_more"] = {"count": len(more), "indexes": _ranges(more)}
    return out


KINDS = {"rejected": "rejected/", "batch": "batches/"}
REPLAYED = "replayed/"
HUB_METADATA = "eventhub"
"""The blob metadata naming the hub (``<namespace>/<hub>``) a letter's records came from; absent on older letters."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One stored dead letter, read back: its blob name, kind, reason and the records to replay."""

    name: str
    kind: str
    reason: str
    records: list[RawRecord]
    per_element: bool = False
    """A letter of the older shape: one bad element of an array body (``<sequence>-<index>.json``). Replayed, a body
    still invalid gets its one ``<sequence>-elements.json`` letter, which takes this one's place."""
    whole_body: bool = False
    """A body refused whole (``<sequence>-body.json``: too big, not JSON ...). Replayed after a fix, an array body
    of which only some elements are still invalid gets its ``<sequence>-elements.json`` letter, which takes this
    one's place: its valid elements were stored, and this letter would run them again on every replay."""
    etag: str = ""
    """The version of the blob that was read: ``mark_replayed`` moves that version only, never a newer letter
    written under the same name since."""


@dataclass(frozen=True, slots=True)
class UnreadableLetter:
    """A blob under a dead-letter prefix that is no dead letter this sink can read back (truncated, hand-made, of
    another layout): its name and what is wrong with it, so it is reported rather than replayed or skipped unsaid."""

    name: str
    problem: str


@dataclass(frozen=True, slots=True)
class TakenLetter:
    """A letter that was listed but was gone when it was read: another run (a second ``deadletter replay``, beside
    this one) moved it under ``replayed/`` meanwhile. Named so the run can count it and go on with the others."""

    name: str


def _metadata(stored: dict[str, Any]) -> EventMetadata:
    enqueued = stored.get("enqueued_time")
    return EventMetadata(
        partition_id=stored.get("partition_id"),
        offset=stored.get("offset"),
        sequence_number=stored.get("sequence_number"),
        enqueued_time=datetime.fromisoformat(enqueued) if enqueued else None,
        partition_key=stored.get("partition_key"),
    )


def _pending(document: dict[str, Any], body: bytes) -> Pending | None:
    """The elements of a rejected array body that its letter holds as not stored (``None``: the whole body).

    The valid elements of the body were stored at ingest; replaying them would put that old copy back over any later
    correction of their ids, on every replay run of a letter that stays invalid."""
    index = document.get("index")
    if document["kind"] != "rejected" or index is None:
        return None
    if "elements" not in document:  # the older per-element shape: one bad element; its body's others in their own
        return Pending(frozenset([int(index)]), others_if_invalid=True)
    runs = [run for group in document["elements"] for run in group["indexes"]]
    runs += document.get("elements_more", {}).get("indexes", [])
    if not runs or not all(0 <= int(first) <= int(last) < len(body) for first, last in runs):  # an element: 1 byte+
        raise ValueError(f"element indexes {runs} are no ranges inside the body")
    return Pending(frozenset(i for first, last in runs for i in range(int(first), int(last) + 1)))


class Move(Enum):
    """What ``mark_replayed`` did with a letter."""

    MOVED = "moved"
    """The version replayed is under ``replayed/`` now, and gone from its dead-letter prefix."""
    GONE = "gone"
    """Nothing to move: another run replayed it too and moved it first."""
    KEPT = "kept"
    """Written again under the same name since it was read (its record dead-lettered again): a newer letter, left
    where it is to be replayed; not replayed by this run."""


def _letter(name: str, data: bytes, etag: str, metadata: dict[str, str] | None = None) -> DeadLetter:
    """The letter ``name`` holding ``data``; ``metadata``: its blob metadata, for the hub it names."""
    document = json.loads(data)
    if document["kind"] not in ("batch", "rejected"):
        raise ValueError(f"unknown kind {document['kind']!r}")
    items = document["events"] if document["kind"] == "batch" else [document]
    records = []
    day, tag = _lettered(name), _name_tag(name)
    hub = (metadata or {}).get(HUB_METADATA) or None
    if hub is not None and tag and hub_tag(hub) != tag:  # names a hub its name is not of: claim none
        hub = None
    for item in items:
        body = base64.b64decode(item["original_base64"], validate=True)
        records.append(RawRecord(body, _metadata(item["eventhub"]), _pending(document, body), day, tag, hub))
    per_element = document["kind"] == "rejected" and document.get("index") is not None and "elements" not in document
    whole_body = document["kind"] == "rejected" and document.get("index") is None
    return DeadLetter(name, document["kind"], str(document["reason"]), records, per_element, whole_body, etag)


_LETTER_NAME = re.compile(r"/p(?P<partition>[^/]+)/(?P<sequence>\d+)(?:-[^/]*)?\.json$")


def _replay_order(name: str) -> tuple[Any, ...]:
    """A letter's place in a replay: by partition, then by (first) sequence number, the order Event Hubs took its
    records in, so of two letters holding copies of one event id the later copy is replayed last (blob names sort
    ``10-body.json`` before ``2-body.json``). A name without them (``sha256-...``, hand-made) comes after all
    the others, by name."""
    match = _LETTER_NAME.search(name)
    if match is None:
        return (1, "", 0, 0, name)
    partition = match["partition"]
    by_partition = (0, "", int(partition)) if partition.isdigit() else (0, partition, 0)
    return (*by_partition, int(match["sequence"]), name)


class BlobDeadLetterSink:
    """Implements ``shared.ports.ingest.DeadLetterSink`` on Blob storage."""

    def __init__(
        self, service: BlobServiceClient, container: str, *, attempts: int = 5, max_wait: float = 10.0,
        hub: str | None = None, deadline: float | None = None, longest_request: float = 0.0,
    ) -> None:
        """``hub``: the identity of the hub ingest reads (``<namespace>/<hub>``), written in each letter's metadata
        and (as :func:`hub_tag`) in its name.

        ``deadline``: the longest one call of :meth:`put_rejected` or :meth:`put_batch` may take, every letter and
        retry included; no letter and no attempt starts that could end past it, given ``longest_request`` (the
        longest one request of ``service`` can take, its own retries included; an attempt makes one request that
        fails). The retries around a client that times out, or many letters to a storage account that answers
        slowly, would otherwise add up past the host's functionTimeout, which ends the invocation with no clear
        error."""
        self._container = service.get_container_client(container)
        self._metadata = {HUB_METADATA: hub.lower()} if hub else None
        self._tag = hub_tag(hub) if hub else ""
        self._ready = False
        self._lock = threading.Lock()
        self._deadline = deadline
        self._longest_request = longest_request
        self._max_wait = max_wait
        self._upload = retry(
            retry=retry_if_exception_type(AzureError),
            stop=lambda state: state.attempt_number >= attempts or self._no_time_for_another(state),
            wait=wait_exponential(multiplier=0.2, max=max_wait),
            reraise=True,
        )(self._upload_once)

    def _until(self) -> float | None:
        """When a call's letters must be written by (``time.monotonic()``), or None without a deadline."""
        return None if self._deadline is None else time.monotonic() + self._deadline

    def _no_time_for_another(self, state: RetryCallState) -> bool:
        until = state.kwargs.get("until")
        return until is not None and time.monotonic() + self._max_wait + self._longest_request > until

    def _setup(self) -> None:
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                self._create()
                self._ready = True

    def _create(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    def _write(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Upload one blob, creating the container again if it is gone (deleted since this worker created it).

        Once: a second ContainerNotFound (a container still being deleted) propagates to the caller's retries."""
        try:
            self._container.upload_blob(name, data, overwrite=True, content_settings=_JSON, metadata=metadata)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) != StorageErrorCode.CONTAINER_NOT_FOUND:
                raise
            logger.warning("dead-letter container %s is gone: creating it again to write %s",
                           self._container.container_name, name)
            self._create()
            self._container.upload_blob(name, data, overwrite=True, content_settings=_JSON, metadata=metadata)

    def _upload_once(self, name: str, document: dict[str, Any], metadata: dict[str, str] | None,
                     until: float | None = None) -> None:
        """Write a letter whatever text it holds. UTF-8 cannot encode a lone surrogate, so one in a reason, an id or
        the metadata (the parser refuses them in bodies; a letter must not rely on that) is written as its JSON
        escape, ``\\ud800``, which reads back the same; the original bytes are in ``original_base64`` either way.
        An encoding error would escape the retries and lose this letter and every later one of the batch.

        ``metadata``: the blob's (the hub it names). ``until`` is not used here: the retry's stop
        (:meth:`_no_time_for_another`) reads it from the call."""
        self._setup()
        self._write(name, json.dumps(document, ensure_ascii=False).encode("utf-8", "backslashreplace"), metadata)

    def _put(self, name: str, document: dict[str, Any], until: float | None,
             metadata: dict[str, str] | None) -> None:
        if until is not None and time.monotonic() + self._longest_request > until:
            raise TransientError(f"could not write dead letter {name}: the call's deadline of {self._deadline:.0f} s "
                                 "(SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS) would pass before it is written")
        try:
            self._upload(name, document, metadata, until=until)
        except AzureError as exc:
            raise TransientError(f"could not write dead letter {name}: {exc}") from exc

    def put_rejected(self, rejected: Sequence[Rejected]) -> None:
        """One letter per item, in order; a failure raises :class:`RejectedLettersFailed` with the ones written."""
        now, until = datetime.now(UTC), self._until()
        for written, item in enumerate(rejected):
            try:
                self._put_rejected(item, now, until)
            except TransientError as exc:
                raise RejectedLettersFailed(str(exc), rejected[:written]) from exc
        if rejected:
            logger.warning("dead-lettered %d rejected items: %s", len(rejected), _loggable(rejected[0].reason))

    def _put_rejected(self, item: Rejected, now: datetime, until: float | None) -> None:
        meta = item.metadata
        # Without an enqueued time, the day of the letter replayed (if it is one), not today: the same name again.
        where = f"{_day(meta, item.lettered or now)}/p{meta.partition_id or 'unknown'}"
        # Replayed from a letter: that letter's own hub tag (none for one written before names held it), so the
        # letter still invalid is rewritten in place, not doubled, whichever hub this replay runs for.
        tag = _tagged(self._tag if item.lettered_hub is None else item.lettered_hub)
        name = (f"rejected/{where}/{_position(meta, item.original)}{tag}-"
                f"{'elements' if item.elements else 'body'}.json")
        # And the hub that letter names, not this replay's: its name and its metadata name one hub.
        hub = self._metadata if item.lettered_hub is None else (
            {HUB_METADATA: item.lettered_from} if item.lettered_from else None)
        self._put(
            name,
            {
                "kind": "rejected",
                "reason": item.reason,
                "event_id": item.event_id,
                "index": item.index,
                **(_elements(item.elements) if item.elements else {}),
                "eventhub": meta.as_dict(),
                "dead_lettered_at": now.isoformat(),
                **_original(item.original),
            },
            until,
            hub,
        )

    def put_batch(self, bodies: Sequence[tuple[bytes, EventMetadata]], reason: str, *,
                  lettered: Collection[int] = ()) -> None:
        # Written even when every record is in ``lettered`` (``events`` empty): the name spanning the whole batch is
        # what the audit reads (names only, ``BlobDeadLetteredBatches``), so without it the range would show as lost.
        kept = [item for position, item in enumerate(bodies) if position not in lettered]
        if not bodies:
            return
        now = datetime.now(UTC)
        first, last = bodies[0][1], bodies[-1][1]
        name = (
            f"batches/{_day(first, now)}/p{first.partition_id or 'unknown'}/"
            f"{_position(first, bodies[0][0])}-{_position(last, bodies[-1][0])}{_tagged(self._tag)}.json"
        )
        self._put(
            name,
            {
                "kind": "batch",
                "reason": reason,
                "count": len(kept),
                "dead_lettered_at": now.isoformat(),
                "events": [{"eventhub": meta.as_dict(), **_original(body)} for body, meta in kept],
                # Records of the batch whose every item has its own rejected letter: not repeated here.
                "rejected_separately": [bodies[position][1].as_dict() for position in sorted(lettered)],
            },
            self._until(),
            self._metadata,
        )
        logger.error("dead-lettered a whole batch of %d events as %s (%d more in their rejected letters): %s",
                     len(kept), name, len(bodies) - len(kept), _loggable(reason))

    def read(self, kind: str = "all") -> Iterator[DeadLetter | UnreadableLetter | TakenLetter]:
        """Every dead letter not yet replayed, in (partition, sequence number) order (``kind``: rejected, batch or
        all; with all, both kinds interleaved), the names listed first.

        A blob that cannot be read back as a dead letter comes as an :class:`UnreadableLetter` in its place, so one
        bad blob neither stops the others nor goes unreported; one listed but gone by the time it is read (nothing
        stops two replays at once) as a :class:`TakenLetter`."""
        try:
            yield from self._read(kind)
        except AzureError as exc:  # down, or refusing this client (a rotated key): say which, no SDK traceback
            raise DependencyUnavailable(
                "Blob storage", f"reading the dead letters in {self._container.container_name}: {failure(exc)}"
            ) from exc

    def _read(self, kind: str) -> Iterator[DeadLetter | UnreadableLetter | TakenLetter]:
        prefixes = list(KINDS.values()) if kind == "all" else [KINDS[kind]]
        if not self._container.exists():
            return
        names = [blob.name for prefix in prefixes for blob in self._container.list_blobs(name_starts_with=prefix)]
        for name in sorted(names, key=_replay_order):
            try:
                download = self._container.download_blob(name)
                data = download.readall()
            except ResourceNotFoundError:
                logger.info("%s: gone since it was listed, taken by another run", name)
                yield TakenLetter(name)
                continue
            try:
                yield _letter(name, data, download.properties.etag, download.properties.metadata)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError, bad base64 too
                problem = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: not a readable dead letter: %s", name, problem)
                yield UnreadableLetter(name, problem)

    def mark_replayed(self, name: str, etag: str) -> Move:
        """Move the version ``etag`` of a dead letter (the one :meth:`read` returned and the caller replayed) under
        ``replayed/``: copy first, then delete; a crash in between leaves both.

        ``Move.GONE`` when it is gone already: another run replayed it too and moved it (the store took its records
        from both, idempotently). ``Move.KEPT`` when the blob is another version now, before the copy or before
        the delete (only version ``etag`` is copied, and the delete is conditional on it): a letter rewritten under
        the same name since it was read (its record dead-lettered again) is a newer letter, not replayed yet, and
        stays to be replayed. Raises ``DependencyUnavailable`` when storage fails."""
        try:
            return self._move(name, etag)
        except AzureError as exc:
            raise DependencyUnavailable("Blob storage", f"moving {name} under {REPLAYED}: {failure(exc)}") from exc

    def _move(self, name: str, etag: str) -> Move:
        source = self._container.get_blob_client(name)
        try:  # unconditional, then compared: a blob gone is a 404 here, not a failed condition (Azurite: 412)
            download = source.download_blob()
            data = download.readall()
        except ResourceNotFoundError:
            logger.info("%s: already moved under %s by another run", name, REPLAYED)
            return Move.GONE
        if download.properties.etag != etag:
            logger.warning("%s: rewritten since the replay read it (its record dead-lettered again): kept, to be "
                           "replayed", name)
            return Move.KEPT
        self._write(REPLAYED + name, data, download.properties.metadata or None)  # its hub with it
        try:
            source.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError) as exc:
            if isinstance(exc, ResourceNotFoundError) or not source.exists():
                logger.info("%s: moved by another run at the same time", name)  # its copy is the same letter
                return Move.MOVED
            logger.warning("%s: rewritten while it was moved (its record dead-lettered again): kept, to be replayed",
                           name)
            return Move.KEPT
        return Move.MOVED


class BlobDeadLetterCounter:
    """Implements ``shared.ports.dashboard.DeadLetterCounter``: dead letters written since a time, by day prefix.

    Blob names start with the Event Hubs *enqueued* day, and each blob's ``last_modified``
    (when it was dead-lettered) decides. The day prefixes of the period itself (at most two
    for the last hour) are listed on every call. A backlog read after an outage letters
    events enqueued days earlier, so the earlier days of the hub's retention
    (``lookback_days``) are listed too, newest first, at most once per ``older_every``
    seconds: such letters are counted up to that much late. Each listing stops at ``cap``
    blobs.
    """

    def __init__(self, service: BlobServiceClient, container: str, *, lookback_days: int = 7,
                 older_every: float = 60.0, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._container = service.get_container_client(container)
        self._lookback = lookback_days
        self._older_every = older_every
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._older: tuple[float, list[datetime], bool] | None = None  # listed at, times since then, capped

    def count_since(self, since: datetime, *, cap: int) -> tuple[int, bool]:
        now = self._clock()
        recent = sorted({since.astimezone(UTC).strftime("%Y/%m/%d"), now.strftime("%Y/%m/%d")}, reverse=True)
        older = [day for day in ((now - timedelta(days=back)).strftime("%Y/%m/%d")
                                 for back in range(1, self._lookback + 1)) if day not in recent]
        try:
            with self._lock:
                times, capped = self._list(recent, since, cap)
                if older and (self._older is None or self._monotonic() - self._older[0] >= self._older_every):
                    self._older = (self._monotonic(), *self._list(older, since, cap))
                if self._older is not None:
                    times += [t for t in self._older[1] if t >= since]
                    capped = capped or self._older[2]
        except ResourceNotFoundError:
            return 0, False  # no dead letter was ever written
        except AzureError as exc:
            raise DependencyUnavailable("storage", f"listing dead letters failed: {type(exc).__name__}") from exc
        return len(times), capped

    def _list(self, days: Sequence[str], since: datetime, cap: int) -> tuple[list[datetime], bool]:
        """The modification times at or after ``since`` of the letters under ``days``; capped at ``cap`` listed."""
        times: list[datetime] = []
        listed = 0
        for day in days:
            for prefix in KINDS.values():
                for blob in self._container.list_blobs(name_starts_with=f"{prefix}{day}/"):
                    listed += 1
                    if blob.last_modified is not None and blob.last_modified >= since:
                        times.append(blob.last_modified)
                    if listed >= cap:
                        return times, True
        return times, False


_BATCH_NAME = re.compile(
    r"^(?:replayed/)?batches/\d{4}/\d{2}/\d{2}/p(?P<partition>[^/]+)/(?P<first>\d+)-(?P<last>\d+)"
    r"(?:-(?P<tag>[a-z0-9-]*\.[0-9a-f]{10}))?\.json$"
)


class BlobDeadLetteredBatches:
    """Implements ``shared.ports.audit.DeadLetteredBatches``: whole-batch letters, from their blob names.

    Lists ``batches/`` and ``replayed/batches/`` (names and metadata, no download):
    whole batches are dead-lettered only when the store stayed down for every retry,
    so there are few of them. With ``hub``, a letter whose name or metadata names another
    hub is left out (its sequence numbers are that hub's); one that names none (written
    before letters named their hub) is counted.
    """

    def __init__(self, service: BlobServiceClient, container: str, *, hub: str | None = None) -> None:
        self._container = service.get_container_client(container)
        self._hub = hub.lower() if hub else None
        self._tag = hub_tag(hub) if hub else None

    def batches(self, partition: str) -> list[tuple[int, int, str]]:
        out = []
        try:
            for prefix in (KINDS["batch"], REPLAYED + KINDS["batch"]):
                for blob in self._container.list_blobs(name_starts_with=prefix, include=["metadata"]):
                    match = _BATCH_NAME.match(blob.name)
                    if match and match["partition"] == partition and self._ours(match["tag"], blob.metadata):
                        out.append((int(match["first"]), int(match["last"]), blob.name))
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise DependencyUnavailable("Blob storage", f"cannot list the batch dead letters: {exc}") from exc
        return out

    def _ours(self, tag: str | None, metadata: dict[str, str] | None) -> bool:
        """A letter of this hub's, or one that names no hub, in its name (``tag``) or its metadata (keys compare
        ignoring case)."""
        if self._hub is None or (tag is not None and tag != self._tag):
            return self._hub is None
        hub = next((value for key, value in (metadata or {}).items() if key.lower() == HUB_METADATA), None)
        return not hub or hub.lower() == self._hub


def _loggable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (a lone surrogate) escaped, as in the letter itself: a log handler
    that encodes UTF-8 (a stream, the Functions worker's gRPC channel) would drop the whole record."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
