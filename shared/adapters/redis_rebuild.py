"""``RedisCacheBuilder``: the Redis side of ``sluice rebuild redis`` (``shared.ports.rebuild.CacheBuilder``).

Writes go to a pinned generation through the layout's own idempotent scripts
(``shared.adapters.redis``: ``latest`` for the latest state, ``fill_critical``
for a device's complete critical list with its ``#since`` bound, ``fill_event``
for each event by id, ``stream`` for the sharded critical stream), two pipelines
per page (the events by id first, then the sets with the events ``fill_event`` did
not refuse: ``RedisCacheBuilder._write`` says why); each command touches one slot,
so it runs on a Redis Cluster too. Every key gets what the change feed would have
left of its TTL (from its event's enqueued time), and one with nothing left is not
written.
Each shard of the fleet-wide stream holds its own newest critical events, so
while devices are scanned their critical events are offered to the capped sorted
set of candidates of their shard in the building generation
(``rebuild:stream:{<shard>}``, score = event time, the newest ``ceil(MAX /
shards)``), the latest enqueued time offered to each shard is kept
(``rebuild:renewed``), and each event gets its stream marker (``critical:seen``)
as the change feed would have left it; all of it is part of the page's first
pipeline, so it survives a kill with the position. At the end each stream shard
is rewritten by one script (``stream_rebuild``): the candidates the feed's shard
would still hold (:meth:`RedisCacheBuilder._unexpired`) and the entries the change
feed added during the build, one per event, oldest first by event time, with
entry ids from the event time, living what the feed would have left of the
shard's TTL (none left: nothing written); then the pointer switches. The switch
records the replaced generation for deletion in the pointer (``drop:<n>``);
:meth:`RedisCacheBuilder.cleanup` deletes every recorded generation and is run at
the start of each rebuild too, so one a crash left is deleted by the next.

Each build has an owner: the builder that claimed or resumed it holds a lease on
it in the pointer (``shared.adapters.redis.generations``), renewed every third of
the lease by a heartbeat thread while the build runs (however long one page takes:
``--max-rps`` waits, a slow read) and with each saved position, and only a build
whose lease has lapsed (its process killed) is taken over: a second rebuild started
while one runs is refused (``ConfigurationError``), with or without ``--restart``,
rather than reading the rest of the log again into the same generation. A renewal
that finds the build another owner's makes the next step fail (``write``,
``save_position``, ``finish``). A rebuild that fails gives its lease up
(:meth:`RedisCacheBuilder.release`, the position kept), so running it again resumes
at once; a killed one cannot, and is resumed once its lease lapses.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import cast

from redis.exceptions import NoScriptError

from shared.adapters.redis import RedisChangeSink, sort_key
from shared.adapters.redis.base import Command
from shared.adapters.redis.change_sink import moves
from shared.adapters.redis.client import calling
from shared.adapters.redis.generations import Lease, lost
from shared.adapters.redis.keys import Keys
from shared.domain.stored import StoredEvent
from shared.domain.times import from_ms, to_ms
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.ports.rebuild import Build

logger = logging.getLogger(__name__)

# Key patterns of one generation (under its prefix), for deleting a replaced one.
GENERATION_PATTERNS = ["d:*", "e:*", "critical:*", "rebuild:*"]
_CHUNK = 500
# How long a build stays its builder's without a renewal. A running build renews it every third of that (a heartbeat,
# whatever a page takes), with every page, and while it deletes an old generation; a killed one can be resumed, or
# restarted, this long after it died.
LEASE_SECONDS = 120.0


def _enqueued_ms(event: StoredEvent) -> int:
    """When the change feed applied the event, as near as the log tells: enqueued, else its event time."""
    return to_ms(event.enqueued_time) if event.enqueued_time else event.event_time_ms


def _event_id(member: bytes) -> str | None:
    """The top-level ``event_id`` of a critical set's member, decoded: an attribute of that name sorts before it.

    A member a buggy release wrote may be no event document at all (``None``): it only goes with the set.
    """
    try:
        document = json.loads(member)
    except ValueError:
        return None
    event_id = document.get("event_id") if isinstance(document, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def _refused(lease: Lease, restart: bool) -> ConfigurationError:
    """Why a rebuild may not take over a build whose lease another process holds, and what the operator can do."""
    until = from_ms(lease.until_ms).isoformat(timespec="seconds")
    doing = "discard" if restart else "resume"
    return ConfigurationError(
        f"another rebuild is building generation {lease.generation} (its lease, renewed while it runs, expires at "
        f"{until}); two rebuilds at once are refused, so this one does not {doing} it: wait for that one to finish, "
        f"or stop its process and run again after {until} (it resumes the build; --restart starts over)")


class RedisCacheBuilder:
    def __init__(self, sink: RedisChangeSink, *, settle_seconds: float | None = None,
                 clock: Callable[[], float] = time.time, lease_seconds: float = LEASE_SECONDS) -> None:
        self._sink = sink
        self._token = secrets.token_hex(16)  # this builder's claim on the build it begins (the pointer's owner)
        self._lease_ms = int(lease_seconds * 1000)
        self._owned: int | None = None  # the generation this builder holds the lease of
        self._heartbeat: tuple[threading.Thread, threading.Event] | None = None  # renews the lease while it runs
        self._lost: int | None = None  # the generation a renewal found another rebuild's
        self._clock = clock  # the wall clock a key's TTL is left from (:meth:`_left`); injectable for tests
        self._generations = sink.generations
        self._settle = 2 * self._generations.cache_seconds if settle_seconds is None else settle_seconds

    @staticmethod
    def _candidates_key(keys: Keys, shard: int) -> str:
        """The stream candidates of one shard, in the shard's slot."""
        return f"{keys.prefix}rebuild:stream:{{{shard}}}"

    @staticmethod
    def _renewed_key(keys: Keys) -> str:
        """Per shard (member), the latest enqueued time (score, ms) of the critical events offered to it."""
        return f"{keys.prefix}rebuild:renewed"

    def _run(self, commands: list[Command], what: str) -> list[object]:
        """One pipeline of single-slot commands (a cluster sends one per node); replayed after ``NOSCRIPT``.
        Returns the replies, in order."""
        sink = self._sink

        def execute() -> list[object]:
            pipe = sink.client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            return cast(list[object], pipe.execute(raise_on_error=True))

        with calling(what):
            try:
                return execute()
            except NoScriptError:
                sink.load_scripts()
                return execute()  # every command is idempotent: replaying the page is safe

    def _left(self, event: StoredEvent, now_ms: int) -> int:
        """The seconds a key the change feed wrote for ``event`` has left: the TTL from when the event was enqueued
        (its event time when unknown). A rebuild gives its keys that, so it brings back for a full TTL nothing the
        feed let expire; ``<= 0``: the feed's key would be gone, and the rebuild does not write it."""
        return self._left_from(_enqueued_ms(event), now_ms)

    def _left_from(self, enqueued_ms: int, now_ms: int) -> int:
        return min(self._sink._ttl, (enqueued_ms + self._sink._ttl * 1000 - now_ms) // 1000)  # a clock ahead

    def _write(self, keys: Keys, latest: Sequence[StoredEvent], critical: Mapping[str, Sequence[StoredEvent]],
               since_ms: int, what: str, *, stream: bool = False) -> None:
        """Latest states and complete critical lists into ``keys``' generation, in two pipelines, as a lookup's
        critical fill does (``lookup_cache.critical_event_fills``): first each latest state, and each event the
        device's set keeps (the newest ``cap``) by id (``fill_event``), with the stream markers and candidates
        (``stream``: of every event given, those before ``since_ms`` too, which no set lists);
        then each device's set (``fill_critical``) with only the events ``fill_event`` did not refuse. So a
        correction the change feed applied after the log was read (its note ``n`` in ``e:<id>``) keeps the old
        critical copy out of the set, and one it applies between the two pipelines finds the copy in ``e:<id>``
        and leaves a ``#gone:`` marker in the member key that ``fill_critical`` honours.

        Every key lives what the feed would have left it (:meth:`_left`): a latest state and a member key from
        their event, the set from its most recently enqueued event (each renewed it), or, without one, from the
        device's latest state. A key with nothing left is not written; a set that is keeps all its events (the
        feed's set holds them however old while a newer one renews it), and each gets its ``e:<id>`` for at
        least the stale marker seconds, long enough for the check.

        Each latest state goes with a ``fill_event`` in its ``stale`` mode naming the event's device, which notes
        the device in ``e:<id>`` (field ``o``) as the feed does: a correction the feed applies later that moves
        the event to another device then drops this state; one it applied after the log was read answers here,
        and the second pipeline drops the state (``unlatest``). A quiet rebuild writes no such state."""
        sink = self._sink
        sha, cap, marker = sink.sha, sink.critical_cap, sink.stale_marker_seconds
        now_ms = int(self._clock() * 1000)
        first: list[Command] = []
        latest_left: dict[str, int] = {}
        owners: list[tuple[int, StoredEvent]] = []  # the place of each latest event's owner note, and the event
        for event in latest:
            latest_left[event.device_id] = left = self._left(event, now_ms)
            if left > 0:
                first.append(("EVALSHA", sha["latest"], 1, keys.latest(event.device_id), sort_key(event),
                              event.to_json(), left))
                # The owner note (field o of e:<id>) the feed leaves for the event, so that a move the feed applies
                # after this write drops this state; and its answer where the feed already applied one.
                owners.append((len(first), event))
                first.append(("EVALSHA", sha["fill_event"], 1, keys.event(event.event_id), event.enqueued_text(),
                              "", "stale", marker, event.device_id))
        # device, the events kept (each with the place of its fill_event), covers, the set's TTL
        sets: list[tuple[str, list[tuple[int, StoredEvent]], int, int]] = []
        candidates: dict[int, list[object]] = {}  # per stream shard: event time, document of each event offered
        renewed: dict[int, int] = {}  # per stream shard: the latest enqueued time of the events offered
        for device, offered in critical.items():
            events = [event for event in offered if event.event_time_ms >= since_ms]  # the list's; the rest: stream
            newest_first = sorted(events, key=lambda e: e.event_time_ms, reverse=True)
            kept = newest_first[:cap]
            covers = since_ms if len(newest_first) <= cap else kept[-1].event_time_ms + 1
            if stream and offered:
                shard = keys.shard(device)
                for event in offered:
                    candidates.setdefault(shard, []).extend([event.event_time_ms, event.to_json()])
                newest = max(map(_enqueued_ms, offered))
                renewed[shard] = max(renewed.get(shard, newest), newest)
                first += self._seen(keys, device, offered, now_ms)
            lefts = [self._left(event, now_ms) for event in events]
            set_left = max(lefts) if lefts else latest_left.get(device, 0)
            if set_left <= 0:
                continue
            placed = []
            for event in kept:
                placed.append((len(first), event))
                first.append(("EVALSHA", sha["fill_event"], 1, keys.event(event.event_id), event.to_json(),
                              max(self._left(event, now_ms), marker)))
            sets.append((device, placed, covers, set_left))
        for shard, members in candidates.items():  # each shard keeps its own newest, as the feed trims each
            target = self._candidates_key(keys, shard)
            first.append(("ZADD", target, *members))
            first.append(("ZREMRANGEBYRANK", target, 0, -(sink._shard_max + 1)))
            first.append(("EXPIRE", target, sink._ttl))  # a rebuild killed and never resumed leaves nothing for good
        if renewed:
            target = self._renewed_key(keys)
            first.append(("ZADD", target, "GT", *(part for shard, at in renewed.items() for part in (at, shard))))
            first.append(("EXPIRE", target, sink._ttl))
        if not first:
            return
        replies = self._run(first, what)
        second: list[Command] = []
        for at, event in owners:  # {{device, time, ...}, reply}: a move the feed applied to the event
            for device, enqueued in moves(replies[at])[0]:
                second.append(("EVALSHA", sha["unlatest"], 1, keys.latest(device), str(event.event_id), enqueued))
        for device, placed, covers, set_left in sets:
            # A refusal is the copy's own (its fill_event's reply), not its event id's: of two copies of one id, the
            # one refused never takes the one accepted with it.
            current = [event for at, event in placed if replies[at] != 0]
            second += self._fill_critical(keys, device, current, covers, set_left, now_ms)
        if second:
            self._run(second, what)

    def _fill_critical(self, keys: Keys, device: str, kept: Sequence[StoredEvent], covers_all: int, set_left: int,
                       now_ms: int) -> list[Command]:
        """The device's critical set from ``kept`` (newest first, at most the cap), claiming to be complete from
        ``covers_all``, as a lookup's fill does. Chunks go newest first, each claiming only what it and the chunks
        before it hold: a chunk claiming ``since_ms`` after an earlier one was trimmed to the cap would claim
        events the set no longer has."""
        sha, cap = self._sink.sha, self._sink.critical_cap
        commands: list[Command] = []
        for start in range(0, max(len(kept), 1), _CHUNK):
            chunk = kept[start:start + _CHUNK]
            last = start + _CHUNK >= len(kept)
            covers = covers_all if last else chunk[-1].event_time_ms + 1
            args: list[object] = [covers, set_left, cap]
            for event in chunk:
                args += [event.event_time_ms, event.to_json(), self._left(event, now_ms)]
            commands.append(("EVALSHA", sha["fill_critical"], 1 + len(chunk), keys.critical(device),
                             *(keys.member(device, e.event_id) for e in chunk), *args))
        return commands

    def _seen(self, keys: Keys, device: str, events: Sequence[StoredEvent], now_ms: int) -> list[Command]:
        """The stream marker of each critical event, as the change feed would have left it: set when the event
        was enqueued (its event time when unknown), for the TTL. So a replay adds to the rebuilt stream no event
        the live one would refuse, whether or not it is among the stream's newest; the markers cost what the
        change feed's cost, one per critical event of the last TTL."""
        ttl_ms = self._sink._ttl * 1000
        commands: list[Command] = []
        for event in events:
            left = (to_ms(event.enqueued_time) if event.enqueued_time else event.event_time_ms) + ttl_ms - now_ms
            if left > 0:
                commands.append(("SET", keys.seen(device, event.event_id), "1", "NX", "PX", left))
        return commands

    def in_progress(self) -> Build | None:
        pointer = self._generations.read()
        if pointer.building is None or pointer.since_ms is None:  # no build, or one no rebuild can resume
            return None
        return Build(pointer.building, int(pointer.position) if pointer.position else None, pointer.since_ms)

    def begin(self, since_ms: int, *, resume: bool) -> Build:
        """Raises ``ConfigurationError`` while another process's lease on the build in progress is live, whether
        this would resume that build or (``resume=False``) discard it."""
        pointer = self._generations.read()
        if resume and pointer.building is not None and pointer.since_ms == since_ms:
            held = self._generations.resume(pointer.building, self._token, self._lease_ms)
            if held is not None:
                raise _refused(held, restart=False)
            build = Build(pointer.building, int(pointer.position) if pointer.position else None, since_ms)
            logger.info("resuming the build of generation %d at %s", build.generation, build.position)
        else:
            claimed = self._generations.start_building(since_ms, self._token, self._lease_ms)  # abandons a build
            if isinstance(claimed, Lease):
                raise _refused(claimed, restart=not resume)
            assert claimed.building is not None  # start_building returns the pointer with the new generation
            build = Build(claimed.building, None, since_ms)
            logger.info("building generation %d (live: %d)", build.generation, claimed.live)
        self._owned, self._lost = build.generation, None
        self._start_heartbeat(build.generation)
        try:
            time.sleep(self._settle)  # every change-feed writer now writes to the building generation too
            self.cleanup()  # what an earlier rebuild abandoned or failed to delete (no writer writes it any longer)
        except BaseException:
            self.release(build.generation)
            raise
        return build

    def _start_heartbeat(self, generation: int) -> None:
        """Renew the lease on ``generation`` every third of it on a thread of its own until :meth:`_stop_heartbeat`,
        so the build stays this builder's however long a page takes. A renewal that fails (Redis unreachable) is
        tried again at the next beat; one that finds the build another owner's ends the beat, and the build's next
        step fails (:meth:`_check`)."""
        self._stop_heartbeat()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._lease_ms / 3000):
                try:
                    if not self._generations.renew(generation, None, self._token, self._lease_ms):
                        self._lost = generation
                        logger.error("generation %d is no longer being built by this rebuild", generation)
                        return
                except DependencyUnavailable as exc:
                    logger.warning("could not renew the lease on generation %d (tried again shortly): %s",
                                   generation, exc)

        thread = threading.Thread(target=beat, name=f"rebuild-lease-{generation}", daemon=True)
        self._heartbeat = (thread, stop)
        thread.start()

    def _stop_heartbeat(self) -> None:
        """Stop the heartbeat, if one runs, and wait for its thread to end."""
        if self._heartbeat is not None:
            thread, stop = self._heartbeat
            self._heartbeat = None
            stop.set()
            thread.join()

    def _check(self, generation: int) -> None:
        """Raise ``DependencyUnavailable`` if a renewal found the build of ``generation`` another rebuild's."""
        if self._lost == generation:
            raise lost(generation)

    def release(self, generation: int) -> None:
        """Stop renewing the lease on ``generation`` and give it up, keeping the saved position (a rebuild that
        failed): the next rebuild resumes the build at once. Nothing to give up if this builder does not own it.
        Never raises: a release that fails (Redis unreachable) leaves the lease to lapse, as a killed rebuild's."""
        self._stop_heartbeat()
        if self._owned != generation:
            return
        self._owned = None
        try:
            self._generations.release(generation, self._token)
        except DependencyUnavailable as exc:
            logger.warning("could not give up the lease on generation %d (the next rebuild resumes it once it "
                           "lapses): %s", generation, exc)
            return
        logger.info("gave up the lease on generation %d: the next rebuild resumes it at once", generation)

    def _renew(self) -> None:
        """Renew the lease on the build this builder owns (none: nothing to do)."""
        if self._owned is not None:
            self._check(self._owned)
            self._generations.save_position(self._owned, None, self._token, self._lease_ms)

    def stream_since_ms(self) -> int:
        """The TTL before now: the feed's stream shard and marker of a critical event live the TTL from its
        arrival, which is at or after its event time. (An event that arrived later than that after its event time
        is still missed: without ``--since`` every critical event is read.)"""
        return int(self._clock() * 1000) - self._sink._ttl * 1000

    def write(self, generation: int, latest: Sequence[StoredEvent],
              critical: Mapping[str, Sequence[StoredEvent]], since_ms: int) -> None:
        self._check(generation)
        self._write(self._sink.keys_of(generation), latest, critical, since_ms,
                    f"writing {len(latest)} devices to generation {generation}", stream=True)

    def save_position(self, generation: int, position: int) -> None:
        self._check(generation)
        self._generations.save_position(generation, str(position), self._token, self._lease_ms)  # renews the lease

    def finish(self, generation: int) -> int:
        sink, keys = self._sink, self._sink.keys_of(generation)
        self._check(generation)
        self._generations.save_position(generation, None, self._token, self._lease_ms)  # still ours: renewed
        with calling("reading the stream candidates"):
            renewed = {int(shard): int(at) for shard, at in cast(list[tuple[bytes, float]], sink.client.zrange(
                self._renewed_key(keys), 0, -1, withscores=True))}
        now_ms = int(self._clock() * 1000)
        for shard, stream in enumerate(keys.streams):  # one script per shard: the shard is rewritten atomically
            # The feed's shard lives the TTL from its latest append: one whose events were all enqueued longer ago
            # than that has expired, and the rebuild brings none of them back.
            left = self._left_from(renewed[shard], now_ms) if shard in renewed else 0
            candidates: list[object] = []
            if left > 0:
                with calling("reading the stream candidates"):
                    members = sink.client.zrange(self._candidates_key(keys, shard), 0, -1, withscores=True)
                candidates = self._unexpired(cast(list[tuple[bytes, float]], members), renewed[shard])
            self._run([("EVALSHA", sink.sha["stream_rebuild"], 1, stream, max(left, 0), sink._shard_max,
                        *candidates)], f"writing the critical stream of generation {generation}")
        self._run([("UNLINK", self._renewed_key(keys)),
                   *(("UNLINK", self._candidates_key(keys, shard)) for shard in range(len(keys.streams)))],
                  "deleting the stream candidates")
        self._stop_heartbeat()  # renewed a third of the lease ago at most: the switch (owner-checked) comes next
        self._check(generation)
        old = self._generations.switch(generation, self._token)  # records the old generation for deletion
        self._owned = None
        logger.info("generation %d is live (replaced %d)", generation, old)
        time.sleep(self._settle)  # no reader still reads the old generation
        return old

    def _unexpired(self, members: Sequence[tuple[bytes, float]], renewed_ms: int) -> list[object]:
        """The ``stream_rebuild`` arguments of the candidates the feed's shard would still hold: it holds what it
        was given since it last expired, so walking back from its latest append (``renewed_ms``), an event
        enqueued more than the TTL before the next one was appended had gone with its shard by then, and every
        older one too. (The gaps are judged by the candidates kept, the shard's newest by event time.)"""
        entries = []
        for member, score in members:
            document = member.decode()
            parsed = json.loads(document)
            enqueued = parsed.get("enqueued_time")
            enqueued_ms = to_ms(datetime.fromisoformat(enqueued)) if enqueued else int(score)
            entries.append((enqueued_ms, [int(score), parsed["event_id"], parsed["device_id"], document]))
        arguments: list[object] = []
        next_append = renewed_ms
        for enqueued_ms, candidate in sorted(entries, key=lambda entry: entry[0], reverse=True):
            if next_append - enqueued_ms > self._sink._ttl * 1000:
                break
            arguments += candidate
            next_append = enqueued_ms
        return arguments

    def cleanup(self) -> list[int]:
        """Delete every generation recorded for deletion, then its record (a failure keeps the record)."""
        deleted = []
        for generation in self._generations.retired():
            removed = self._generations.drop(generation, GENERATION_PATTERNS)
            self._generations.forget(generation)
            logger.info("deleted %d keys of generation %d", removed, generation)
            deleted.append(generation)
            self._renew()  # deleting a large generation takes a while: the build it runs for stays ours
        return deleted

    def clear(self, device_id: str, event_ids: Collection[str] = ()) -> None:
        """Delete the device's latest state, critical set, the member key of every event the set holds, and the
        ``e:<event id>`` document of each of ``event_ids`` and of every event those keys name.

        A member key left behind would name a copy of its event that the rewritten set does not hold
        (``fill_critical`` overwrites such a key rather than skip the event, for the member keys of events
        trimmed from the set earlier). An ``e:<id>`` document left behind would be merged with the log's copy by
        ``fill_event``, which keeps the one enqueued later (and of one enqueued time the greater text): a wrong
        copy a buggy release cached would stay, where a full rebuild (a new generation) drops it. The device's
        keys are in its slot: one ``UNLINK``; each ``e:<id>`` is its own slot: one ``UNLINK`` each.
        """
        keys = self._sink.keys_of(self._generations.read().live)
        what = f"clearing device {device_id!r}"
        with calling(what):
            members = cast(list[bytes], self._sink.client.zrange(keys.critical(device_id), 0, -1))
            latest = cast(bytes | None, self._sink.client.hget(keys.latest(device_id), "d"))
        member_ids = [event_id for event_id in map(_event_id, members) if event_id]
        latest_id = _event_id(latest) if latest else None
        named = {*event_ids, *member_ids, *([latest_id] if latest_id else [])}
        self._run([("UNLINK", keys.latest(device_id), keys.critical(device_id),
                    *(keys.member(device_id, event_id) for event_id in member_ids)),
                   *(("UNLINK", keys.event(event_id)) for event_id in sorted(named))], what)

    def refresh(self, device_id: str, latest: StoredEvent | None, critical: Sequence[StoredEvent],
                since_ms: int) -> None:
        keys = self._sink.keys_of(self._generations.read().live)
        self._write(keys, [latest] if latest is not None else [], {device_id: critical}, since_ms,
                    f"rebuilding device {device_id!r}")
