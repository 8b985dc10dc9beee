"""``python -m sluice deadletter list|replay`` against Azurite and the Cassandra emulator: letters written by the
registered ingest function itself, and a blob beside them that is no readable dead letter."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from emulators.cassandra.faults import clear_faults, inject_faults
from shared import bootstrap
from shared.adapters.blob_deadletter import BlobDeadLetteredBatches, BlobDeadLetterSink, DeadLetter, hub_tag
from shared.domain.events import EventMetadata, Limits, Rejected, parse_records
from shared.ports.ingest import RejectedLettersFailed
from sluice.__main__ import main
from sluice.launcher import Running
from tests.integration.test_ingest import (  # noqa: F401 (fixture)
    NOW,
    Hub,
    dead_letters,
    event,
    ingest,
    ingest_storage,
)

pytestmark = pytest.mark.timeout(120)

UNREADABLE = "rejected/2000/01/01/p0/7-body.json"  # listed before today's letters


@pytest.mark.parametrize("action", ["list", "replay"])
def test_an_unreadable_letter_is_named_skipped_and_the_others_still_handled(
    ingest: Callable[..., None], azurite_connection_string: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """A dead letter that cannot be read (a truncated upload, a blob someone else put in the container) is named
    on stderr and left where it is; the letters after it are still listed or replayed, and the command exits 1.
    (One JSONDecodeError used to end ``list`` and ``replay`` with a traceback naming no blob, so no letter after it
    was ever replayed.)"""
    ingest(Hub("0").batch(event("dev-1"), b"{not json"))  # a real rejected letter, rejected/<today>/p0/2-0.json
    container = BlobServiceClient.from_connection_string(azurite_connection_string).get_container_client(
        ingest.container)  # type: ignore[attr-defined]
    [real] = [b.name for b in container.list_blobs()]
    container.upload_blob(UNREADABLE, b'{"kind": "rejected", "reason": "trunc', overwrite=True)

    code = main(["deadletter", action, "--kind", "rejected"])

    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert UNREADABLE in captured.err and "JSONDecodeError" in captured.err
    if action == "list":
        assert real in captured.out and "1 dead letter, 1 unreadable" in captured.out
    else:  # the real letter went through ingest again (still not JSON: kept, with its reason)
        assert "replayed 0, still invalid 1, store failing 0, unreadable 1" in captured.out
    assert sorted(b.name for b in container.list_blobs()) == sorted([real, UNREADABLE])


def test_an_array_bodys_bad_elements_are_one_letter_and_older_per_element_letters_still_replay(
    ingest: Callable[..., None], azurite_connection_string: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """The bad elements of one array body are one letter (<sequence>-elements.json): the body once, every bad
    element named by index ranges per reason, the valid element stored. A letter of the older per-element shape
    (<sequence>-<index>.json, the whole body in each) is still read and replayed; still invalid, it gives way to
    its body's one letter."""
    import base64
    import json

    good = event("dev-1")
    body = [1, good, 1, 1, {"device_id": "dev-2"}]
    ingest(Hub("0").batch(body))
    container = BlobServiceClient.from_connection_string(azurite_connection_string).get_container_client(
        ingest.container)  # type: ignore[attr-defined]
    [name] = [b.name for b in container.list_blobs()]
    assert name.endswith("/p0/1-elements.json")
    letter = json.loads(container.download_blob(name).readall())
    assert json.loads(base64.b64decode(letter["original_base64"])) == body and letter["elements_invalid"] == 4
    assert (letter["elements"][0]["problem"], letter["elements"][0]["indexes"]) == (
        "is a JSON number, not an object", [[0, 0], [2, 3]])
    assert letter["elements"][1]["indexes"] == [[4, 4]] and "event_id" in letter["elements"][1]["problem"]

    older = name.replace("1-elements.json", "1-2.json")  # as an earlier release wrote element 2 of that body
    container.upload_blob(older, json.dumps({
        "kind": "rejected", "reason": "element 2 is a JSON number, not an object", "event_id": None, "index": 2,
        "eventhub": letter["eventhub"], "dead_lettered_at": letter["dead_lettered_at"],
        "original_base64": letter["original_base64"]}).encode())
    container.delete_blob(name)
    assert main(["deadletter", "replay", "--kind", "rejected"]) == 0
    out = capsys.readouterr().out
    assert "replayed 1, still invalid 0" in out and "4 items re-dead-lettered as rejected" in out
    assert sorted(b.name for b in container.list_blobs()) == sorted([name, "replayed/" + older])


def test_a_batch_letter_with_an_item_still_invalid_counts_once_as_replayed(
    ingest: Callable[..., None], azurite_connection_string: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole-batch letter whose record still holds an invalid element is stored and moves under ``replayed/``;
    the invalid element gets a rejected letter of its own. The summary counts the batch letter once, as replayed,
    and the item on its own line, so the letter figures add up to the letters there were and "still invalid"
    names only letters that are still where they were."""
    import json

    body = [event("dev-1"), 1]  # a valid element and an invalid one, in one record of a dead-lettered batch
    meta = EventMetadata(partition_id="0", offset="1000", sequence_number=1, enqueued_time=NOW, partition_key=None)
    bootstrap.dead_letter_sink().put_batch([(json.dumps(body).encode(), meta)], "event store unavailable: test")
    container = BlobServiceClient.from_connection_string(azurite_connection_string).get_container_client(
        ingest.container)  # type: ignore[attr-defined]
    [letter] = [b.name for b in container.list_blobs()]
    assert letter.startswith("batches/")

    code = main(["deadletter", "replay", "--kind", "batch"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "replayed 1, still invalid 0, store failing 0, unreadable 0" in out, out
    assert "1 item re-dead-lettered as rejected" in out, out
    names = sorted(b.name for b in container.list_blobs())
    assert "replayed/" + letter in names and letter not in names
    assert [name for name in names if name.startswith("rejected/")] != []


def test_replaying_a_still_invalid_array_letter_does_not_overwrite_a_later_correction(
    ingest: Callable[..., None], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """An array body with a valid and an invalid element: the valid element is stored at once, the body goes to
    ``rejected/.../<seq>-elements.json``. The replay used to run the *whole* body through ingest again, so the
    valid element, stored long ago, was upserted once more: if its event id was corrected meanwhile (docs/events.md:
    a correction is stored as the later copy), the stale copy won again in events_by_id, and as the letter stays
    still invalid, on every replay run. A replay runs only the elements the letter names as bad."""
    hub = Hub("0")
    good = event("dev-replay", severity="warning")
    ingest(hub.batch([good, 1]))  # element 0 stored, element 1 dead-lettered with the body
    ingest(hub.batch({**good, "severity": "critical"}))  # the correction, in a later batch

    for _ in range(2):  # still invalid, the letter stays: each replay run reads it again
        assert main(["deadletter", "replay", "--kind", "rejected"]) == 0
        assert "replayed 0, still invalid 1" in capsys.readouterr().out

    [row] = bootstrap.cassandra_session().execute(
        f"SELECT severity FROM {ingest.keyspace}.events_by_id WHERE event_id = %s",  # type: ignore[attr-defined]
        [uuid.UUID(good["event_id"])])
    assert row.severity == "critical", "the replay of the old array body overwrote the correction"


def _rejected_letters(run_ingest: Any, storage: str, monkeypatch: pytest.MonkeyPatch, partitions: tuple[str, ...]
                      ) -> tuple[Any, list[str]]:
    """One rejected letter per partition (events over a measurement limit of 0), then the limit raised: the
    runbook's case, every letter valid on replay. The container and the letters' names."""
    monkeypatch.setenv("SLUICE_INGEST_MAX_MEASUREMENTS", "0")
    bootstrap.reset()
    for partition in partitions:
        run_ingest(Hub(partition).batch(event(f"dev-{partition}")))
    container = BlobServiceClient.from_connection_string(storage).get_container_client(run_ingest.container)
    letters = sorted(b.name for b in container.list_blobs())
    assert len(letters) == len(partitions) and all(n.startswith("rejected/") for n in letters), letters
    monkeypatch.delenv("SLUICE_INGEST_MAX_MEASUREMENTS")
    bootstrap.reset()
    return container, letters


def _rewritten(container: Any, name: str) -> bytes:
    """The letter written again under the same name (its record dead-lettered again, with another reason)."""
    letter = json.loads(container.download_blob(name).readall())
    letter["reason"] = "written again while the replay ran"
    newer = json.dumps(letter).encode()
    container.upload_blob(name, newer, overwrite=True)
    return newer


def test_a_replay_beside_another_replay_skips_the_letters_the_other_one_moved(
    ingest: Any, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing stops two ``deadletter replay`` runs at once (two operators following the runbook, a CronJob and a
    person). The second one used to die on the first letter the other one had moved since its listing, with a
    ResourceNotFoundError traceback (exit 1, no summary), and every letter listed after it was neither replayed
    nor reported. A letter gone meanwhile is now skipped and counted, and the run goes on.

    Reproduced deterministically: three rejected letters (events over a measurement limit, then the limit raised,
    the runbook's case); while this run replays the first, "the other run" moves the second with the sink's own
    ``mark_replayed``, exactly what a concurrent replay does."""
    from shared.adapters.blob_deadletter import BlobDeadLetterSink, Move

    container, letters = _rejected_letters(ingest, azurite_connection_string, monkeypatch, ("0", "1", "2"))
    other_run = BlobDeadLetterSink(BlobServiceClient.from_connection_string(azurite_connection_string),
                                   ingest.container)
    real_factory = bootstrap.replay_ingest_service

    class ConcurrentReplay:
        """This run's ingest; the other run replays letters[1] meanwhile and moves it under replayed/."""

        def __init__(self) -> None:
            self.service, self.raced = real_factory(), False

        def handle(self, records: Any, **kwargs: Any) -> Any:
            result = self.service.handle(records, **kwargs)
            if not self.raced:
                self.raced = True
                etag = container.get_blob_client(letters[1]).get_blob_properties().etag
                assert other_run.mark_replayed(letters[1], etag) is Move.MOVED
            return result

    monkeypatch.setattr(bootstrap, "replay_ingest_service", ConcurrentReplay)

    code = main(["deadletter", "replay", "--kind", "rejected"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "replayed 2, still invalid 0, store failing 0, unreadable 0, taken by another run 1, rewritten meanwhile 0" \
        in out, out
    assert sorted(b.name for b in container.list_blobs()) == sorted("replayed/" + name for name in letters)


def test_a_letter_rewritten_after_the_replay_read_it_stays_to_be_replayed(
    ingest: Any, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """``deadletter replay`` reads a letter and replays that version; the move used to download the blob again and
    move whatever version was there then, so a letter rewritten under the same name while its older version was
    being replayed went under ``replayed/`` without its content ever having been replayed (lost). The move is
    conditional on the version the replay read: the newer letter stays under ``rejected/``, counted apart."""
    container, [name] = _rejected_letters(ingest, azurite_connection_string, monkeypatch, ("0",))
    real_factory = bootstrap.replay_ingest_service
    newer: list[bytes] = []

    class RewrittenMeanwhile:
        def __init__(self) -> None:
            self.service = real_factory()

        def handle(self, records: Any, **kwargs: Any) -> Any:
            result = self.service.handle(records, **kwargs)
            newer.append(_rewritten(container, name))  # after the replay read its version, before the move
            return result

    monkeypatch.setattr(bootstrap, "replay_ingest_service", RewrittenMeanwhile)

    code = main(["deadletter", "replay", "--kind", "rejected"])

    out = capsys.readouterr().out
    assert code == 0, out
    remaining = {b.name for b in container.list_blobs()}
    assert name in remaining, f"the rewritten letter, never replayed, was moved away: {sorted(remaining)}; {out}"
    assert container.download_blob(name).readall() == newer[0]
    assert "replayed 0, still invalid 0, store failing 0, unreadable 0, taken by another run 0, " \
           "rewritten meanwhile 1" in out, out


def test_a_letter_kept_because_it_was_rewritten_during_the_move_is_not_counted_as_replayed(
    ingest: Any, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A letter rewritten between the move's copy and its conditional delete is kept (a newer letter, to be
    replayed), but the move used to report it moved: ``deadletter replay`` printed "replayed 1" while the letter was
    still under ``rejected/``. It is counted as rewritten meanwhile, and the counts add up to what is left."""
    container, [name] = _rejected_letters(ingest, azurite_connection_string, monkeypatch, ("0",))
    real_sink = bootstrap.dead_letter_sink

    def sink() -> BlobDeadLetterSink:
        made = real_sink()
        copy = made._container.upload_blob

        def rewritten_during_the_move(blob_name: str, *args: Any, **kwargs: Any) -> Any:
            if blob_name.startswith("replayed/"):
                _rewritten(container, name)  # ingest writes the letter again, after the copy's read
            return copy(blob_name, *args, **kwargs)

        made._container.upload_blob = rewritten_during_the_move  # type: ignore[method-assign]
        return made

    monkeypatch.setattr(bootstrap, "dead_letter_sink", sink)

    main(["deadletter", "replay", "--kind", "rejected"])

    out = capsys.readouterr().out
    pending = [b.name for b in container.list_blobs() if not b.name.startswith("replayed/")]
    assert pending == [name], pending  # kept, as the move logs
    assert "replayed 0, still invalid 0, store failing 0, unreadable 0, taken by another run 0, " \
           "rewritten meanwhile 1" in out, f"a letter still pending under rejected/ is counted as replayed: {out}"


def test_moving_a_letter_another_run_moved_or_rewrote_meanwhile(
    ingest: Any, azurite_connection_string: str  # noqa: F811
) -> None:
    """``mark_replayed`` of a letter already moved by another run is no error: there is nothing left to move
    (``GONE``). Its copy and its delete are conditional on the version replayed: a letter rewritten under the same
    name meanwhile (its record dead-lettered again) is a newer letter, and stays to be replayed (``KEPT``)."""
    from shared.adapters.blob_deadletter import REPLAYED, BlobDeadLetterSink, Move

    ingest(Hub("0").batch(b"{not json"))
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = service.get_container_client(ingest.container)
    [name] = [b.name for b in container.list_blobs()]
    sink = BlobDeadLetterSink(service, ingest.container)
    etag = container.get_blob_client(name).get_blob_properties().etag
    assert sink.mark_replayed(name, etag) is Move.MOVED
    assert sink.mark_replayed(name, etag) is Move.GONE
    assert [b.name for b in container.list_blobs()] == [REPLAYED + name]

    container.upload_blob(name, b'{"kind": "rejected", "old": true}')
    etag = container.get_blob_client(name).get_blob_properties().etag
    newer = b'{"kind": "rejected", "newer": true}'
    copy = sink._container.upload_blob

    def rewritten_meanwhile(*args: Any, **kwargs: Any) -> Any:
        container.upload_blob(name, newer, overwrite=True)  # ingest writes the letter again, after the copy's read
        return copy(*args, **kwargs)

    sink._container.upload_blob = rewritten_meanwhile  # type: ignore[method-assign]
    assert sink.mark_replayed(name, etag) is Move.KEPT
    assert container.download_blob(name).readall() == newer, "the newer letter was deleted"


def _stored_ids(keyspace: str) -> set[str]:
    rows = bootstrap.cassandra_session().execute(f"SELECT event_id FROM {keyspace}.events_by_id")
    return {str(r.event_id) for r in rows}


def _stored_measurements(keyspace: str, event_id: str) -> dict[str, float] | None:
    row = bootstrap.cassandra_session().execute(
        f"SELECT measurements FROM {keyspace}.events_by_id WHERE event_id = %s", [uuid.UUID(event_id)]).one()
    return None if row is None else dict(row.measurements or {})


def test_a_replay_that_meets_a_failing_store_keeps_every_pending_element_of_an_array_letter(
    ingest: Callable[..., None], private_cassandra: Running, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """A rejected letter is rewritten only after the store took what it held as not stored. An array body
    [valid, too many measurements, bad timestamp] is one letter naming elements 1 and 2; the operator raises
    SLUICE_INGEST_MAX_MEASUREMENTS and replays while Cassandra still fails every write: the letter is kept as it
    was ("store failing"), still naming elements 1 and 2, so the next replay, once Cassandra is back, stores
    element 1 and leaves a letter naming element 2 alone. (The letter used to be rewritten before the store write,
    naming only element 2: element 1 was then neither stored nor in any letter.)"""
    monkeypatch.setenv("SLUICE_INGEST_MAX_MEASUREMENTS", "1")
    monkeypatch.setenv("SLUICE_CASSANDRA_OVERLOAD_MAX_RETRIES", "1")
    bootstrap.reset()
    good = event("dev-1")
    fixed_later = event("dev-1", at=NOW - timedelta(seconds=1), measurements={"a": 1.0, "b": 2.0})
    broken = event("dev-1", timestamp="not a time")
    ingest(Hub("0").batch([good, fixed_later, broken]))
    [letter] = dead_letters(ingest_storage(ingest), ingest.container)  # type: ignore[attr-defined]
    assert letter["elements_invalid"] == 2 and _stored_ids(ingest.keyspace) == {good["event_id"]}  # type: ignore[attr-defined]

    monkeypatch.setenv("SLUICE_INGEST_MAX_MEASUREMENTS", "64")  # the fix for element 1
    bootstrap.reset()
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", ratio=1.0,
                  retry_after_ms=1, applies_to="writes")
    try:
        assert main(["deadletter", "replay", "--kind", "rejected"]) == 1  # store failing: the letter is kept
    finally:
        clear_faults(private_cassandra.host, private_cassandra.port)
    [kept] = dead_letters(ingest_storage(ingest), ingest.container)  # type: ignore[attr-defined]
    assert kept["elements_invalid"] == 2, kept["reason"]
    bootstrap.reset()

    assert main(["deadletter", "replay", "--kind", "rejected"]) == 0  # Cassandra is back

    assert fixed_later["event_id"] in _stored_ids(ingest.keyspace)  # type: ignore[attr-defined]
    [still] = dead_letters(ingest_storage(ingest), ingest.container)  # type: ignore[attr-defined]
    assert (still["elements_invalid"], still["index"], still["event_id"]) == (1, 2, broken["event_id"])


def test_replaying_a_batch_letter_leaves_a_later_correction_of_its_events_stored(
    ingest: Callable[..., None], private_cassandra: Running, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Event E is in a batch dead-lettered whole (Cassandra down through every attempt); once Cassandra is back,
    the device's correction E' (same id, later on the hub) is stored. Replaying the batch letter leaves E' in
    events_by_id, as an outage-free run would have (the later copy by enqueued time wins): E is counted as
    superseded, not stored, and the letter moves under replayed/. (The replay used to write E with a newer write
    time, over E'.)"""
    monkeypatch.setenv("SLUICE_CASSANDRA_OVERLOAD_MAX_RETRIES", "1")
    bootstrap.reset()
    hub = Hub("0")
    original = event("dev-1", measurements={"temperature": 21.5})
    correction = {**original, "measurements": {"temperature": 22.0}}
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", ratio=1.0,
                  retry_after_ms=1, applies_to="writes")
    try:
        ingest(hub.batch(original), retry_count=5, max_retry_count=5)  # the last attempt: the batch is lettered
    finally:
        clear_faults(private_cassandra.host, private_cassandra.port)
    assert [d["kind"] for d in dead_letters(ingest_storage(ingest), ingest.container)] == ["batch"]  # type: ignore[attr-defined]
    bootstrap.reset()
    ingest(hub.batch(correction))  # Cassandra is back: the correction, later on the hub, is stored
    capsys.readouterr()

    assert main(["deadletter", "replay", "--kind", "batch"]) == 0

    assert _stored_measurements(ingest.keyspace, original["event_id"]) == {"temperature": 22.0}  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "replayed 1, still invalid 0" in out and "0 items re-dead-lettered as rejected, 1 superseded" in out, out


def test_one_replay_of_two_letters_holding_copies_of_an_event_id_stores_the_later_copy(
    ingest: Callable[..., None], azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Event E (sequence 2) and its correction E' (sequence 10, later on the hub) are both refused for having more
    measurements than SLUICE_INGEST_MAX_MEASUREMENTS. After the limit is raised, one replay of the two letters
    stores E', as ingest would have with the higher limit: letters are replayed in (partition, sequence number)
    order, not by blob name (which puts ``10-body.json`` before ``2-body.json``), and an event whose stored copy
    is a later one is not written over it. (E used to be replayed last and to win by its newer write time.)"""
    monkeypatch.setenv("SLUICE_INGEST_MAX_MEASUREMENTS", "1")
    bootstrap.reset()
    hub = Hub("0")
    original = event("dev-1", measurements={"temperature": 21.5, "pressure": 1.0})
    correction = {**original, "measurements": {"temperature": 22.0, "pressure": 1.0}}
    others = [event("dev-2") for _ in range(8)]
    ingest(hub.batch(event("dev-2"), original, *others[:7], correction))  # sequences 1..10: E is 2, E' is 10
    assert len(dead_letters(ingest_storage(ingest), ingest.container)) == 2  # type: ignore[attr-defined]

    monkeypatch.setenv("SLUICE_INGEST_MAX_MEASUREMENTS", "64")  # the fix
    bootstrap.reset()
    from shared.adapters.blob_deadletter import DeadLetter
    order = [letter.name.rsplit("/", 1)[1] for letter in bootstrap.dead_letter_sink().read("rejected")
             if isinstance(letter, DeadLetter)]
    assert order == ["2-body.json", "10-body.json"]
    assert main(["deadletter", "replay", "--kind", "rejected"]) == 0

    assert _stored_measurements(ingest.keyspace, original["event_id"]) == {"temperature": 22.0, "pressure": 1.0}  # type: ignore[attr-defined]
    assert "replayed 2, still invalid 0" in capsys.readouterr().out


def test_a_body_letter_whose_elements_are_read_on_replay_gives_way_to_its_elements_letter(
    ingest: Callable[..., None], azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    """An array body [good, bad] over SLUICE_INGEST_MAX_BODY_BYTES is refused whole (<seq>-body.json). The operator
    raises the limit and replays: `good` is stored, `bad` gets the body's <seq>-elements.json letter, and the body
    letter moves under replayed/ (counted as replayed), so the record has one letter, holding only what is not
    stored. A later replay runs `bad` alone and leaves the correction the device sent meanwhile for `good` stored.
    (The body letter used to be kept as "still invalid": every later replay ran the whole body again, and the
    record was counted in two letters.)"""
    monkeypatch.setenv("SLUICE_INGEST_MAX_BODY_BYTES", "256")
    bootstrap.reset()
    hub = Hub("0")
    good = event("dev-1", measurements={"temperature": 21.5})
    bad = event("dev-1", timestamp="not a time")
    ingest(hub.batch([good, bad]))
    [letter] = dead_letters(ingest_storage(ingest), ingest.container)  # type: ignore[attr-defined]
    assert "bytes; at most 256" in letter["reason"]
    container = BlobServiceClient.from_connection_string(azurite_connection_string).get_container_client(
        ingest.container)  # type: ignore[attr-defined]
    [body_letter] = [b.name for b in container.list_blobs()]
    assert body_letter.endswith("/p0/1-body.json")

    monkeypatch.setenv("SLUICE_INGEST_MAX_BODY_BYTES", "1048576")  # the fix
    bootstrap.reset()
    capsys.readouterr()
    assert main(["deadletter", "replay", "--kind", "rejected"]) == 0
    out = capsys.readouterr().out
    assert "replayed 1, still invalid 0" in out and "1 item re-dead-lettered as rejected" in out, out
    elements_letter = body_letter.replace("1-body.json", "1-elements.json")
    assert sorted(b.name for b in container.list_blobs()) == sorted([elements_letter, "replayed/" + body_letter])
    assert good["event_id"] in _stored_ids(ingest.keyspace)  # type: ignore[attr-defined]

    ingest(hub.batch({**good, "measurements": {"temperature": 22.0}}))  # the device's correction, stored
    assert main(["deadletter", "replay", "--kind", "rejected"]) == 0  # a later replay
    out = capsys.readouterr().out
    assert "replayed 0, still invalid 1" in out and "0 superseded" in out, out
    assert _stored_measurements(ingest.keyspace, good["event_id"]) == {"temperature": 22.0}  # type: ignore[attr-defined]
    assert sorted(b.name for b in container.list_blobs()) == sorted([elements_letter, "replayed/" + body_letter])


def test_replaying_a_still_invalid_letter_without_enqueued_time_keeps_it_one_letter(
        ingest: Callable[..., None], azurite_connection_string: str,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """A record without Event Hubs metadata is lettered under the day of writing, as
    ``rejected/<day>/punknown/sha256-<hash>-body.json``. Replayed on a later day while still invalid, it is lettered
    again under its letter's day, the same name: it used to go under the day of the replay, a second name, the old
    letter kept as well, one more copy of the record per day replayed on."""
    body = b"{still not json"
    name = f"rejected/2000/01/01/punknown/sha256-{hashlib.sha256(body).hexdigest()[:32]}-body.json"
    letter = {
        "kind": "rejected", "reason": "not JSON", "event_id": None, "index": None,
        "eventhub": EventMetadata().as_dict(), "dead_lettered_at": "2000-01-01T00:00:00+00:00",
        "original_base64": base64.b64encode(body).decode(), "original_bytes": len(body),
        "original_text": body.decode(),
    }
    container = BlobServiceClient.from_connection_string(azurite_connection_string).get_container_client(
        ingest.container)  # type: ignore[attr-defined]
    container.create_container()
    container.upload_blob(name, json.dumps(letter).encode())

    for _ in range(2):
        code = main(["deadletter", "replay", "--kind", "rejected"])
        out = capsys.readouterr().out
        assert code == 0 and "replayed 0, still invalid 1" in out, out
    assert [b.name for b in container.list_blobs()] == [name]
    assert json.loads(container.download_blob(name).readall())["original_base64"] == letter["original_base64"]


OLD_HUB, NEW_HUB = "ns.servicebus.windows.net/telemetry", "ns.servicebus.windows.net/telemetry-v2"


def _two_hubs(service: BlobServiceClient, container: str) -> tuple[BlobDeadLetterSink, BlobDeadLetterSink]:
    return BlobDeadLetterSink(service, container, hub=OLD_HUB), BlobDeadLetterSink(service, container, hub=NEW_HUB)


def _rejected(seq: int, body: bytes) -> Rejected:
    meta = EventMetadata("0", str(seq * 10), seq, datetime(2026, 12, 7, 10, tzinfo=UTC), "dev-1")
    return Rejected("body is not valid JSON", body, meta)


def test_rejected_letters_of_two_hubs_with_the_same_sequence_number_do_not_overwrite_each_other(
        azurite_connection_string: str) -> None:
    """Every hub numbers its records from 0, and the names held no hub: ingest moved to a new hub (docs/operations.md)
    lettered its seq 5 over the old hub's seq 5 letter of the same day, and the old hub's original bytes were gone.
    The same letter written twice (a redelivery) is still one letter."""
    old, new = _two_hubs(BlobServiceClient.from_connection_string(azurite_connection_string),
                         f"dl-{uuid.uuid4().hex[:12]}")
    old.put_rejected([_rejected(5, b"old hub bytes")])
    new.put_rejected([_rejected(5, b"new hub bytes")])
    new.put_rejected([_rejected(5, b"new hub bytes")])
    letters = [letter for letter in old.read("rejected") if isinstance(letter, DeadLetter)]
    assert sorted(r.body for letter in letters for r in letter.records) == [b"new hub bytes", b"old hub bytes"]
    assert {letter.name.rsplit("/", 1)[1] for letter in letters} == {
        f"5-{hub_tag(OLD_HUB)}-body.json", f"5-{hub_tag(NEW_HUB)}-body.json"}


def test_batch_letters_of_two_hubs_with_the_same_range_do_not_overwrite_each_other(
        azurite_connection_string: str) -> None:
    """As rejected letters: a batch letter's name holds its hub, and the audit of each hub counts only its own."""
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = f"dl-{uuid.uuid4().hex[:12]}"
    old, new = _two_hubs(service, container)
    meta = [EventMetadata("0", None, s, datetime(2026, 12, 7, 10, tzinfo=UTC), "d") for s in (1, 2)]
    old.put_batch([(b"a1", meta[0]), (b"a2", meta[1])], "event store unavailable: x")
    new.put_batch([(b"b1", meta[0]), (b"b2", meta[1])], "event store unavailable: x")
    new.put_batch([(b"b1", meta[0]), (b"b2", meta[1])], "event store unavailable: x")  # redelivered: one letter
    letters = [letter for letter in old.read("batch") if isinstance(letter, DeadLetter)]
    assert sorted(r.body for letter in letters for r in letter.records) == [b"a1", b"a2", b"b1", b"b2"]
    assert len(letters) == 2
    for hub in (OLD_HUB, NEW_HUB):
        assert [first_last[:2] for first_last in BlobDeadLetteredBatches(service, container, hub=hub).batches("0")] \
            == [(1, 2)], hub


WHEN = datetime(2026, 12, 7, 10, tzinfo=UTC)


def _names(service: BlobServiceClient, container: str) -> list[str]:
    return sorted(b.name for b in service.get_container_client(container).list_blobs())


def _replay_still_invalid(sink: BlobDeadLetterSink) -> None:
    """What ``deadletter replay`` does with a rejected letter whose body is still invalid: ingest parses the
    letter's records (lettered day and hub from its name) and letters what is refused again; the letter is kept."""
    for letter in sink.read("rejected"):
        assert isinstance(letter, DeadLetter), letter
        parsed = parse_records(letter.records, limits=Limits(), now=WHEN)
        assert parsed.errs and not parsed.oks
        sink.put_rejected(parsed.errs)


@pytest.mark.parametrize("hub", ["ns.servicebus.windows.net/2024-orders", "ns.servicebus.windows.net/7-telemetry"])
def test_a_still_invalid_letter_of_a_hub_whose_name_starts_with_digits_stays_one_letter(
        azurite_connection_string: str, hub: str) -> None:
    """Event Hub names may start with digits ("2024-orders"). Its tag "2024-orders.<hex>" makes the name
    "5-2024-orders.<hex>-body.json", which was read back as sequence "5-2024" and tag "orders.<hex>": a replay
    of the still-invalid letter wrote "5-orders.<hex>-body.json" beside the kept original, two letters of one
    record (listed, replayed and counted twice), against "a still-invalid letter stays one letter"."""
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = f"dl-{uuid.uuid4().hex[:12]}"
    sink = BlobDeadLetterSink(service, container, hub=hub)
    sink.put_rejected([Rejected("body is not valid JSON", b"{not json", EventMetadata("0", "50", 5, WHEN, "d"))])
    before = _names(service, container)
    assert before == [f"rejected/2026/12/07/p0/5-{hub_tag(hub)}-body.json"]

    _replay_still_invalid(sink)

    assert _names(service, container) == before


def test_a_still_invalid_tagged_letter_without_a_sequence_number_stays_one_letter(
        azurite_connection_string: str) -> None:
    """A record without a sequence number is lettered as "sha256-<hex>-<tag>-body.json"; the name's tag was read
    for digit positions only, so the letter read back with no tag ("") and the replay re-lettered it untagged,
    "sha256-<hex>-body.json", beside the kept tagged one: one record, two letters after every replay."""
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = f"dl-{uuid.uuid4().hex[:12]}"
    sink = BlobDeadLetterSink(service, container, hub="ns.servicebus.windows.net/telemetry")
    sink.put_rejected([Rejected("body is not valid JSON", b"{not json", EventMetadata("0", None, None, WHEN, "d"))])
    before = _names(service, container)
    assert len(before) == 1 and before[0].startswith("rejected/2026/12/07/p0/sha256-")

    _replay_still_invalid(sink)

    assert _names(service, container) == before


def test_a_still_invalid_letter_rewritten_by_another_hubs_replay_keeps_naming_its_own_hub(
        azurite_connection_string: str) -> None:
    """A replay run where ingest reads another hub (ingest moved, the case the hub tag exists for) rewrites a
    still-invalid letter under its own name, and with the hub its metadata named: its name and its metadata name one
    hub. An untagged older letter keeps what it named, a hub or none. (The rewrite used to name the replaying hub in
    the metadata, ``eventhub=<new hub>`` under the old hub's tag.)"""
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = f"dl-{uuid.uuid4().hex[:12]}"
    old, new = _two_hubs(service, container)
    old.put_rejected([_rejected(5, b"{not json")])
    untagged = BlobDeadLetterSink(service, container)  # letters from before names (and metadata) held the hub
    untagged.put_rejected([_rejected(6, b"{not json"), _rejected(7, b"{not json")])
    day = "rejected/2026/12/07/p0"
    service.get_container_client(container).get_blob_client(f"{day}/7-body.json").set_blob_metadata(
        {"eventhub": OLD_HUB})  # an untagged letter of a sink given its hub
    before = _names(service, container)

    _replay_still_invalid(new)

    blobs = service.get_container_client(container).list_blobs(include=["metadata"])
    assert {blob.name: dict(blob.metadata or {}) for blob in blobs} == {
        f"{day}/5-{hub_tag(OLD_HUB)}-body.json": {"eventhub": OLD_HUB}, f"{day}/6-body.json": {},
        f"{day}/7-body.json": {"eventhub": OLD_HUB}}
    assert _names(service, container) == before


def test_the_dead_letter_deadline_bounds_a_whole_call_not_each_letter(azurite_connection_string: str) -> None:
    """SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS bounded each letter: a storage account that answers, slowly,
    took a deadline's worth per letter, so a batch of 256 bad events ran far past host.json's functionTimeout
    and the invocation ended without the clear "could not write dead letter". The deadline is the call's: a letter
    that could end past it is not started, and the error names the letters written before it."""
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = f"dl-{uuid.uuid4().hex[:12]}"
    # each request may take 0.45 s (as the settings compute it), so after 0.05 s of a 0.5 s deadline no letter fits
    sink = BlobDeadLetterSink(service, container, hub=OLD_HUB, deadline=0.5, longest_request=0.45)
    items = [_rejected(seq, b"{not json") for seq in range(1, 200)]
    with pytest.raises(RejectedLettersFailed, match="SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS") as failed:
        sink.put_rejected(items)
    written = failed.value.written
    assert 1 <= len(written) < len(items), len(written)
    assert len(_names(service, container)) == len(written), "the letters named as written are the ones stored"

