"""The zero-loss audit's cost: ingest with the ledger write against ingest without it, and the audit read.

``python -m bench audit [--events 50000] [--batch 256]``

Starts a private Cassandra emulator, then in one run, over the same bodies
(``bench.ingest``'s synthetic events, numbered as one partition), alternating
per round so neither profits from a warmer emulator:

* **without**: :class:`IngestService.handle` as before the audit;
* **with**: the same service with :class:`CassandraAuditLedger` (one more
  row per Event Hubs batch: the run of sequence numbers it accounted for);
* **audit read**: ``accounted`` over every sequence number written, as
  sequence numbers per second.

The last line ends with ``ratio <r>`` (with / without).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from bench.ingest import RULES, _CountingDeadLetters, batches, synthetic_bodies
from shared.adapters.cassandra.audit import CassandraAuditLedger
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
from shared.domain.events import Limits
from shared.services.ingest import IngestService
from shared.settings import CassandraSettings
from sluice.launcher import python_module, start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit", description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256, help="events per invocation (host.json maxEventBatchSize)")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of without and with")
    args = parser.parse_args(argv)

    records = synthetic_bodies(args.events, 1000)
    emulator = start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0"),
                     timeout=60)
    try:
        def settings(keyspace: str) -> CassandraSettings:
            return CassandraSettings(
                hosts=[emulator.host], port=emulator.port, keyspace=keyspace, request_timeout_seconds=60)

        plain_cfg, audited_cfg = settings("bench_plain"), settings("bench_audited")
        session = connect(plain_cfg)
        for cfg in (plain_cfg, audited_cfg):
            apply_migrations(session, cfg)
        dead = _CountingDeadLetters()
        ledger = CassandraAuditLedger(session, audited_cfg.keyspace)
        plain = IngestService(CassandraEventStore(session, plain_cfg, RULES), dead, Limits())
        audited = IngestService(CassandraEventStore(session, audited_cfg, RULES), dead, Limits(), ledger)
        chunks = batches(records, args.batch)
        now = datetime.now(UTC)
        plain.handle(chunks[0], now=now)  # warm up both: prepare statements, open connections
        audited.handle(chunks[0], now=now)
        per_round = -(-len(chunks) // args.rounds)
        seconds = {"without": 0.0, "with": 0.0}
        for r in range(args.rounds):
            part = chunks[r * per_round:(r + 1) * per_round]
            for name, service in (("without", plain), ("with", audited)) if r % 2 == 0 else (
                    ("with", audited), ("without", plain)):
                began = time.perf_counter()
                for chunk in part:
                    service.handle(chunk, now=now)
                seconds[name] += time.perf_counter() - began
        began = time.perf_counter()
        accounted = sum(last - first + 1 for first, last in ledger.accounted("0", 0, len(records) - 1))
        read_seconds = time.perf_counter() - began
        if accounted != len(records) or dead.count:
            print(f"FAILED: {accounted} of {len(records)} sequence numbers in the ledger, {dead.count} dead letters")
            return 1
    finally:
        emulator.stop()
    without, with_audit = len(records) / seconds["without"], len(records) / seconds["with"]
    print(f"{len(records)} events, batches of {args.batch}, {args.rounds} rounds")
    print(f"audit read (accounted, one partition): {accounted / read_seconds:,.0f} sequence numbers/s")
    print(f"ingest: without the ledger {without:,.0f} events/s, with {with_audit:,.0f} events/s, "
          f"ratio {with_audit / without:.2f}")
    return 0
