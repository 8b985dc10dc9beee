"""The emulator as a process: command line, signals, configuration errors, --data-dir and retention."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from azure.eventhub import EventData, EventHubProducerClient

from emulators.eventhubs import config, storage
from emulators.eventhubs.broker import partition_for_key
from emulators.eventhubs.errors import ConfigError, StorageError
from emulators.eventhubs.storage import PartitionLog
from sluice.launcher import LaunchError
from tests.emulators.eventhubs.helpers import bodies, producer, receive
from tests.fixtures.eventhubs import (
    ROOT,
    IsolatedHub,
    eventhubs_connection_string,
    start_eventhubs_emulator,
    write_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_prints_the_address_and_exits_cleanly_on_a_signal(sig: int) -> None:
    running = start_eventhubs_emulator()
    try:
        assert running.host == "127.0.0.1" and running.port > 0
        assert f"listening on 127.0.0.1:{running.port}" in running.output()
        # the connection string as users write it, with EntityPath instead of an explicit hub name
        text = eventhubs_connection_string(running, "telemetry")
        with EventHubProducerClient.from_connection_string(text, retry_total=0) as client:
            client.send_batch([EventData("alive")], partition_id="0")
            assert client.get_eventhub_properties()["eventhub_name"] == "telemetry"
    finally:
        code = running.stop(sig=sig, stop_timeout=10)
    assert code == 0, running.output()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emulators.eventhubs", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, check=False)


def test_bad_configuration_exits_2_naming_the_problem(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.json", ["ok-hub"], partitions=40)
    result = run_cli("--config", str(bad), "--port", "0")
    assert result.returncode == 2
    assert "ok-hub" in result.stderr and "PartitionCount" in result.stderr
    result = run_cli("--config", str(tmp_path / "missing.json"), "--port", "0")
    assert result.returncode == 2 and "missing.json" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("retention", ["inf", "nan"])
def test_non_finite_retention_is_a_configuration_error(tmp_path: Path, retention: str) -> None:
    """``float()`` accepts "inf" and "nan" and ``nan <= 0`` is false: such a retention used to pass validation and
    crash start-up with a traceback (exit 1). It is refused at load, naming the hub and the setting."""
    cfg = tmp_path / "Config.json"
    cfg.write_text(json.dumps({"UserConfig": {"NamespaceConfig": [{"Type": "EventHub", "Name": "ns", "Entities": [
        {"Name": "eh1", "PartitionCount": "2", "MessageRetentionInHours": retention}]}]}}), encoding="utf-8")
    result = run_cli("--config", str(cfg), "--host", "127.0.0.1", "--port", "0")
    assert result.returncode == 2, result.stderr[-800:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert "eh1" in last_line and "MessageRetentionInHours" in last_line, last_line


def test_a_data_dir_that_cannot_be_used_exits_2_naming_it(tmp_path: Path) -> None:
    """A ``--data-dir`` that is a file, or a partition log that is a directory, used to be reported as "cannot
    listen on 127.0.0.1:0: Not a directory" (one ``except OSError`` around everything), blaming the port."""
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("I am a file")
    result = run_cli("--host", "127.0.0.1", "--port", "0", "--data-dir", str(not_a_directory))
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert "cannot listen" not in last_line and f"--data-dir {not_a_directory}" in last_line, last_line

    log_is_a_directory = tmp_path / "other" / "telemetry" / "0.log"
    log_is_a_directory.mkdir(parents=True)
    result = run_cli("--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "other"))
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert "cannot listen" not in last_line and "--data-dir" in last_line, last_line
    assert str(log_is_a_directory) in last_line, last_line


def test_a_damaged_record_before_the_end_of_a_log_stops_start_up_and_keeps_the_file(tmp_path: Path) -> None:
    """One damaged record header in the middle of a partition log, with whole records after it, used to be taken
    for a torn tail: the file was rewritten without everything after it, destroying acknowledged events and
    handing their sequence numbers and offsets out again. Start-up now stops, naming the file and the byte."""
    cfg = write_config(tmp_path / "Config.json", ["durable"])
    data = tmp_path / "data"
    running = start_eventhubs_emulator("--data-dir", str(data), config=cfg)
    try:
        with producer(IsolatedHub(running, "durable")) as client:
            for i in range(4):
                client.send_batch([EventData(f"event-{i}")], partition_id="0")
    finally:
        assert running.stop() == 0
    log = data / "durable" / "0.log"
    original = log.read_bytes()
    second = original.index(b"EHR1", 1)
    damaged = original[:second] + b"XHR1" + original[second + 4:]  # one damaged byte in record 2's header
    log.write_bytes(damaged)
    try:
        running = start_eventhubs_emulator("--data-dir", str(data), config=cfg)
    except LaunchError as exc:
        said = str(exc)
    else:
        running.stop()
        pytest.fail(f"the emulator started on a damaged log: {running.output()[-500:]}")
    assert log.read_bytes() == damaged
    assert f"{log} is damaged at byte {second} of {len(damaged)}" in said, said[-500:]


def _log_of_three(path: Path) -> tuple[PartitionLog, bytes, list[int]]:
    """A partition log with three records; returns it, its bytes and where each record starts."""
    log = PartitionLog(path)
    offset = 100
    for sequence, payload in enumerate([b"first", b"second!", b"third"], start=7):
        log.append(sequence, offset, 1_000 + sequence, 2, payload)
        offset += len(payload)
    log.close()
    data = path.read_bytes()
    starts = [0, data.index(b"EHR1", 1), data.index(b"EHR1", data.index(b"EHR1", 1) + 1)]
    return log, data, starts


def test_a_torn_tail_is_cut_but_damage_before_the_end_is_refused(tmp_path: Path) -> None:
    """Only what a crash in the middle of an append leaves is cut: a prefix of the last record. Anything else
    that does not parse raises StorageError naming the file and the byte, and the file is left as it is."""
    log, data, starts = _log_of_three(tmp_path / "0.log")
    for cut in (starts[2] + 2, starts[2] + 20, len(data) - 1):  # in the last header, in the last payload
        log.path.write_bytes(data[:cut])
        records, last = log.load(keep_after_ms=0)
        assert [r[4] for r in records] == [b"first", b"second!"] and last == records[-1]
        assert log.path.read_bytes() == data[: starts[2]]
    log.path.write_bytes(data)
    assert [r[0] for r in log.load(keep_after_ms=0)[0]] == [7, 8, 9]

    def patched(pos: int, new: bytes) -> bytes:
        return data[:pos] + new + data[pos + len(new):]

    damages = {
        "bad magic": (starts[1], patched(starts[1], b"XHR1")),
        "runs past the end, yet sequence 9 starts at byte": (starts[1], patched(starts[1] + 4, b"\x00\x10\x00\x00")),
        "sequence 10 at offset": (starts[2], patched(starts[2] + 8, (10).to_bytes(8, "big"))),
        "not a record header": (len(data), data + b"\x00\x00"),
    }
    for reason, (pos, damaged) in damages.items():
        log.path.write_bytes(damaged)
        with pytest.raises(StorageError, match=reason) as raised:
            log.load(keep_after_ms=0)
        assert f"{log.path} is damaged at byte {pos} of {len(damaged)}" in str(raised.value)
        assert log.path.read_bytes() == damaged, reason


def test_config_validation_names_the_offending_entry() -> None:
    def doc(entities: list[dict[str, object]]) -> dict[str, object]:
        return {"UserConfig": {"NamespaceConfig": [{"Type": "EventHub", "Name": "ns", "Entities": entities}]}}

    parsed = config.parse(doc([{"Name": "eh1", "PartitionCount": "2", "ConsumerGroups": [{"Name": "cg1"}]},
                               {"Name": "eh2", "PartitionCount": 3, "MessageRetentionInHours": 0.5}]))
    assert parsed.hubs["eh1"].consumer_groups == ("$Default", "cg1")
    assert parsed.hubs["eh1"].partition_ids == ["0", "1"]
    assert parsed.hubs["eh2"].retention_hours == 0.5
    assert config.load(ROOT / "emulators" / "eventhubs" / "config.json").hubs["telemetry"].consumer_groups == (
        "$Default", "sluice")
    bad = {
        "eh1': PartitionCount must be a number, got 'many'": [{"Name": "eh1", "PartitionCount": "many"}],
        "from 1 to 32": [{"Name": "eh1", "PartitionCount": 0}],
        "declared twice": [{"Name": "eh1", "PartitionCount": 1}, {"Name": "EH1", "PartitionCount": 1}],
        "consumer group 'cg' is declared twice": [
            {"Name": "eh1", "PartitionCount": 1, "ConsumerGroups": [{"Name": "cg"}, {"Name": "cg"}]}],
        "at most 10": [{"Name": f"eh{i}", "PartitionCount": 1} for i in range(11)],
        "at most 20": [{"Name": "eh1", "PartitionCount": 1, "ConsumerGroups": [{"Name": f"g{i}"} for i in range(20)]}],
        "MessageRetentionInHours must be positive": [{"Name": "eh1", "PartitionCount": 1,
                                                      "MessageRetentionInHours": 0}],
        "invalid name": [{"Name": "bad/name", "PartitionCount": 1}],
        "eh1': MessageRetentionInHours must be a finite number, got 'inf'": [
            {"Name": "eh1", "PartitionCount": 1, "MessageRetentionInHours": "inf"}],
        "eh1': MessageRetentionInHours must be a finite number, got nan": [
            {"Name": "eh1", "PartitionCount": 1, "MessageRetentionInHours": float("nan")}],  # JSON's NaN
        "eh1': PartitionCount must be a finite number, got '-Infinity'": [
            {"Name": "eh1", "PartitionCount": "-Infinity"}],
        "MessageRetentionInHours must be positive and at most": [
            {"Name": "eh1", "PartitionCount": 1, "MessageRetentionInHours": 1e306}],
    }
    for expected, entities in bad.items():
        with pytest.raises(ConfigError, match=expected):
            config.parse(doc(entities))
    with pytest.raises(ConfigError, match="exactly one namespace"):
        config.parse({"UserConfig": {"NamespaceConfig": []}})


def test_data_dir_and_retention_across_a_restart(tmp_path: Path) -> None:
    """Hub ``durable`` (1 hour retention) keeps events, numbers and offsets across a kill and restart; hub
    ``short`` (3 seconds, from the config) drops its events but never reuses a sequence number.

    Three seconds is short enough to wait out, and long enough for a loaded machine to open a consumer and read
    an event sent to ``short`` before it expires; with 1 second that was a race."""
    retention = 3.0
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"UserConfig": {"NamespaceConfig": [{"Type": "EventHub", "Name": "ns", "Entities": [
        {"Name": "durable", "PartitionCount": "4"},
        {"Name": "short", "PartitionCount": "2", "MessageRetentionInHours": retention / 3600}]}]}}))
    data = tmp_path / "data"
    running = start_eventhubs_emulator("--data-dir", str(data), config=cfg)
    try:
        durable, short = IsolatedHub(running, "durable"), IsolatedHub(running, "short")
        with producer(short) as client:
            client.send_batch([EventData("old-0"), EventData("old-1")], partition_id="0")
            sent_at = time.monotonic()
            assert client.get_partition_properties("0")["beginning_sequence_number"] == 0
        with producer(durable) as client:
            client.send_batch([EventData(f"a{i}") for i in range(5)], partition_id="1")
            client.send_batch([EventData(f"k{i}") for i in range(3)], partition_key="dev-1")
            props_before = client.get_partition_properties("1")
        before = receive(durable, "1", count=5)
        time.sleep(max(0.0, sent_at + retention + 1.3 - time.monotonic()))  # plus the once-a-second sweep
        with producer(short) as client:
            props = client.get_partition_properties("0")
            assert props["is_empty"] is True
            # as Azure reports an empty partition: beginning equal to last (KEDA's count relies on it)
            assert props["beginning_sequence_number"] == 1 and props["last_enqueued_sequence_number"] == 1
            client.send_batch([EventData("new")], partition_id="0")
            new_sent_at = time.monotonic()
        events = receive(short, "0", count=1, settle=0.3)
        assert bodies(events) == ["new"] and events[0].sequence_number == 2
    finally:
        running.kill()  # no clean shutdown: what was acknowledged must already be on disk
    # "new" expires too; the numbering must survive the restart anyway.
    time.sleep(max(0.0, new_sent_at + retention + 0.2 - time.monotonic()))
    running = start_eventhubs_emulator("--data-dir", str(data), config=cfg)
    try:
        durable, short = IsolatedHub(running, "durable"), IsolatedHub(running, "short")
        after = receive(durable, "1", count=5)
        assert bodies(after) == bodies(before)
        assert [(e.sequence_number, e.offset, e.enqueued_time) for e in after] == [
            (e.sequence_number, e.offset, e.enqueued_time) for e in before]
        with producer(durable) as client:
            assert client.get_partition_properties("1") == props_before
            client.send_batch([EventData("b0")], partition_id="1")
            client.send_batch([EventData("k3")], partition_key="dev-1")  # the key still maps to the same partition
        keyed = str(partition_for_key("dev-1", 4))
        assert keyed != "1"
        more = receive(durable, "1", count=1, starting_position=before[-1].offset)
        assert bodies(more) == ["b0"] and more[0].sequence_number == 5
        assert int(more[0].offset) > int(before[-1].offset)
        assert bodies(receive(durable, keyed, count=4, timeout=10)) == ["k0", "k1", "k2", "k3"]
        with producer(short) as client:
            props = client.get_partition_properties("0")
            assert props["is_empty"] is True and props["last_enqueued_sequence_number"] == 2
            client.send_batch([EventData("newer")], partition_id="0")
        assert [e.sequence_number for e in receive(short, "0", count=1)] == [3]
    finally:
        assert running.stop() == 0


def test_repo_config_is_valid_json_with_the_sluice_consumer_group() -> None:
    document = json.loads((ROOT / "emulators" / "eventhubs" / "config.json").read_text())
    entity = document["UserConfig"]["NamespaceConfig"][0]["Entities"][0]
    assert entity["Name"] == "telemetry" and entity["PartitionCount"] == "4"
    assert {"Name": "sluice"} in entity["ConsumerGroups"]


def test_a_torn_record_whose_payload_holds_a_header_shaped_copy_is_still_a_torn_tail(tmp_path: Path) -> None:
    """A kill mid-write of the last record's payload was refused as damage when the written part of the payload (an
    event body the sender chose) held bytes shaped like the next record's header: the emulator would not start on a
    log a plain kill left. A later record must also sit where its own offset places it."""
    path = tmp_path / "hub" / "0.log"
    log = PartitionLog(path)
    first = b"first event"
    # the second event's body carries a copy of an event-log record numbered 2 (e.g. a log file being forwarded)
    body = b"forwarded log: " + storage._encode(2, 999, 1_700_000_000_000, 0, b"x" * 64)
    log.append(0, 0, 1_700_000_000_000, 0, first)
    log.append(1, len(first), 1_700_000_000_001, 0, body)
    log.flush()
    log.close()
    whole = path.read_bytes()
    # killed while the second record's payload was being written: its header and part of its body are on disk
    path.write_bytes(whole[: len(whole) - 10])
    records, last = PartitionLog(path).load(0)
    assert [r[0] for r in records] == [0]
    assert last is not None and last[4] == first
