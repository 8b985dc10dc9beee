"""``RedisChangeSink``: the change feed's writes into the Redis layout (``docs/redis-layout.md``).

A page goes out as one pipeline of ``EVALSHA`` calls (a cluster sends one
sub-pipeline per node), each touching one slot:

* per device, its newest event of the page: ``latest`` on ``d:{<device>}:latest``, only
  where the key exists (a missing key, expired or evicted, is reported: the event may
  be older than the device's newest, which the caller reads from the store and puts
  with :meth:`RedisChangeSink.put_latest`). Only the live generation's misses are
  reported: while a rebuild runs, the generation it builds lacks every device it has
  not reached yet, and its ``latest`` is sent without ``present`` (a missing key is
  created): a device the rebuild read before this event and writes after it keeps
  the event, since the rebuild's older state replaces only a smaller sort key;
* per critical event: ``critical`` on the device's set (``{<device>}``), ``stream``
  on the device's stream shard (``{<shard>}``), ``fill_event`` on ``e:<event id>``;
* per other event: ``fill_event`` in its ``stale`` mode on ``e:<event id>``, with the
  event's enqueued time only: a copy a lookup cached (for up to an hour) that was
  enqueued before this one, a re-send with corrected content, is dropped, so the next
  lookup reads the stored copy instead of serving the superseded one.

Where ``fill_event`` drops or replaces a critical copy that now leaves its device's set
(a correction made the event not critical, or moved it to another device id), it
answers that device (the feed wrote the copy with the set's member, so it is there as
long as the member is, unless evicted), and a second pipeline sends ``uncritical`` on
that device's set with the new copy's enqueued time, which leaves that time in the
member key for a short while (``#gone:``) so that a lookup's critical fill in flight
does not put the old copy back. ``e:<event id>`` keeps the answer
(fields ``u``, ``v``), so a page written again after a failure, also as a later copy,
gets it again. A critical copy ``fill_event`` refuses (a later copy superseded it: a
replay, or a retry after a long outage, of a corrected event once ``#gone:`` expired,
which ``critical`` has just put back in its set) answers the later copy's enqueued time,
and the second pipeline takes it out of its device's set the same way, and drops it by id
(``fill_event`` in its ``stale`` mode with that time, no device). Both go to every
generation written, whichever generation's reply asked: while a rebuild runs, the building
generation's ``e:<id>`` may lack the note that made the live one refuse the copy, and then
it stored the copy and its set took it.

Where a copy comes under another device than the newest one the feed applied before
(``fill_event`` keeps "<enqueued time> <device>" in field ``o``), ``fill_event``
answers the device whose latest state may still name the event as a superseded copy
(the old device at a correction; the copy's own when the original is read again), and
the second pipeline sends ``unlatest`` there, in every generation written (one
generation's answer is enough: the other's ``e:<id>`` may lack the note): the store
has no latest state for it, nor writes a rebuild one (which leaves the note with each
latest state it writes, ``RedisCacheBuilder._write``). That device is not reported as
missing, so ``put_latest`` does not write the superseded copy back (unless this copy is
under it again, enqueued at or after the move: :func:`superseded_here`).
``e:<event id>`` keeps each move (field ``m``), so a page written again after the second
pipeline failed, also as a later copy, gets it again, although ``o`` names the new copy
by then. An event that never was corrected costs no command more (``o`` goes in the
``HSET`` each mode makes anyway).

Each script is atomic and idempotent on its own, so the order in which a
cluster's nodes run them does not matter, and a page that failed half-way
(a node down, a failover) is simply applied again: the latest state is replaced
only by a larger sort key, the set keeps one member per event, and the stream
marker (``SET NX``) adds an event to its shard once. The change feed saves its
position only after :meth:`apply` returned.

:meth:`apply` returns once the masters acknowledged the page; Redis replicates
asynchronously, so a master failover can still lose it. With ``wait_replicas``
(``SLUICE_REDIS_WAIT_REPLICAS``, off by default) each master's share of the page
ends with ``WAIT``, and a page its replicas did not acknowledge in time raises
``DependencyUnavailable``: the position is not saved and the next run writes the
page again (docs/redis-layout.md, "Failover").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.adapters.redis.base import Command, ScriptedRedis
from shared.adapters.redis.client import Client, RedisConnection, as_text
from shared.adapters.redis.keys import Keys, sort_key
from shared.domain.stored import StoredEvent

logger = logging.getLogger(__name__)


class RedisChangeSink(ScriptedRedis):
    """Implements ``ChangeSink`` (``shared.ports.cache``)."""

    def __init__(self, connection: RedisConnection | Client, *, key_prefix: str = "sluice:",
                 ttl_seconds: int = 7 * 24 * 3600, critical_per_device_max: int = 100,
                 critical_stream_max: int = 10_000, stream_shards: int = 8,
                 generation_cache_seconds: float = 1.0, wait_replicas: int = 0, wait_timeout_ms: int = 1000,
                 stale_marker_seconds: int = 30) -> None:
        super().__init__(connection, key_prefix, stream_shards, generation_cache_seconds=generation_cache_seconds)
        self._ttl = ttl_seconds
        self.stale_marker_seconds = stale_marker_seconds  # how long fill_event's note n and #gone: live at least
        self._wait = {"replicas": wait_replicas, "wait_ms": wait_timeout_ms}
        self._stream_max = critical_stream_max
        self.critical_cap = critical_per_device_max
        self._shard_max = -(-critical_stream_max // stream_shards)

    def commands(self, events: Sequence[StoredEvent], generations: Sequence[Keys] | None = None
                 ) -> tuple[list[Command], list[str], list[tuple[int, StoredEvent, Keys]]]:
        """The ``EVALSHA`` argument tuples that apply ``events`` (the newest event per device sets its latest,
        in the live generation where its key exists), the ``latest`` ones last, the live generation's at the very
        end; the device of each of those live ones, in their order; and the place of each ``fill_event`` command
        with its event and generation.

        Every write goes to each of ``generations`` (default :meth:`write_keys`: two while a rebuild runs).
        """
        newest: dict[str, StoredEvent] = {}
        documents: dict[int, str] = {}  # by id(event): encoded once, for its critical commands and its latest
        by_id: list[tuple[int, StoredEvent, Keys]] = []
        commands: list[Command] = []
        generations = self.write_keys() if generations is None else list(generations)
        ttl, cap, marker_ttl = self._ttl, self.critical_cap, self.stale_marker_seconds
        sha = self.sha
        latest_sha, critical_sha, stream_sha, event_sha = (
            sha["latest"],
            sha["critical"],
            sha["stream"],
            sha["fill_event"],
        )
        for event in events:
            device, event_id = event.device_id, event.event_id
            current = newest.get(device)
            if current is None or event.supersedes(current):
                newest[device] = event
            if event.critical:
                documents[id(event)] = document = event.to_json()
                for keys in generations:
                    commands.append((critical_sha, 2, keys.member(device, event_id), keys.critical(device),
                                     document, event.event_time_ms, ttl, cap))
                    commands.append((stream_sha, 2, keys.stream(device), keys.seen(device, event_id),
                                     ttl, self._shard_max, str(event_id), device, document))
                    by_id.append((len(commands), event, keys))
                    commands.append((event_sha, 1, keys.event(event_id), document, ttl, "feed", device,
                                     event.enqueued_text()))
            else:  # a lookup's cached copy of an older send of this id is dropped (no document: cheap per event)
                enqueued = event.enqueued_text()
                for keys in generations:
                    by_id.append((len(commands), event, keys))
                    commands.append((event_sha, 1, keys.event(event_id), enqueued, "", "stale", marker_ttl, device))
        # The live generation's latest commands come last, one per device, with "present": only its misses are
        # reported. The building one's go without it: it lacks every device the rebuild has not reached yet, and
        # a device the rebuild read before this event but writes after it would otherwise lose the event (the
        # rebuild's older state replaces only a smaller sort key, so a key created here keeps the newer one).
        devices = list(newest)
        for keys in reversed(generations):
            present = ("present",) if keys is generations[0] else ()
            for device, event in newest.items():
                document = documents.get(id(event)) or event.to_json()
                commands.append((latest_sha, 1, keys.latest(device), sort_key(event), document, ttl, *present))
        return commands, devices, by_id

    def apply(self, events: Sequence[StoredEvent]) -> list[str]:
        if not events:
            return []
        generations = self.write_keys()
        commands, devices, by_id = self.commands(events, generations)
        replies = self.pipeline(commands, f"writing {len(events)} changed events", **self._wait)
        leaving: dict[str, tuple[str, str]] = {}  # member key -> its set's key, the newest copy's enqueued time
        moved: dict[tuple[str, str], str] = {}  # (latest key, event id) -> the moved copy's enqueued time
        moved_from: set[str] = set()  # the devices of those latest keys whose copy in this page is superseded
        refused: dict[str, str] = {}  # e:<id> key -> the enqueued time of the copy that superseded a feed copy
        for at, event, _ in by_id:
            away, reply = moves(replies[at])
            for device, enqueued in away:
                # to every generation written: one whose e:<id> lacks the note (o expired there, or the rebuild
                # wrote it before this release) would keep a state the store no longer has
                for written in generations:
                    target = (written.latest(device), str(event.event_id))
                    if target not in moved or moved[target] < enqueued:
                        moved[target] = enqueued
                if superseded_here(device, enqueued, event):
                    moved_from.add(device)
            # to every generation written, as unlatest: the building generation's e:<id> may lack the note that made
            # the live one refuse this copy, and then critical.lua has put it in the set there
            for device, enqueued in _leaving(reply, event):
                for written in generations:
                    member = written.member(device, event.event_id)
                    if member not in leaving or leaving[member][1] < enqueued:
                        leaving[member] = (written.critical(device), enqueued)
            if isinstance(reply, bytes | str):  # this copy refused: a copy enqueued at that time superseded it
                later = as_text(reply)
                for written in generations:  # a generation that accepted it keeps it as `d` no longer
                    copy = written.event(event.event_id)
                    if copy not in refused or refused[copy] < later:
                        refused[copy] = later
        if leaving or moved or refused:
            self._superseded(leaving, moved, refused)
        # the latest commands come last: a reply of 0 is a key that was missing, left for put_latest; not for a
        # device an event moved away from, whose copy in this page put_latest would write back
        return sorted({device for device, reply in zip(devices, replies[len(replies) - len(devices):], strict=True)
                       if reply == 0 and device not in moved_from})

    def _superseded(self, leaving: dict[str, tuple[str, str]], moved: dict[tuple[str, str], str],
                    refused: dict[str, str] | None = None) -> None:
        """Take superseded copies out of the devices' keys, in one pipeline.

        Critical sets (``uncritical.lua``): events a correction made not critical or moved to another device id.
        ``leaving``: member key -> (set key, the enqueued time of the copy that superseded them). Each member key
        keeps that time as a marker for ``stale_marker_seconds``, so a lookup's fill that read the store before
        the correction leaves the old copy out (``fill_critical.lua``).

        Latest states (``unlatest.lua``): a device's state naming an event a correction moved to another device
        id, as a copy enqueued before the moved one, is dropped. ``moved``: (latest key, event id) -> that
        enqueued time.

        Copies by id (``fill_event`` in its ``stale`` mode, without a device: ``o`` stays): a feed copy one
        generation refused as superseded, which another (a building one whose ``e:<id>`` lacks the note) may have
        stored as ``d``, is dropped there. ``refused``: ``e:<id>`` key -> the later copy's enqueued time."""
        uncritical, unlatest, marker_ttl = self.sha["uncritical"], self.sha["unlatest"], self.stale_marker_seconds
        commands: list[Command] = [(uncritical, 2, member, zkey, enqueued, marker_ttl)
                                   for member, (zkey, enqueued) in leaving.items()]
        commands += [(unlatest, 1, key, event_id, enqueued) for (key, event_id), enqueued in moved.items()]
        commands += [(self.sha["fill_event"], 1, key, later, "", "stale", marker_ttl)
                     for key, later in (refused or {}).items()]
        self.pipeline(commands, f"taking {len(commands)} superseded copies out of their devices' critical sets, "
                      "latest states and events by id", **self._wait)

    def put_latest(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        generations, ttl, sha = self.write_keys(), self._ttl, self.sha["latest"]
        self.pipeline([(sha, 1, keys.latest(e.device_id), sort_key(e), e.to_json(), ttl)
                       for e in events for keys in generations], f"putting {len(events)} latest states",
                      **self._wait)


def moves(reply: object) -> tuple[list[tuple[str, str]], object]:
    """A ``fill_event`` reply split into the devices to drop a superseded latest state from, each with the enqueued
    time of the copy that superseded it (``unlatest``), and the rest of the reply: ``{{device, time, ...}, reply}``
    where a copy moved (``o``, or a move ``m`` keeps for a page written again), else the reply alone."""
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], list):
        pairs = [as_text(part) for part in reply[0]]
        return list(zip(pairs[::2], pairs[1::2], strict=True)), reply[1]
    return [], reply


def superseded_here(device: str, enqueued: str, event: StoredEvent) -> bool:
    """Whether ``device``, answered by ``event``'s ``fill_event`` with ``enqueued`` (:func:`moves`), has a superseded
    copy of the event in the page, which ``put_latest`` must not write back: not where the answer is a move ``m``
    keeps from that device and ``event`` is a copy under it again, enqueued at or after that move (the correction
    back, the device's current copy)."""
    return device != event.device_id or enqueued > event.enqueued_text()


def _leaving(reply: object, event: StoredEvent) -> list[tuple[str, str]]:
    """The devices whose critical sets are to lose a superseded copy of ``event``, each with the enqueued time of
    the copy that superseded it, from its ``fill_event`` reply: a list of them, or 2 (``u`` without ``v``, written
    by the release before this one: the event's own device), superseded by ``event``; or a time (a string): this
    critical copy was refused, a copy enqueued at that time superseded it, and it leaves its own device's set."""
    if isinstance(reply, list):
        return [(as_text(device), event.enqueued_text()) for device in reply]
    if isinstance(reply, bytes | str):
        return [(event.device_id, as_text(reply))]
    return [(event.device_id, event.enqueued_text())] if reply == 2 else []
