"""``deadletter``: list dead letters, and replay them into the pipeline once the cause is fixed.

A whole batch is dead-lettered when the event store stayed unavailable through every retry; replaying it once
Cassandra is back stores it (writes are idempotent, so events that did get stored are not duplicated). A
rejected item is replayed the same way after a fix (for example raised limits); if it is still invalid it stays
where it is, with its reason (a letter of the older per-element shape, or of a body refused whole of which now only
some elements are invalid, is then replaced by the one ``<seq>-elements.json`` letter of its body, which the
replay wrote). Of an array body, only the elements its letter holds as not stored run again: the
valid ones were stored at ingest, and storing them again would undo a later correction of their ids. Each other
dead letter moves under ``replayed/`` once the store took it, a batch letter too when some of its items are
still invalid: those now have rejected letters of their own. The summary counts each letter once (replayed,
still invalid, store failing, unreadable, taken by another run, or rewritten meanwhile: written again under its
name since this run read it, so the newer letter stays, to be replayed) and, on a line of its own, the items the
replay dead-lettered as rejected and the events it did not store because a later copy of their id (enqueued later,
or at the same time later in the partition) is stored: "superseded" (a letter's copy is as old as the letter, and
written now it would win over the correction). Letters are replayed in (partition, sequence number) order, the
order Event Hubs took their records in. A blob that cannot be read as a dead letter is named on stderr and left where
it is; the others are listed or replayed, and the exit status is 1. Nothing stops two replays at once: a letter
the other one moved since the listing is skipped and counted as "taken by another run", and the run goes on. A
replay records nothing in the audit ledger (``bootstrap.replay_ingest_service``): the letters' records are
accounted for there already, and a replayed record's own run would overwrite its batch's.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("deadletter", help="list or replay dead letters")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext in (("list", "show dead letters not yet replayed"),
                           ("replay", "run dead letters through ingest again; move the ones that succeed")):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("--kind", choices=["batch", "rejected", "all"], default="all")
        action.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared import bootstrap
    from shared.adapters.blob_deadletter import Move, TakenLetter, UnreadableLetter

    sink = bootstrap.dead_letter_sink()
    unreadable = taken = 0
    if args.action == "list":
        count = 0
        for letter in sink.read(args.kind):
            if isinstance(letter, TakenLetter):  # a replay running beside this moved it: no longer a dead letter
                taken += 1
                continue
            if isinstance(letter, UnreadableLetter):
                unreadable += 1
                print(f"{letter.name}: unreadable, not a dead letter: {letter.problem}", file=sys.stderr)
                continue
            count += 1
            print(f"{letter.name}\t{letter.kind}\t{len(letter.records)} records\t{letter.reason}")
        print(f"{count} dead letter{'' if count == 1 else 's'}" + (f", {unreadable} unreadable" if unreadable else "")
              + (f", {taken} replayed meanwhile by another run" if taken else ""))
        return 1 if unreadable else 0

    service = bootstrap.replay_ingest_service()  # no audit run: each letter's records are accounted for already
    replayed = kept = failed = rewritten = rejected = superseded = 0  # each letter counts in one of the first
    # four, or unreadable, or taken; rejected and superseded count items
    for letter in sink.read(args.kind):
        if isinstance(letter, TakenLetter):  # another replay, beside this one, moved it since the listing
            taken += 1
            continue
        if isinstance(letter, UnreadableLetter):  # left where it is, for someone to look at
            unreadable += 1
            print(f"{letter.name}: unreadable, not replayed: {letter.problem}", file=sys.stderr)
            continue
        try:
            result = service.handle(letter.records, final_attempt=False)
        except Exception as exc:  # any store failure (unreachable, throttled, refused): keep the letter, go on
            failed += 1
            logger.warning("%s: the event store is still failing, kept: %s: %s", letter.name, type(exc).__name__, exc)
            continue
        rejected += result.rejected
        superseded += result.superseded
        if result.superseded:
            logger.info("%s: %d events not stored, a later copy of their ids is stored", letter.name,
                        result.superseded)
        # A body refused whole whose elements the replay could read now (a raised body limit) has its elements
        # letter, holding only what is still invalid: it gives way to it, as an older per-element letter does.
        as_elements = letter.whole_body and not result.rejected_bodies
        if result.rejected and letter.kind == "rejected" and not letter.per_element and not as_elements:
            kept += 1
            logger.info("%s: %d items still invalid, kept", letter.name, result.rejected)
            continue
        if result.rejected:  # a batch letter, an older per-element letter or a body letter whose elements are
            # read now: the replay wrote their rejected letter
            logger.info("%s: %d items still invalid, dead-lettered as rejected", letter.name, result.rejected)
        moved = sink.mark_replayed(letter.name, letter.etag)  # the version replayed, not a newer one
        if moved is Move.MOVED:
            replayed += 1
        elif moved is Move.GONE:  # the other run replayed it as well and moved it first (the store took both)
            taken += 1
        else:  # written again since it was read: the newer letter stays, still to be replayed
            rewritten += 1
    print(f"replayed {replayed}, still invalid {kept}, store failing {failed}, unreadable {unreadable}, "
          f"taken by another run {taken}, rewritten meanwhile {rewritten}")
    print(f"{rejected} item{'' if rejected == 1 else 's'} re-dead-lettered as rejected, "
          f"{superseded} superseded by a later copy already stored")
    return 1 if failed or unreadable else 0
