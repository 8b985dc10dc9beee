"""Reading the pipeline's stores: live progress figures, and an exact check of a load generator manifest.

:class:`Probe` reads what the pipeline wrote, through the same clients the
functions use: Cassandra (events, latest state), the dead-letter container in
Blob storage, Redis (critical events), PostgreSQL (enriched windows) and the Event
Hubs checkpoints (lag). :func:`check_delivery` compares a manifest
(:func:`sluice.loadgen.read_manifest`) with them and lists every difference:

* every valid event stored exactly once (``events_by_time_bucket``, one row per
  event id; a duplicate send must not add one);
* no whole batch dead-lettered (the store was unavailable), whatever the manifest holds;
* every invalid event dead-lettered, with a reason naming what is wrong;
* each device's latest state = its newest event (out-of-order events must not win);
* when the app has the change feed: every critical event written to Redis;
* when the app has enrichment: every window of the run enriched, with per-device
  counts and measurement figures equal to a computation from the stored events of
  those windows (this run's and any earlier run's).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from shared.adapters.cassandra.layout import bucket_start, buckets_between
from shared.adapters.redis.generations import generation_prefix
from shared.settings import Settings, load_settings
from sluice.loadgen import Expected

if TYPE_CHECKING:
    import psycopg
    from azure.storage.blob import BlobServiceClient
    from cassandra.cluster import Session
    from psycopg.rows import TupleRow
    from pydantic import SecretStr

    from shared.adapters.keyvault import KeyVaultSecrets
    from shared.adapters.redis import RedisConnection
    from shared.adapters.redis.client import Client
    from shared.adapters.secrets import RotatingSecret

logger = logging.getLogger(__name__)

CHECKPOINT_CONTAINER = "azure-webjobs-eventhub"

_T = TypeVar("_T")


def function_names() -> set[str]:
    """The functions ``function_app.py`` registers (empty when the app cannot be imported).

    ``FunctionApp.get_functions()`` may run only once per app: a process that indexes the app
    elsewhere (the tests do, through ``tests/fixtures/functions.py``) must not call this too.
    """
    try:
        import function_app

        names: set[str] = set()
        for function in function_app.app.get_functions():
            name = function.get_function_name()
            if name is None:  # azure-functions names a function after its Python function when no @function_name
                raise ValueError(f"{function.get_user_function()!r} has no function name")
            names.add(name)
        return names
    except Exception:
        logger.warning("could not index function_app.py", exc_info=True)
        return set()


def _iso_to_dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@dataclass
class Figures:
    """One progress snapshot; ``None`` where a figure is not available (yet)."""

    stored: int | None = None
    dead_lettered: int | None = None
    critical_cached: int | None = None
    windows_enriched: int | None = None
    lag: int | None = None
    lag_by_partition: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # "metrics" or "stores" when `sluice up` also reads the dev host's metrics


class Probe:
    """Read-only access to the stores named by a settings ``Values`` mapping."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.settings: Settings = load_settings({k: v for k, v in values.items() if v != ""})
        self._session: Session | None = None
        self._blob: BlobServiceClient | None = None
        self._redis: RedisConnection | None = None
        self._vault: KeyVaultSecrets | None = None
        self._pg_password: RotatingSecret | None = None

    # --- clients (lazy) ---

    @property
    def session(self) -> Session:
        if self._session is None:
            from shared.adapters.cassandra.session import connect

            cfg = self.settings.cassandra
            self._session = connect(cfg, self._password(cfg.password, cfg.password_secret))
        return self._session

    @property
    def blob(self) -> BlobServiceClient:
        if self._blob is None:
            from shared.adapters.blob_service import blob_service_client

            self._blob = blob_service_client(self.settings.storage)
        return self._blob

    @property
    def redis(self) -> Client:
        if self._redis is None:
            from shared.adapters.redis import RedisConnection

            cfg = self.settings.redis
            if cfg.auth == "entra":
                from shared.adapters.identity import credential_for

                self._redis = RedisConnection(cfg.url, entra=credential_for(cfg.url), cluster=cfg.cluster,
                                              socket_timeout=5, decode_responses=True)
            else:
                self._redis = RedisConnection(cfg.url, password=self._password(cfg.password, cfg.password_secret),
                                              cluster=cfg.cluster, socket_timeout=5, decode_responses=True)
        return self._redis.client()

    def pg(self) -> psycopg.Connection[TupleRow]:
        """A new connection (autocommit), logged in as the pipeline's pool logs in."""
        from shared.adapters.postgres.pool import connect

        cfg = self.settings.postgres
        if self._pg_password is None:
            self._pg_password = self._password(cfg.password, cfg.password_secret)
        return connect(cfg.conninfo(), password=self._pg_password, connect_timeout=5, autocommit=True)

    def _password(self, value: SecretStr | None, secret_name: str | None) -> RotatingSecret | None:
        """A store's password as the pipeline has it (``bootstrap.rotating_secret``): from settings, or from the
        stack's Key Vault when the settings name a secret, read again when the store refuses it (a rotation)."""
        from shared.adapters.secrets import store_password

        return store_password(value, secret_name, self._keyvault,
                              min_interval=self.settings.keyvault.refresh_min_interval_seconds)

    def _keyvault(self) -> KeyVaultSecrets:
        if self._vault is None:
            from shared.adapters.keyvault import KeyVaultSecrets

            kv = self.settings.keyvault
            assert kv.url is not None  # settings refuse *_SECRET names without a vault
            self._vault = KeyVaultSecrets(kv.url, ca_file=str(kv.ca_file) if kv.ca_file else None)
        return self._vault

    def close(self) -> None:
        if self._session is not None:
            self._session.cluster.shutdown()
        if self._blob is not None:
            self._blob.close()
        if self._redis is not None:
            self._redis.close()
        if self._vault is not None:
            self._vault.close()

    # --- Cassandra ---

    def stored_rows(self, start: datetime, end: datetime) -> list[Any]:
        """Every row of ``events_by_time_bucket`` with an event time in the buckets covering [start, end)."""
        from cassandra.concurrent import execute_concurrent_with_args

        cfg = self.settings.cassandra
        statement = self.session.prepare(
            f"SELECT event_id, device_id, event_time, critical, measurements FROM {cfg.keyspace}.events_by_time_bucket "
            "WHERE bucket = ? AND shard = ?")
        args = [
            (bucket, shard) for bucket in buckets_between(start, end, cfg.bucket_seconds) for shard in range(cfg.shards)
        ]
        rows: list[Any] = []
        for ok, result in execute_concurrent_with_args(self.session, statement, args, concurrency=16,
                                                       raise_on_first_error=True):
            assert ok
            rows.extend(result)  # iterating pages through every row of the partition
        return rows

    def stored_count(self, start: datetime, end: datetime) -> int:
        from cassandra.concurrent import execute_concurrent_with_args

        cfg = self.settings.cassandra
        statement = self.session.prepare(
            f"SELECT COUNT(*) FROM {cfg.keyspace}.events_by_time_bucket WHERE bucket = ? AND shard = ?")
        args = [
            (bucket, shard) for bucket in buckets_between(start, end, cfg.bucket_seconds) for shard in range(cfg.shards)
        ]
        total = 0
        for _, result in execute_concurrent_with_args(self.session, statement, args, concurrency=16,
                                                      raise_on_first_error=True):
            total += result.one()[0]
        return total

    def latest(self, devices: Iterable[str]) -> dict[str, str]:
        """device id -> event id of its ``device_latest`` row."""
        from cassandra.concurrent import execute_concurrent_with_args

        statement = self.session.prepare(
            f"SELECT device_id, event_id FROM {self.settings.cassandra.keyspace}.device_latest WHERE device_id = ?")
        out = {}
        for _, result in execute_concurrent_with_args(self.session, statement, [(d,) for d in devices],
                                                      concurrency=32, raise_on_first_error=True):
            row = result.one()
            if row is not None:
                out[row.device_id] = str(row.event_id)
        return out

    def sample_ids(self) -> dict[str, str]:
        """A device and a critical event that exist, for the example lookup URLs."""
        ks = self.settings.cassandra.keyspace
        out: dict[str, str] = {}
        row = self.session.execute(f"SELECT device_id, event_id FROM {ks}.critical_events_by_device LIMIT 1").one()
        if row is not None:
            out |= {"critical_device": row.device_id, "critical_event": str(row.event_id)}
        row = self.session.execute(f"SELECT device_id, event_id FROM {ks}.device_latest LIMIT 1").one()
        if row is not None:
            out |= {"device": row.device_id, "event": str(row.event_id)}
        return out

    # --- dead letters ---

    def dead_letters(self, since: datetime, *, download: bool = True) -> list[dict[str, Any]]:
        """Dead-letter documents (``rejected/`` and ``batches/``) of the days since ``since``, created after it.

        Each with its blob's name as ``blob``; without ``download``, only that (``{"blob": name}``).
        """
        from azure.core.exceptions import ResourceNotFoundError

        container = self.blob.get_container_client(self.settings.storage.deadletter_container)
        out: list[dict[str, Any]] = []
        day = since.astimezone(UTC).date()
        today = datetime.now(UTC).date()
        floor = since - timedelta(seconds=5)
        try:
            while day <= today:
                for kind in ("rejected", "batches"):
                    for blob in container.list_blobs(name_starts_with=f"{kind}/{day:%Y/%m/%d}/"):
                        if blob.creation_time and blob.creation_time < floor:
                            continue
                        if not download:
                            out.append({"blob": blob.name})
                            continue
                        document = json.loads(container.download_blob(blob.name).readall())
                        document["blob"] = blob.name
                        out.append(document)
                day += timedelta(days=1)
        except ResourceNotFoundError:  # no dead letter yet: the container is created on the first one
            return []
        return out

    # --- Redis ---

    def _redis_prefix(self) -> str:
        """The live generation's key prefix (``docs/redis-layout.md``: generations)."""
        prefix = self.settings.redis.key_prefix
        live = self.redis.hget(f"{prefix}generation", "live")
        return generation_prefix(prefix, int(live) if live else 0)

    def critical_cached(self) -> int:
        """Entries of the live generation's critical stream, over all its shards."""
        from shared.adapters.redis import Keys

        shards = self.settings.redis.critical_stream_shards
        return sum(int(self.redis.xlen(key)) for key in Keys(self._redis_prefix(), shards).streams)

    def critical_in_redis(self, event_ids: Iterable[str]) -> set[str]:
        """The event ids the change feed recorded as critical (``e:<id>`` holding the document)."""
        ids = list(event_ids)
        prefix = self._redis_prefix()
        with self.redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hget(f"{prefix}e:{event_id}", "d")
            flags = pipe.execute()
        return {event_id for event_id, flag in zip(ids, flags, strict=True) if flag}

    # --- PostgreSQL ---

    def windows_enriched(self) -> int | None:
        with self.pg() as conn:
            if _only_row(conn.execute("SELECT to_regclass('enrichment_windows')"))[0] is None:
                return None
            return int(_only_row(conn.execute("SELECT count(*) FROM enrichment_windows WHERE event_count > 0"))[0])

    def window_stats(self, windows: Iterable[datetime]) -> dict[tuple[datetime, str], dict[str, Any]]:
        starts = sorted(set(windows))
        with self.pg() as conn:
            rows = conn.execute(
                "SELECT window_start, device_id, event_count, critical_count, measurements FROM device_window_stats "
                "WHERE window_start = ANY(%s)", (starts,)).fetchall()
        return {(r[0].astimezone(UTC), r[1]): {"count": r[2], "critical": r[3], "measurements": r[4]} for r in rows}

    def enriched_windows(self, windows: Iterable[datetime]) -> set[datetime]:
        with self.pg() as conn:
            rows = conn.execute("SELECT window_start FROM enrichment_windows WHERE window_start = ANY(%s)",
                                (sorted(set(windows)),)).fetchall()
        return {r[0].astimezone(UTC) for r in rows}

    # --- Event Hubs lag ---

    def lag(self) -> tuple[int, dict[str, int]]:
        """Events enqueued but not yet checkpointed by the ingest function, per partition."""
        from azure.eventhub import EventHubConsumerClient

        ingest = self.settings.ingest
        client = EventHubConsumerClient.from_connection_string(
            self.values["EventHubConnection"], consumer_group=ingest.consumer_group, eventhub_name=ingest.eventhub_name)
        try:
            last = {}
            for pid in client.get_partition_ids():
                props = client.get_partition_properties(pid)
                # -1 for a partition that never had an event; one emptied by retention keeps its last number, and
                # what expired before its checkpoint is still counted: it was never processed
                last[pid] = props["last_enqueued_sequence_number"]
        finally:
            client.close()
        checkpoints = self.checkpoints()
        by_partition = {pid: max(0, seq - checkpoints.get(pid, -1)) for pid, seq in last.items()}
        return sum(by_partition.values()), by_partition

    def checkpoints(self) -> dict[str, int]:
        """Partition -> checkpointed sequence number of the ingest consumer group (Functions blob layout)."""
        from azure.core.exceptions import ResourceNotFoundError

        ingest = self.settings.ingest
        suffix = f"/{ingest.eventhub_name}/{ingest.consumer_group}/checkpoint/".lower()
        container = self.blob.get_container_client(CHECKPOINT_CONTAINER)
        out: dict[str, int] = {}
        try:
            for blob in container.list_blobs(include=["metadata"]):
                name = blob.name.lower()
                if suffix in name and blob.metadata and "sequencenumber" in blob.metadata:
                    out[name.rsplit("/", 1)[1]] = int(blob.metadata["sequencenumber"])
        except ResourceNotFoundError:
            return {}
        return out

    # --- everything at once ---

    def figures(self, since: datetime, *, features: set[str]) -> Figures:
        """A progress snapshot; a store that fails leaves its figure ``None`` and an error note."""
        figures = Figures()
        now = datetime.now(UTC)

        def attempt(name: str, read: Callable[[], _T]) -> _T | None:
            try:
                return read()
            except Exception as exc:
                figures.errors[name] = f"{type(exc).__name__}: {exc}"[:200]
                return None

        figures.stored = attempt(
            "stored", lambda: self.stored_count(since - timedelta(minutes=3), now + timedelta(minutes=6))
        )
        figures.dead_lettered = attempt("dead letters", lambda: len(self.dead_letters(since, download=False)))
        if "changefeed" in features:
            figures.critical_cached = attempt("redis", self.critical_cached)
        if "enrichment" in features:
            figures.windows_enriched = attempt("postgres", self.windows_enriched)
        lag = attempt("lag", self.lag)
        if lag is not None:
            figures.lag, figures.lag_by_partition = lag
        return figures


# --- the exact check ------------------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What a check found: figures, and one line per problem (empty = delivered)."""

    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str, examples: Iterable[Any] = ()) -> None:
        shown = list(examples)[:5]
        self.problems.append(text + (f" (e.g. {', '.join(map(str, shown))})" if shown else ""))


def window_of(moment: datetime, window_seconds: int) -> datetime:
    return bucket_start(moment, window_seconds)


def window_figures(rows: Iterable[Any], windows: set[datetime], window_seconds: int
                   ) -> dict[tuple[datetime, str], dict[str, Any]]:
    """Per (window start, device) of ``windows``: event count, critical count and, per measurement, count, min,
    max, avg and last (the value of the newest event, ties broken by event id), computed from stored event rows."""
    groups: dict[tuple[datetime, str], list[Any]] = defaultdict(list)
    for row in rows:
        moment = row.event_time if row.event_time.tzinfo else row.event_time.replace(tzinfo=UTC)
        window = window_of(moment, window_seconds)
        if window in windows:
            groups[(window, row.device_id)].append((moment, str(row.event_id), row))
    out = {}
    for key, members in groups.items():
        members.sort(key=lambda m: (m[0], m[1]))
        measurements: dict[str, dict[str, float]] = {}
        for _, _, row in members:
            for name, value in (row.measurements or {}).items():
                figures = measurements.setdefault(name, {"count": 0, "min": value, "max": value, "sum": 0.0})
                figures["count"] += 1
                figures["min"] = min(figures["min"], value)
                figures["max"] = max(figures["max"], value)
                figures["sum"] += value
                figures["last"] = value  # members are oldest first
        for figures in measurements.values():
            figures["avg"] = figures.pop("sum") / figures["count"]
        out[key] = {"count": len(members), "critical": sum(1 for _, _, row in members if row.critical),
                    "measurements": measurements}
    return out


def check_delivery(expected: Expected, probe: Probe, *, features: set[str], since: datetime) -> DeliveryReport:
    """Compare a manifest with the stores; see the module docstring for what is checked."""
    report = DeliveryReport()
    valid = expected.valid
    report.figures["valid"] = len(valid)
    report.figures["invalid"] = len(expected.invalid)
    report.figures["duplicates_sent"] = expected.duplicates

    # 1. every valid event stored exactly once
    if valid:
        times = [_iso_to_dt(r["timestamp"]) for r in valid.values()]
        rows = probe.stored_rows(min(times), max(times) + timedelta(milliseconds=1))
        counts = Counter(str(row.event_id) for row in rows)
        missing = [eid for eid in valid if counts[eid] == 0]
        doubled = [eid for eid in valid if counts[eid] > 1]
        report.figures["stored"] = sum(1 for eid in valid if counts[eid] == 1)
        if missing:
            report.problem(f"{len(missing)} of {len(valid)} valid events are not stored", missing)
        if doubled:
            report.problem(f"{len(doubled)} valid events are stored more than once", doubled)
        by_id = {str(row.event_id): row for row in rows}
        wrong = [eid for eid in valid if eid in by_id and by_id[eid].device_id != valid[eid]["device_id"]]
        if wrong:
            report.problem(f"{len(wrong)} events are stored under another device", wrong)
        altered = [eid for eid in valid if eid in by_id and not _same_event(by_id[eid], valid[eid])]
        if altered:
            report.problem(f"{len(altered)} events are stored with another time, measurements or critical flag",
                           altered)

    # 2. no whole batch dead-lettered, whatever the manifest holds; every invalid event dead-lettered with a reason
    # naming the problem (the letters' bodies are read only then)
    letters = probe.dead_letters(since, download=bool(expected.invalid))
    batches = [letter["blob"] for letter in letters if letter["blob"].startswith("batches/")]
    if batches:
        report.problem(f"{len(batches)} whole batches were dead-lettered (the store was unavailable)", batches)
    if expected.invalid:
        by_text: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for letter in letters:
            if letter.get("kind") == "rejected":
                by_text[letter.get("original_text", "")].append(letter)
        not_dead = [r for r in expected.invalid if not by_text.get(r["body"])]
        bad_reason = [r for r in expected.invalid if by_text.get(r["body"])
                      and not all(r["reason"] in letter["reason"] for letter in by_text[r["body"]])]
        report.figures["dead_lettered"] = len(expected.invalid) - len(not_dead)
        if not_dead:
            report.problem(f"{len(not_dead)} of {len(expected.invalid)} invalid events are not dead-lettered",
                           [r["body"][:60] for r in not_dead])
        if bad_reason:
            report.problem(f"{len(bad_reason)} dead letters do not name the problem",
                           [f"{r['reason']!r} not in {by_text[r['body']][0]['reason']!r}" for r in bad_reason])

    # 3. latest state = newest event
    newest = expected.latest_by_device()
    if newest:
        stored_latest = probe.latest(newest)
        stale = [d for d, r in newest.items() if stored_latest.get(d) != r["event_id"]]
        report.figures["latest_ok"] = len(newest) - len(stale)
        if stale:
            report.problem(f"{len(stale)} of {len(newest)} devices' latest state is not their newest event",
                           [f"{d}: {stored_latest.get(d)} != {newest[d]['event_id']}" for d in stale])

    # 4. critical events in Redis (the change feed)
    critical = expected.critical
    if "changefeed" in features and critical:
        present = probe.critical_in_redis(critical)
        report.figures["critical_in_redis"] = len(present)
        absent = [eid for eid in critical if eid not in present]
        if absent:
            report.problem(f"{len(absent)} of {len(critical)} critical events are not in Redis", absent)

    # 5. enriched windows equal an independent computation from the stored events (of this run and any other)
    if "enrichment" in features and valid:
        window_seconds = probe.settings.enrichment.window_seconds
        windows = {window_of(_iso_to_dt(r["timestamp"]), window_seconds) for r in valid.values()}
        enriched = probe.enriched_windows(windows)
        report.figures["windows"] = len(windows)
        report.figures["windows_enriched"] = len(enriched & windows)
        if windows - enriched:
            report.problem(f"{len(windows - enriched)} of {len(windows)} windows are not enriched",
                           sorted(w.isoformat() for w in windows - enriched))
        rows = probe.stored_rows(min(windows), max(windows) + timedelta(seconds=window_seconds))
        wanted = window_figures(rows, enriched & windows, window_seconds)
        stats = probe.window_stats(enriched & windows)
        differ = [f"{key[0].isoformat()} {key[1]}: {stats.get(key)} != {want}" for key, want in wanted.items()
                  if not _same_window(stats.get(key), want)]
        differ += [f"{key[0].isoformat()} {key[1]}: enriched but no such events stored" for key in stats
                   if key not in wanted]
        if differ:
            report.problem(f"{len(differ)} device windows differ from the computation from the stored events", differ)
    return report


def _only_row(cursor: psycopg.Cursor[TupleRow]) -> TupleRow:
    """The row of a query that always returns one (an aggregate, a SELECT without FROM)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("PostgreSQL returned no row for a query that always returns one")
    return row


def _same_event(row: Any, record: Mapping[str, Any]) -> bool:
    moment: datetime = row.event_time if row.event_time.tzinfo else row.event_time.replace(tzinfo=UTC)
    return (moment == _iso_to_dt(record["timestamp"]) and dict(row.measurements or {}) == record["measurements"]
            and bool(row.critical) == record["critical"])


def _same_window(got: Mapping[str, Any] | None, want: Mapping[str, Any]) -> bool:
    if not got or got["count"] != want["count"] or got["critical"] != want["critical"]:
        return False
    measured = got.get("measurements") or {}
    if set(measured) != set(want["measurements"]):
        return False
    return all(_same_figures(measured[name], figures) for name, figures in want["measurements"].items())


def _same_figures(got: Mapping[str, Any] | None, want: Mapping[str, float]) -> bool:
    if not got:
        return False
    return all(name in got and math.isclose(float(got[name]), float(value), rel_tol=1e-9, abs_tol=1e-9)
               for name, value in want.items())
