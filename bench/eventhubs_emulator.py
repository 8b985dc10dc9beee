"""Throughput and latency of the Event Hubs emulator through the real azure-eventhub SDK.

``python -m bench eventhubs_emulator [--events N] [--producers P] [--batch B] [--latency-events L] [--profile FILE]``

A fresh emulator (repo config: hub ``telemetry``, 4 partitions) is started for the run.

1. **in**: P producer processes (aio SDK) send N events of ~500 bytes in total,
   in batches of B events spread over the partitions. Rate = N / wall time of
   the sends (clients are connected and warmed up before the clock starts).
2. **out**: one consumer process per partition (aio SDK, ``receive_batch``,
   prefetch 1000) reads everything from the start. Rate = N / time from the
   moment the receivers start to the last event.
3. **delay**: one consumer per partition from ``@latest``; a producer sends L
   events in small batches at a steady pace with its send time in the body;
   the delay is receive time minus send time, p50/p99 (same clock: same host).

4. **raw**: the emulator's ceiling without the SDK's client-side cost: one raw
   AMQP producer per partition sends pre-encoded batches (0x80013700, B events
   of ~500 bytes, 8 in flight), then one raw consumer per partition counts the
   deliveries from the start, granting credit 5000 at a time; and the delay
   through the emulator alone (raw producer to raw consumer, one event at a time).

For each phase the emulator's own CPU time is read (psutil), giving its cost
per event and so the rate one emulator core could sustain: on this 2-core
machine the SDK clients, which are pure Python too, share the CPU with it, so
the client-side rates are a floor, not the emulator's ceiling.

There is no other Event Hubs server to compare against on this machine
(Microsoft's emulator needs Docker), so the rates are printed against the
target of 20,000 events/s in and out.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench._stats import percentile

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from azure.eventhub import EventData

    from tests.emulators.eventhubs.rawamqp import RawClient

# What the producer and consumer processes put on their queues: when ready (a pid, or the moment a
# consumer attached), then (began, ended, sent) for a producer, (partition, got, first, last, delays)
# for a consumer.
Produced = tuple[float, float, int]
Consumed = tuple[str, int, float, float, list[float]]

TARGET = 20_000
PARTITIONS = ("0", "1", "2", "3")
ROOT = Path(__file__).resolve().parents[1]


def connection_string(port: int) -> str:
    return (f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")


def body(n: int) -> bytes:
    head = f"{n:012d}|{time.time():.6f}|".encode()
    return head + b"x" * (500 - len(head))


# ---------------------------------------------------------------- producer processes


def _produce(port: int, count: int, batch_size: int, start: Event, ready: Queue[int], done: Queue[Produced]
             ) -> None:
    from azure.eventhub import EventData
    from azure.eventhub.aio import EventHubProducerClient

    async def run() -> None:
        client = EventHubProducerClient.from_connection_string(connection_string(port), eventhub_name="telemetry")
        async with client:
            for p in PARTITIONS:  # connect every partition's link before the clock starts
                await client.send_batch([EventData(b"warm-up")], partition_id=p)
            ready.put(os.getpid())
            while not start.is_set():
                await asyncio.sleep(0.01)
            began = time.perf_counter()
            sent = 0
            i = 0
            while sent < count:
                n = min(batch_size, count - sent)
                batch = await client.create_batch(partition_id=PARTITIONS[i % len(PARTITIONS)])
                for k in range(n):
                    batch.add(EventData(body(sent + k)))
                await client.send_batch(batch)
                sent += n
                i += 1
            done.put((began, time.perf_counter(), sent))

    asyncio.run(run())


# ---------------------------------------------------------------- consumer processes


def _consume(port: int, partition: str, expect: int, starting_position: str, ready: Queue[float],
             done: Queue[Consumed]) -> None:
    from azure.eventhub.aio import EventHubConsumerClient

    async def run() -> None:
        client = EventHubConsumerClient.from_connection_string(
            connection_string(port), consumer_group="$Default", eventhub_name="telemetry", prefetch=1000)
        got = 0
        first = last = 0.0
        delays: list[float] = []
        finished = asyncio.Event()

        async def on_batch(_context: object, events: list[EventData]) -> None:
            nonlocal got, first, last
            now = time.time()
            if not events:
                return
            if not got:
                first = time.perf_counter()
            for event in events:
                raw = b"".join(event.body)  # type: ignore[arg-type]  # typed any AMQP value; DATA bodies are bytes
                if starting_position == "@latest" and raw[:1] != b"w":
                    delays.append(now - float(raw.split(b"|")[1]))
            got += len(events)
            last = time.perf_counter()
            if got >= expect:
                finished.set()

        # for the delay, hand over events as soon as they are in (with max_wait_time the SDK holds a batch
        # back until it is full or the time is up)
        task = asyncio.create_task(client.receive_batch(
            on_batch, partition_id=partition, starting_position=starting_position, max_batch_size=1000,
            max_wait_time=None if starting_position == "@latest" else 0.5))
        await asyncio.sleep(1.5)  # attached (the SDK takes ~1 s to connect, authenticate and attach)
        ready.put(time.perf_counter())
        try:
            await asyncio.wait_for(finished.wait(), 300)
        finally:
            await client.close()
            task.cancel()
        done.put((partition, got, first, last, delays))

    asyncio.run(run())


# ---------------------------------------------------------------- phases


class CpuMeter:
    """The emulator process's user+system CPU seconds between ``start`` and ``stop``."""

    def __init__(self, pid: int) -> None:
        import psutil
        self.process = psutil.Process(pid)
        self.before = 0.0

    def _now(self) -> float:
        t = self.process.cpu_times()
        seconds: float = t.user + t.system
        return seconds

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> float:
        return self._now() - self.before


def phase_in(port: int, events: int, producers: int, batch: int, cpu: CpuMeter) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    start, ready, done = ctx.Event(), ctx.Queue(), ctx.Queue()
    share = [events // producers + (1 if i < events % producers else 0) for i in range(producers)]
    procs = [ctx.Process(target=_produce, args=(port, n, batch, start, ready, done)) for n in share]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    cpu.start()
    start.set()
    results = [done.get(timeout=600) for _ in procs]
    used = cpu.stop()
    for p in procs:
        p.join(30)
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return sum(r[2] for r in results) / wall, used


def phase_out(port: int, per_partition: dict[str, int], cpu: CpuMeter) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_consume, args=(port, p, n, "-1", ready, done)) for p, n in per_partition.items()]
    cpu.start()
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    results = [done.get(timeout=600) for _ in procs]
    used = cpu.stop()
    for p in procs:
        p.join(30)
    total = sum(r[1] for r in results)
    wall = max(r[3] for r in results) - min(r[2] for r in results)
    return total / wall, used


def phase_delay(port: int, count: int) -> list[float]:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Queue()
    per = count // len(PARTITIONS)
    procs = [ctx.Process(target=_consume, args=(port, p, per, "@latest", ready, done)) for p in PARTITIONS]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)

    async def send() -> None:
        from azure.eventhub import EventData
        from azure.eventhub.aio import EventHubProducerClient

        client = EventHubProducerClient.from_connection_string(connection_string(port), eventhub_name="telemetry")
        async with client:
            for p in PARTITIONS:
                await client.get_partition_properties(p)
            for i in range(0, per * len(PARTITIONS), 10):
                partition = PARTITIONS[(i // 10) % len(PARTITIONS)]
                await client.send_batch([EventData(body(i + k)) for k in range(10)], partition_id=partition)
                await asyncio.sleep(0.005)

    asyncio.run(send())
    delays: list[float] = []
    for _ in procs:
        delays.extend(done.get(timeout=120)[4])
    for p in procs:
        p.join(30)
    return delays


# ---------------------------------------------------------------- raw AMQP clients (the emulator's ceiling)


def _raw_connect(port: int) -> RawClient:
    from tests.emulators.eventhubs.rawamqp import RawClient

    raw = RawClient("127.0.0.1", port, timeout=30)
    raw.open(mechanism="PLAIN", response=b"\0RootManageSharedAccessKey\0SAS_KEY_VALUE")
    return raw


def _raw_produce(port: int, batches: int, batch_size: int, partition: str, start: Event, ready: Queue[int],
                 done: Queue[Produced]) -> None:
    """Send ``batches`` pre-encoded batch messages (0x80013700) of ``batch_size`` ~500-byte events."""
    from emulators.eventhubs import frames
    from emulators.eventhubs.message import BATCH_FORMAT

    inner = b"\x00\x53\x75\xb0" + (500).to_bytes(4, "big") + b"r" * 500
    section = b"\x00\x53\x75\xb0" + len(inner).to_bytes(4, "big") + inner
    envelope = section * batch_size
    raw = _raw_connect(port)
    raw.attach_sender(1, f"telemetry/Partitions/{partition}")
    window = 8
    ready.put(os.getpid())
    start.wait()
    began = time.perf_counter()
    in_flight = 0
    for i in range(batches):
        raw.transfer(1, i, envelope, message_format=BATCH_FORMAT)
        in_flight += 1
        while in_flight >= window or (i == batches - 1 and in_flight):
            _, disposition, _ = raw.expect(frames.DISPOSITION)
            assert disposition[4].descriptor == frames.ACCEPTED, disposition
            in_flight -= int(disposition[2]) - int(disposition[1]) + 1
    done.put((began, time.perf_counter(), batches * batch_size))
    raw.close()


def _raw_consume(port: int, partition: str, expect: int, ready: Queue[int], done: Queue[Consumed]) -> None:
    """Count transfer frames (one per event here) from the start of ``partition``, granting credit as it goes."""
    import struct

    raw = _raw_connect(port)
    raw.attach_receiver(1, f"telemetry/ConsumerGroups/$Default/Partitions/{partition}")
    credit, window = 0, 5000
    raw.flow(1, delivery_count=0, credit=window)
    ready.put(os.getpid())
    sock = raw.sock
    header = struct.Struct(">IBBH")
    buf = raw.buffer
    got = 0
    first = 0.0
    pos = 0
    while got < expect:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        if not first:
            first = time.perf_counter()
        buf = buf[pos:] + chunk
        pos = 0
        while len(buf) - pos >= 8:
            size, doff = header.unpack_from(buf, pos)[:2]
            if len(buf) - pos < size:
                break
            if size > 8 and buf[pos + doff * 4 + 2] == 0x14:  # a transfer
                got += 1
                credit += 1
            pos += size
        if credit >= window // 2:
            raw.flow(1, delivery_count=got, credit=window)
            credit = 0
    done.put((partition, got, first, time.perf_counter(), []))
    raw.close()


def phase_raw(port: int, events: int, batch: int, cpu: CpuMeter) -> tuple[float, float, float, float]:
    """Raw producers, then raw consumers (one per partition each): (rate in, cpu in, rate out, cpu out)."""
    ctx = mp.get_context("spawn")
    start, ready, done = ctx.Event(), ctx.Queue(), ctx.Queue()
    batches = max(1, events // batch // len(PARTITIONS))
    before = _stored_counts(port)
    procs = [ctx.Process(target=_raw_produce, args=(port, batches, batch, p, start, ready, done)) for p in PARTITIONS]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    cpu.start()
    start.set()
    results = [done.get(timeout=600) for _ in procs]
    cpu_in = cpu.stop()
    for p in procs:
        p.join(30)
    sent = sum(r[2] for r in results)
    rate_in = sent / (max(r[1] for r in results) - min(r[0] for r in results))
    stored = _stored_counts(port)
    assert sum(stored.values()) - sum(before.values()) == sent, (before, stored, sent)
    ready, done = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_raw_consume, args=(port, p, stored[p], ready, done)) for p in PARTITIONS]
    cpu.start()
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    results = [done.get(timeout=600) for _ in procs]
    cpu_out = cpu.stop()
    for p in procs:
        p.join(30)
    total = sum(r[1] for r in results)
    assert total == sum(stored.values()), (total, stored)
    rate_out = total / (max(r[3] for r in results) - min(r[2] for r in results))
    return rate_in, cpu_in / sent, rate_out, cpu_out / total



def raw_delay(port: int, count: int) -> list[float]:
    """Send-to-receive delay through the emulator alone: a raw producer sends one event at a time and a
    raw consumer (credit granted up front) times its arrival."""
    from emulators.eventhubs import frames

    consumer = _raw_connect(port)
    consumer.attach_receiver(1, "telemetry/ConsumerGroups/$Default/Partitions/0",
                             "amqp.annotation.x-opt-offset > '@latest'")
    consumer.flow(1, delivery_count=0, credit=count + 10)
    producer = _raw_connect(port)
    producer.attach_sender(1, "telemetry/Partitions/0")
    producer.expect(frames.FLOW)
    delays = []
    for i in range(count):
        began = time.perf_counter()
        producer.transfer(1, i, b"\x00\x53\x75\xa0\x05hello")
        consumer.expect(frames.TRANSFER)
        delays.append(time.perf_counter() - began)
        producer.expect(frames.DISPOSITION)
    producer.close()
    consumer.close()
    return delays



def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench eventhubs_emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500, help="events per batch (each ~500 bytes)")
    parser.add_argument("--latency-events", type=int, default=2_000)
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the emulator under cProfile and write the stats here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from sluice.launcher import python_module, start

    if args.profile:
        argv_ = [sys.executable, "-m", "cProfile", "-o", str(args.profile), "-m", "emulators.eventhubs",
                 "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING"]
    else:
        argv_ = python_module("emulators.eventhubs", "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING")
    running = start("eventhubs-emulator", argv_, cwd=str(ROOT))
    try:
        cpu = CpuMeter(running.process.pid)
        print(f"emulator on {running.address}; {args.events} events of ~500 bytes, {args.producers} producer "
              f"processes, batches of {args.batch}; {os.cpu_count()} CPUs (shared with the clients)")
        rate_in, cpu_in = phase_in(running.port, args.events, args.producers, args.batch, cpu)
        per_partition = _stored_counts(running.port)  # the measured events plus the producers' warm-ups
        rate_out, cpu_out = phase_out(running.port, per_partition, cpu)
        delays = phase_delay(running.port, args.latency_events)
        raw_in, raw_cpu_in, raw_out, raw_cpu_out = phase_raw(running.port, args.events, args.batch, cpu)
        raw_delays = raw_delay(running.port, 1000)
    finally:
        running.stop(sig=2)
    total = sum(per_partition.values())
    print(f"in : {rate_in:10,.0f} events/s  ({rate_in / TARGET:.2f}x the {TARGET:,} events/s target); "
          f"emulator CPU {cpu_in / args.events * 1e6:.1f} us/event -> ~{args.events / cpu_in:,.0f} events/s "
          "per emulator core")
    print(f"out: {rate_out:10,.0f} events/s  ({rate_out / TARGET:.2f}x the target); "
          f"emulator CPU {cpu_out / total * 1e6:.1f} us/event -> ~{total / cpu_out:,.0f} events/s per emulator core")
    if delays:
        print(f"send-to-receive delay over {len(delays)} events: p50 {percentile(delays, 0.5) * 1000:.1f} ms, "
              f"p99 {percentile(delays, 0.99) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms "
              f"(mean {statistics.fmean(delays) * 1000:.1f} ms)")
    print(f"raw AMQP clients (no SDK; one producer and one consumer process per partition): "
          f"in {raw_in:,.0f} events/s ({raw_in / TARGET:.2f}x the target, emulator {raw_cpu_in * 1e6:.1f} us/event), "
          f"out {raw_out:,.0f} events/s ({raw_out / TARGET:.2f}x, emulator {raw_cpu_out * 1e6:.1f} us/event)")
    print(f"raw send-to-receive delay (emulator only) over {len(raw_delays)} events: "
          f"p50 {percentile(raw_delays, 0.5) * 1000:.2f} ms, p99 {percentile(raw_delays, 0.99) * 1000:.2f} ms")
    print("baseline: none on this machine (Microsoft's emulator needs Docker); ratios are against the target")
    return 0


def _stored_counts(port: int) -> dict[str, int]:
    from azure.eventhub import EventHubProducerClient

    with EventHubProducerClient.from_connection_string(connection_string(port), eventhub_name="telemetry") as client:
        return {p: client.get_partition_properties(p)["last_enqueued_sequence_number"] + 1 for p in PARTITIONS}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
