"""The load generator: device events per the contract, sent with the real Event Hubs producer at a paced rate.

:class:`EventGenerator` makes the events. Valid ones are built as JSON and checked
with :class:`shared.domain.events.DeviceEvent` before they leave, so the generator
cannot drift from the contract; invalid ones break exactly one rule each and carry
the fragment the ingest's dead-letter reason must contain. Kinds are spread evenly
(an accumulator per ratio, started at a seeded phase), so 10,000 events at
``--invalid-ratio 0.001`` are 10 invalid ones, give or take one:

* ``valid``: a new event; some are **critical** (``severity`` critical and a
  temperature above 90, so both the severity and the default rule say so), some
  **out of order** (a timestamp 5-120 s older than the device's newest event);
  normal events keep the temperature at or below 85 so no rule marks them critical;
* ``duplicate``: the exact bytes of an earlier valid event sent again (at-least-once
  delivery): it must be stored once;
* ``invalid``: one contract violation (see :data:`INVALID_VARIANTS`): it must be
  dead-lettered with its reason.

:class:`LoadRunner` paces them (``rate`` events/s, in ticks of 0.1 s) through an
``EventHubProducerClient``: each tick's events are grouped by the partition their
device id hashes to and sent as one batch per partition, every event annotated
with its partition key (the device id). That is what the SDK's own buffered mode
does; one batch per device key would mean one round trip per event at 1,000
devices. The hash is the SDK's copy of the service's, so on Azure a device's events
land where a keyed send would put them; either way one device always maps to one
partition, which keeps its events in order.

The manifest (JSON lines, one per acknowledged event) records what was sent, so a
test or ``sluice up --duration`` can check delivery exactly.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from shared.domain.events import DeviceEvent, Limits
from sluice.partitioning import partition_for_key

if TYPE_CHECKING:
    from azure.eventhub import EventDataBatch

logger = logging.getLogger(__name__)

Kind = Literal["valid", "duplicate", "invalid"]
TICK_SECONDS = 0.1
PARTITION_KEY = b"x-opt-partition-key"
_OFFSETS = (timezone(timedelta(hours=1)), timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30)))


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to send: how many devices, how fast, for how long, and the mix of kinds."""

    devices: int = 1000
    rate: float = 2000.0
    duration: float | None = 60.0
    count: int | None = None
    critical_ratio: float = 0.01
    duplicate_ratio: float = 0.001
    invalid_ratio: float = 0.001
    out_of_order_ratio: float = 0.005
    seed: int | None = None
    device_prefix: str = "dev-"

    def __post_init__(self) -> None:
        problems = []
        if self.devices < 1:
            problems.append(f"devices must be at least 1 (got {self.devices})")
        if not (math.isfinite(self.rate) and self.rate > 0):  # nan passes `<= 0`, and inf paces nothing
            problems.append(f"rate must be a positive number (got {self.rate})")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            problems.append(f"duration must be a positive number (got {self.duration})")
        if self.count is not None and self.count < 0:
            problems.append(f"count must not be negative (got {self.count})")
        for name in ("critical_ratio", "duplicate_ratio", "invalid_ratio", "out_of_order_ratio"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                problems.append(f"{name.replace('_', '-')} must be between 0 and 1 (got {value})")
        if self.duplicate_ratio + self.invalid_ratio > 1:
            problems.append("duplicate-ratio + invalid-ratio must not exceed 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def total(self) -> int | None:
        """How many events the run sends (``None``: until stopped)."""
        if self.count is not None:
            return self.count
        if self.duration is not None:
            return round(self.rate * self.duration)
        return None

    def device_id(self, index: int) -> str:
        return f"{self.device_prefix}{index:05d}"


@dataclass(frozen=True, slots=True)
class Planned:
    """One event to send: its body and what the pipeline must make of it."""

    kind: Kind
    device_id: str
    body: bytes
    event_id: str | None
    timestamp: datetime | None = None
    severity: str | None = None
    measurements: dict[str, float] | None = None
    critical: bool = False
    out_of_order: bool = False
    reason: str | None = None

    def manifest_record(self, sent_at: float, partition_id: str | None) -> dict[str, Any]:
        """The manifest line for this event (``body`` only for invalid events, whose bytes matter)."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "event_id": self.event_id,
            "device_id": self.device_id,
            "partition_id": partition_id,
            "sent_at": round(sent_at, 6),
        }
        if self.kind != "invalid":
            assert self.timestamp is not None
            record |= {
                "timestamp": self.timestamp.isoformat(timespec="milliseconds"),
                "severity": self.severity,
                "measurements": self.measurements,
                "critical": self.critical,
                "out_of_order": self.out_of_order,
            }
        else:
            record |= {"reason": self.reason, "body": self.body.decode("utf-8", "replace")}
        return record


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


# (name, make the bad body from a valid event document, a fragment the dead-letter reason must contain)
INVALID_VARIANTS: tuple[tuple[str, Callable[[dict[str, Any]], bytes], str], ...] = (
    ("timestamp without offset", lambda d: _dumps({**d, "timestamp": d["timestamp"][:23]}), "timestamp"),
    (
        "measurement is text",
        lambda d: _dumps({**d, "measurements": {"temperature": "hot"}}),
        "measurements.temperature",
    ),
    ("unknown field", lambda d: _dumps({**d, "colour": "red"}), "colour"),
    ("unknown severity", lambda d: _dumps({**d, "severity": "panic"}), "severity"),
    ("no device id", lambda d: _dumps(_without(d, "device_id")), "device_id"),
    ("unsupported schema version", lambda d: _dumps({**d, "schema_version": 2}), "schema_version"),
    ("event id not a UUID", lambda d: _dumps({**d, "event_id": "not-a-uuid-" + d["event_id"][:8]}), "event_id"),
    ("not JSON", lambda d: b'{"event_id": "' + d["event_id"].encode() + b'", truncated', "not valid JSON"),
)


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class EventGenerator:
    """Makes the events of a run, deterministically for a given seed (apart from the clock)."""

    def __init__(self, spec: LoadSpec, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.spec = spec
        self._clock = clock
        self._random = random.Random(spec.seed)
        # Accumulators start at a seeded phase, so kinds are spread evenly and counts are exact.
        self._acc = {name: self._random.random() for name in ("invalid", "duplicate", "critical", "out_of_order")}
        self._newest: dict[str, datetime] = {}
        self._known: list[str] = []
        self._recent: deque[Planned] = deque(maxlen=1000)
        self._invalid_turn = self._random.randrange(len(INVALID_VARIANTS))
        self._limits = Limits()

    def _fires(self, name: str, ratio: float) -> bool:
        self._acc[name] += ratio
        return self._take(name)

    def _take(self, name: str) -> bool:
        if self._acc[name] >= 1.0:
            self._acc[name] -= 1.0
            return True
        return False

    def next(self) -> Planned:
        spec = self.spec
        self._acc["invalid"] += spec.invalid_ratio
        self._acc["duplicate"] += spec.duplicate_ratio
        if self._take("invalid"):
            return self._invalid()
        # A duplicate due before anything was sent (or on the same turn as an invalid one) waits for the next turn.
        if self._recent and self._take("duplicate"):
            original = self._random.choice(self._recent)
            return Planned(
                "duplicate", original.device_id, original.body, original.event_id, original.timestamp,
                original.severity, original.measurements, original.critical, original.out_of_order,
            )
        critical = self._fires("critical", spec.critical_ratio)
        out_of_order = self._fires("out_of_order", spec.out_of_order_ratio)
        return self._valid(critical=critical, out_of_order=out_of_order)

    def take(self, n: int) -> list[Planned]:
        return [self.next() for _ in range(n)]

    def _document(self, device_id: str, moment: datetime, *, critical: bool) -> tuple[dict[str, Any], dict[str, float]]:
        rnd = self._random
        if critical:
            severity = "critical"
            temperature = round(rnd.uniform(90.5, 120.0), 2)
        else:
            severity = "warning" if rnd.random() < 0.05 else "info"
            temperature = round(rnd.uniform(15.0, 85.0), 2)
        measurements = {
            "temperature": temperature,
            "pressure": round(rnd.uniform(95.0, 105.0), 3),
            "humidity": round(rnd.uniform(10.0, 90.0), 1),
        }
        # Mostly UTC, sometimes another offset: the contract accepts any, ingest stores UTC.
        shown = moment if rnd.random() < 0.9 else moment.astimezone(rnd.choice(_OFFSETS))
        doc = {
            "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "device_id": device_id,
            "event_type": "telemetry",
            "timestamp": shown.isoformat(timespec="milliseconds"),
            "severity": severity,
            "measurements": measurements,
            "attributes": {"firmware": f"1.{rnd.randrange(5)}.{rnd.randrange(10)}"},
            "schema_version": 1,
        }
        return doc, measurements

    def _device(self) -> str:
        return self.spec.device_id(self._random.randrange(self.spec.devices))

    def _valid(self, *, critical: bool, out_of_order: bool) -> Planned:
        device_id = self._device()
        if out_of_order and device_id not in self._newest and self._known:
            device_id = self._random.choice(self._known)  # an out-of-order event needs a newer one before it
        now = self._clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        newest = self._newest.get(device_id)
        if out_of_order and newest is not None:
            moment = min(newest, now) - timedelta(milliseconds=self._random.randrange(5_000, 120_000))
        else:
            out_of_order = False
            moment = now if newest is None or now > newest else newest + timedelta(milliseconds=1)
            if newest is None:
                self._known.append(device_id)
            self._newest[device_id] = moment
        doc, measurements = self._document(device_id, moment, critical=critical)
        body = _dumps(doc)
        # The contract check: a generated "valid" event the ingest would refuse is a bug here, not data.
        DeviceEvent.model_validate_json(body, context={"limits": self._limits, "now": now})
        planned = Planned(
            "valid", device_id, body, doc["event_id"], moment, doc["severity"], measurements, critical, out_of_order,
        )
        self._recent.append(planned)
        return planned

    def _invalid(self) -> Planned:
        name, make, reason = INVALID_VARIANTS[self._invalid_turn % len(INVALID_VARIANTS)]
        self._invalid_turn += 1
        device_id = self._device()
        now = self._clock().astimezone(UTC)
        doc, _ = self._document(device_id, now, critical=False)
        body = make(doc)
        readable_id = doc["event_id"] if name != "event id not a UUID" else None
        return Planned("invalid", device_id, body, readable_id, reason=reason)


# --- sending ---------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run sent (acknowledged by Event Hubs), by kind."""

    sent: int = 0
    failed: int = 0
    elapsed: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    by_partition: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def count(self, events: Iterable[Planned], partition_id: str) -> None:
        for event in events:
            self.sent += 1
            self.by_partition[partition_id] += 1
            self.kinds[event.kind] += 1
            if event.kind == "valid":
                self.kinds["critical"] += event.critical
                self.kinds["out_of_order"] += event.out_of_order

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "elapsed_seconds": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            **{kind: self.kinds[kind] for kind in ("valid", "critical", "duplicate", "invalid", "out_of_order")},
            "by_partition": dict(sorted(self.by_partition.items())),
            "errors": self.errors[:5],
        }


def device_partition(device_id: str, partition_ids: list[str]) -> str:
    """The partition Event Hubs itself gives partition key = ``device_id``.

    So a device's events land on one partition whether they come from here or from
    the device sending with its id as partition key. (The Python SDK's own resolver
    differs from the service for up to half the keys: sluice/partitioning.py.)
    """
    return partition_ids[partition_for_key(device_id, len(partition_ids))]


@dataclass(frozen=True, slots=True)
class Sent:
    """One batch sent to one partition: when, and the error if Event Hubs did not take it."""

    partition_id: str
    events: list[Planned]
    sent_at: float
    error: BaseException | None


class EventHubSender:
    """Sends planned events as one batch per partition with an ``EventHubProducerClient``."""

    def __init__(self, connection: str, hub: str | None, *, timeout: float = 30.0) -> None:
        from azure.eventhub import EventHubProducerClient

        # An explicit hub wins over the connection string's EntityPath (as in the SDK): events go where the caller
        # says, which is the hub it reports.
        if hub is None and "entitypath=" not in connection.lower():
            hub = "telemetry"
        kwargs: dict[str, Any] = {} if hub is None else {"eventhub_name": hub}
        self._client = EventHubProducerClient.from_connection_string(connection, **kwargs)
        self._timeout = timeout
        self.partition_ids: list[str] = list(self._client.get_partition_ids())
        self._cache: dict[str, str] = {}
        # One sender thread per partition: each partition's producer has its own link and connection.
        self._pool = ThreadPoolExecutor(max_workers=len(self.partition_ids), thread_name_prefix="produce")

    def partition_of(self, device_id: str) -> str:
        pid = self._cache.get(device_id)
        if pid is None:
            pid = self._cache[device_id] = device_partition(device_id, self.partition_ids)
        return pid

    def send(self, events: list[Planned]) -> list[Sent]:
        """Send ``events``, partitions in parallel; one :class:`Sent` per batch, in no particular order."""
        groups: dict[str, list[Planned]] = {}
        for event in events:
            groups.setdefault(self.partition_of(event.device_id), []).append(event)
        if len(groups) == 1:
            return self._send_partition(*next(iter(groups.items())))
        futures = [self._pool.submit(self._send_partition, pid, group) for pid, group in groups.items()]
        return [sent for future in futures for sent in future.result()]

    def _send_partition(self, pid: str, group: list[Planned]) -> list[Sent]:
        from azure.eventhub import EventData

        out: list[Sent] = []
        batch = self._client.create_batch(partition_id=pid)
        in_batch: list[Planned] = []
        for event in group:
            data = EventData(event.body)
            annotations = data.raw_amqp_message.annotations
            if annotations is None:  # EventData(body) starts with an empty dict of them
                raise RuntimeError("azure-eventhub gave a new EventData no message annotations")
            annotations[PARTITION_KEY] = event.device_id
            try:
                batch.add(data)
            except ValueError:  # the batch is full: send it and start another
                out.append(self._send(pid, batch, in_batch))
                batch = self._client.create_batch(partition_id=pid)
                batch.add(data)
                in_batch = []
            in_batch.append(event)
        if in_batch:
            out.append(self._send(pid, batch, in_batch))
        return out

    def _send(self, pid: str, batch: EventDataBatch, events: list[Planned]) -> Sent:
        sent_at = time.time()
        try:
            self._client.send_batch(batch, timeout=self._timeout)
        except Exception as exc:  # the SDK already retried; report it, the run goes on
            return Sent(pid, events, sent_at, exc)
        return Sent(pid, events, sent_at, None)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


class LoadRunner:
    """Paces a generator's events through a sender; calls ``on_progress(summary)`` after each tick."""

    def __init__(
        self,
        spec: LoadSpec,
        sender: EventHubSender,
        *,
        manifest: IO[str] | None = None,
        on_progress: Callable[[Summary], None] | None = None,
        stop: threading.Event | None = None,
        generator: EventGenerator | None = None,
    ) -> None:
        self.spec = spec
        self.sender = sender
        self.generator = generator or EventGenerator(spec)
        self.manifest = manifest
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        self.summary = Summary()

    def run(self) -> Summary:
        """Send until the spec's total is reached or ``stop`` is set.

        The first tick also opens one link per partition (about half a second each
        on the emulator); the pacing clock starts after it, as if that tick had been
        sent on time, so a short run is not judged by its connection set-up.
        """
        spec, summary = self.spec, self.summary
        total = spec.total
        first = max(1, int(spec.rate * TICK_SECONDS))
        produced = min(first, total) if total is not None else first
        if produced:
            self._send(self.generator.take(produced))
        started = time.monotonic() - produced / spec.rate
        self._progress(started)
        while not self.stop.is_set() and (total is None or produced < total):
            now = time.monotonic()
            due = int(spec.rate * (now - started)) + 1
            if total is not None:
                due = min(due, total)
            # After a stall, catch up at most one second's worth per tick rather than in one burst.
            n = min(due - produced, max(1, int(spec.rate)))
            if n > 0:
                self._send(self.generator.take(n))
                produced += n
                self._progress(started)
            pause = now + TICK_SECONDS - time.monotonic()
            if pause > 0 and produced >= due:
                self.stop.wait(pause)
        self._progress(started)
        if self.manifest:
            self.manifest.flush()
        return summary

    def _progress(self, started: float) -> None:
        self.summary.elapsed = time.monotonic() - started
        if self.on_progress:
            self.on_progress(self.summary)

    def _send(self, events: list[Planned]) -> None:
        for sent in self.sender.send(events):
            if sent.error is not None:
                self.summary.failed += len(sent.events)
                message = f"partition {sent.partition_id}: {len(sent.events)} events not sent: {sent.error!r}"
                self.summary.errors.append(message)
                logger.error("%s", message)
                continue
            self.summary.count(sent.events, sent.partition_id)
            if self.manifest:
                self.manifest.writelines(
                    json.dumps(event.manifest_record(sent.sent_at, sent.partition_id), separators=(",", ":")) + "\n"
                    for event in sent.events
                )


# --- manifests -------------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """What a manifest says the pipeline must hold."""

    valid: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id -> record of its first send
    duplicates: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)

    @property
    def critical(self) -> dict[str, dict[str, Any]]:
        return {eid: r for eid, r in self.valid.items() if r["critical"]}

    def latest_by_device(self) -> dict[str, dict[str, Any]]:
        """Each device's newest valid event (by timestamp, then event id, as ingest orders them)."""
        latest: dict[str, dict[str, Any]] = {}
        for record in self.valid.values():
            current = latest.get(record["device_id"])
            if current is None or (record["timestamp"], record["event_id"]) > (
                current["timestamp"],
                current["event_id"],
            ):
                latest[record["device_id"]] = record
        return latest


def read_manifest(path: str | Path) -> Expected:
    """Read a manifest written by a run; a bad line raises ``ValueError`` naming its line number."""
    expected = Expected()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                kind = record["kind"]
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: not a manifest record ({exc})") from None
            if kind == "valid":
                expected.valid.setdefault(record["event_id"], record)
            elif kind == "duplicate":
                expected.duplicates += 1
            elif kind == "invalid":
                expected.invalid.append(record)
            else:
                raise ValueError(f"{path}:{number}: unknown kind {kind!r}")
    return expected
