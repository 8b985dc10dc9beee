"""The event contract: every kind of bad input is rejected with a reason that names it; nothing is lost."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.events import EventMetadata, Limits, Pending, RawRecord, parse_records

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
META = EventMetadata(partition_id="1", offset="100", sequence_number=7, enqueued_time=NOW, partition_key="dev-1")


def event(**overrides):
    base = {
        "event_id": str(uuid.uuid4()),
        "device_id": "dev-0001",
        "event_type": "telemetry",
        "timestamp": "2026-11-23T11:59:00+00:00",
        "severity": "info",
        "measurements": {"temperature": 21.5},
        "attributes": {"fw": "1.2.3"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


DEFAULT_LIMITS = Limits()


def parse(*bodies: bytes, limits: Limits = DEFAULT_LIMITS):
    return parse_records([RawRecord(b, META) for b in bodies], limits=limits, now=NOW)


def test_a_valid_event_is_kept_with_its_metadata():
    body = event(severity="critical")
    parsed = parse(json.dumps(body).encode())
    assert not parsed.errs
    [ok] = parsed.oks
    assert str(ok.event_id) == body["event_id"]
    assert ok.body.severity == "critical"
    assert ok.metadata == META
    assert ok.timestamp == datetime(2026, 11, 23, 11, 59, tzinfo=UTC)


def test_defaults_and_offsets_are_normalised_to_utc():
    parsed = parse(
        json.dumps(
            event(severity=..., measurements=..., attributes=..., timestamp="2026-11-23T13:00:00+02:00")
        ).encode()
    )
    [ok] = parsed.oks
    assert ok.body.severity == "info" and ok.body.measurements == {} and ok.body.schema_version == 1
    assert ok.timestamp == datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "moment"), [
    ("2026-11-23 11:00:00Z", datetime(2026, 11, 23, 11, 0, tzinfo=UTC)),  # RFC 3339 5.6 allows a space
    ("2026-11-23t11:00:00.5z", datetime(2026, 11, 23, 11, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-23T06:00:00.123456-05:00", datetime(2026, 11, 23, 11, 0, 0, 123456, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
])
def test_every_rfc_3339_form_is_taken(text: str, moment: datetime):
    [ok] = parse(json.dumps(event(timestamp=text)).encode()).oks
    assert ok.timestamp == moment


BAD = [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8 (byte 0"),
    (b"\xef\xbb\xbf" + json.dumps(event()).encode(), "byte order mark"),
    (b"42", "body is a JSON number, not an event object"),
    (b"[]", "empty JSON array"),
    (b"[1]", "element 0 is a JSON number, not an object"),
    (b"null", "body is a JSON null, not an event object"),
    (json.dumps(event(event_id="not-a-uuid")).encode(), "event_id"),
    (json.dumps(event(event_id=12345)).encode(), "event_id"),
    (json.dumps(event(device_id="")).encode(), "device_id"),
    (json.dumps(event(device_id="has space")).encode(), "device_id"),
    (json.dumps(event(device_id="x" * 129)).encode(), "device_id"),
    (json.dumps(event(event_type=...)).encode(), "event_type: Field required"),
    (json.dumps(event(event_type="x" * 65)).encode(), "event_type"),
    (json.dumps(event(timestamp="2026-11-23T11:59:00")).encode(), "timestamp"),
    (json.dumps(event(timestamp=1700000000)).encode(), "timestamp"),
    # pydantic reads numeric text as Unix seconds (past 2e10 as milliseconds): not RFC 3339, refused
    (json.dumps(event(timestamp="1700000000")).encode(), "timestamp: Value error, must be an RFC 3339 string"),
    (json.dumps(event(timestamp="1700000000000")).encode(), "timestamp: Value error, must be an RFC 3339 string"),
    (json.dumps(event(timestamp="0")).encode(), "timestamp: Value error, must be an RFC 3339 string"),
    (json.dumps(event(timestamp="2026-11-23T11:00Z")).encode(), "timestamp: Value error, must be an RFC 3339"),
    (json.dumps(event(timestamp="2026-11-23T11:00:00+0100")).encode(), "timestamp: Value error, must be an RFC"),
    # in year 0 once in UTC: astimezone raised OverflowError out of validation, and the whole batch with it
    (json.dumps(event(timestamp="0001-01-01T00:00:00+01:00")).encode(), "timestamp: Value error, is before 0001"),
    (json.dumps(event(timestamp="2026-11-23T12:30:00Z")).encode(), "ahead of when Event Hubs enqueued it"),
    (json.dumps(event(severity="fatal")).encode(), "severity"),
    (json.dumps(event(measurements={"t": "21.5"})).encode(), "measurements.t"),
    (json.dumps(event(measurements={"t": True})).encode(), "measurements.t"),
    (
        b'{"event_id": "%s", "device_id": "d", "event_type": "t", "timestamp": "2026-11-23T11:00:00Z", '
        b'"measurements": {"t": NaN}}'
        % str(uuid.uuid4()).encode(),
        "not valid JSON",
    ),
    (
        b'{"event_id": "%s", "device_id": "d", "event_type": "t", "timestamp": "2026-11-23T11:00:00Z", '
        b'"measurements": {"t": Infinity}}'
        % str(uuid.uuid4()).encode(),
        "not valid JSON",
    ),
    (
        b'{"event_id": "%s", "device_id": "d", "event_type": "t", "timestamp": "2026-11-23T11:00:00Z", '
        b'"measurements": {"t": 1e400}}'
        % str(uuid.uuid4()).encode(),
        "measurements.t",
    ),
    (json.dumps(event(measurements={"t": 10**400})).encode(), "measurements.t"),
    (json.dumps(event(measurements={f"m{i}": 1.0 for i in range(65)})).encode(), "at most 64"),
    (json.dumps(event(attributes={"a": 1})).encode(), "attributes.a"),
    (json.dumps(event(attributes={f"a{i}": "v" for i in range(33)})).encode(), "at most 32"),
    (json.dumps(event(event_type="ala\x00rm")).encode(), "event_type: Value error, must not contain the NUL"),
    (json.dumps(event(measurements={"t\x00": 1.0})).encode(), "must not contain the NUL character"),
    (json.dumps(event(attributes={"a\x00": "v"})).encode(), "must not contain the NUL character"),
    (json.dumps(event(attributes={"a": "v\x00"})).encode(), "attributes.a: Value error, must not contain the NUL"),
    (json.dumps(event(schema_version=2)).encode(), "schema version"),
    (json.dumps(event(unexpected="field")).encode(), "unexpected"),
]


@pytest.mark.parametrize(("body", "reason"), BAD, ids=[r for _, r in BAD])
def test_bad_input_is_rejected_with_a_reason_and_the_original_bytes(body, reason):
    parsed = parse(body)
    assert parsed.oks == []
    [rejected] = parsed.errs
    assert reason in rejected.reason
    assert rejected.original == body
    assert rejected.metadata == META


def test_oversize_body_is_rejected_before_parsing():
    body = json.dumps(event(attributes={"blob": "x" * 1000})).encode()
    parsed = parse(body, limits=Limits(max_body_bytes=512))
    [rejected] = parsed.errs
    assert f"body is {len(body)} bytes; at most 512" in rejected.reason


def test_a_reason_names_the_json_type_not_the_python_one():
    """A dead letter's reason is for the producer, who knows JSON's types (null, boolean), not Python's (NoneType)."""
    assert "body is a JSON null, not an event object" in parse(b"null").errs[0].reason
    assert "body is a JSON boolean, not an event object" in parse(b"false").errs[0].reason
    assert "body is a JSON string, not an event object" in parse(b'"x"').errs[0].reason
    [rejected] = parse(b'[true, 1.5, 2, "x", [1], null]').errs
    assert [e.reason for e in rejected.elements] == [
        f"element {i} is a JSON {kind}, not an object"
        for i, kind in enumerate(("boolean", "number", "number", "string", "array", "null"))]


def test_an_array_keeps_its_valid_events_and_rejects_each_bad_one_by_index():
    good1, good2 = event(), event()
    bad = event(severity="loud")
    body = json.dumps([good1, bad, good2]).encode()
    parsed = parse(body)
    assert [str(e.event_id) for e in parsed.oks] == [good1["event_id"], good2["event_id"]]
    [rejected] = parsed.errs
    assert rejected.index == 1
    assert rejected.event_id == bad["event_id"]
    assert f"element 1 (event_id {bad['event_id']}) is invalid: severity" in rejected.reason
    assert rejected.original == body


def test_a_body_replayed_from_its_letter_runs_only_the_elements_the_letter_holds_as_not_stored():
    """The letter's valid elements were stored at ingest: run again, they would undo a later correction. A letter of
    the older per-element shape names one bad element; the body's others still invalid are named again, so the one
    letter the replay writes holds them all, and its valid ones are left alone."""
    stored, fixed = event(), event()
    body = json.dumps([stored, 1, fixed, "x"]).encode()  # as lettered with [1, 2, 3] bad; element 2 since fixed

    def replay(pending: Pending):
        return parse_records([RawRecord(body, META, pending)], limits=DEFAULT_LIMITS, now=NOW)

    letter = replay(Pending(frozenset({1, 2, 3})))
    assert [str(e.event_id) for e in letter.oks] == [fixed["event_id"]]
    assert [e.index for e in letter.errs[0].elements] == [1, 3] and letter.errs[0].reason.startswith("2 of 4 ")
    older = replay(Pending(frozenset({1}), others_if_invalid=True))
    assert older.oks == [] and [e.index for e in older.errs[0].elements] == [1, 3]


def test_duplicates_in_a_batch_are_dropped_and_a_correction_replaces_its_earlier_copy():
    """A correction re-sent under its id is stored as its later copy, as it would be in a later batch: how a
    redelivery cuts the batches must not change what is stored."""
    first, other = event(), event()
    same = dict(first)
    corrected = dict(first, severity="critical")
    records = [RawRecord(json.dumps(body).encode(), dataclasses.replace(META, sequence_number=sequence))
               for sequence, body in enumerate((first, same, other, corrected))]
    parsed = parse_records(records, limits=DEFAULT_LIMITS, now=NOW)
    assert [(str(e.event_id), e.body.severity) for e in parsed.oks] == [(first["event_id"], "critical"),
                                                                       (other["event_id"], "info")]
    assert parsed.duplicates == 2 and parsed.errs == []
    assert parsed.oks[0].metadata.sequence_number == 3, "the later copy's Event Hubs metadata"


def test_an_identical_duplicate_in_a_batch_is_stored_as_its_later_copy_and_the_earlier_counts_as_the_duplicate():
    """In two batches the later copy's write wins (its Event Hubs metadata is stored); in one batch it must be the
    same, or the stored sequence number depends on how a redelivery cut the batches. The audit then counts the
    later record as stored and the earlier one as the duplicate: still one of each."""
    from shared.services.ingest import audit_runs

    body = json.dumps(event()).encode()
    records = [RawRecord(body, dataclasses.replace(META, sequence_number=sequence)) for sequence in (7, 8)]
    parsed = parse_records(records, limits=DEFAULT_LIMITS, now=NOW)
    assert [e.metadata.sequence_number for e in parsed.oks] == [8] and parsed.duplicates == 1
    [run] = audit_runs(records, parsed.oks, parsed.errs)
    assert (run.first, run.last, run.stored, run.dead_lettered, run.duplicate) == (7, 8, 1, 0, 1)


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(
    device_id=st.from_regex(r"[A-Za-z0-9._:\-]{1,128}", fullmatch=True),
    measurements=st.dictionaries(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                                         max_size=64), _finite, max_size=64),
    skew=st.integers(min_value=-10**8, max_value=299),
)
def test_any_event_inside_the_contract_is_accepted_unchanged(device_id, measurements, skew):
    body = event(
        device_id=device_id,
        measurements=measurements,
        timestamp=(NOW + timedelta(seconds=skew)).isoformat(),
    )
    parsed = parse(json.dumps(body).encode())
    assert parsed.errs == []
    [ok] = parsed.oks
    assert ok.device_id == device_id
    assert ok.body.measurements == measurements


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_nothing_is_lost(data):
    parsed = parse(data)
    assert len(parsed.oks) + len(parsed.errs) + parsed.duplicates >= 1
    for rejected in parsed.errs:
        assert rejected.original == data and rejected.reason


def test_the_published_json_schema_matches_the_contract():
    from pathlib import Path

    from sluice.commands.event_schema import schema

    published = json.loads((Path(__file__).resolve().parents[2] / "docs" / "event.schema.json").read_text())
    assert published == schema(), "regenerate with: python -m sluice event-schema > docs/event.schema.json"


def _schema_body(**changes) -> dict:
    return {"event_id": "5b7e3c52-6a0e-4f57-9d7b-2f3f3f0d6a11", "device_id": "dev-1", "event_type": "t",
            "timestamp": "2016-12-31T23:59:00Z", **changes}


@pytest.mark.parametrize("changes", [
    {"timestamp": "2016-12-31T23:59:60Z"},  # the leap second that really happened: valid RFC 3339
    {"timestamp": "2017-01-01T00:59:60.5+01:00"},  # the same leap second, written with an offset
    {"timestamp": "2016-12-31T12:59:60Z"},  # second 60 that is no leap second
    {"schema_version": 1.0},  # JSON Schema: 1.0 is an integer and equals 1
    {"schema_version": True},
    {"event_id": "5B7E3C52-6A0E-4F57-9D7B-2F3F3F0D6A11"},
    {"event_id": "urn:uuid:5b7e3c52-6a0e-4f57-9d7b-2f3f3f0d6a11"},
    {"event_id": "{5b7e3c52-6a0e-4f57-9d7b-2f3f3f0d6a11}"},
    {"event_id": "5b7e3c526a0e4f579d7b2f3f3f0d6a11"},
], ids=["leap-second", "leap-second-offset", "second-60", "schema_version-1.0", "schema_version-true",
        "uuid-upper", "uuid-urn", "uuid-braces", "uuid-32-hex"])
def test_the_code_and_the_published_schema_judge_an_event_alike(changes: dict) -> None:
    """docs/event.schema.json (validated with formats on, as a producer would) and ``parse_records`` give the same
    verdict for every event inside the documented extra bounds (skew, counts, size, BOM): a producer that validates
    against the published contract is never dead-lettered, and the contract describes every id Sluice takes."""
    from pathlib import Path

    import jsonschema_rs

    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "event.schema.json").read_text())
    document = _schema_body(**changes)
    schema_ok = jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(document)
    parsed = parse_records([RawRecord(json.dumps(document).encode(), EventMetadata())], limits=Limits(),
                           now=datetime(2026, 11, 23, tzinfo=UTC))
    code_ok = not parsed.errs
    assert code_ok == schema_ok, (f"schema says {'valid' if schema_ok else 'invalid'}, code says "
                                  f"{'valid' if code_ok else 'invalid: ' + parsed.errs[0].reason}")


def test_a_leap_second_is_stored_as_the_last_millisecond_before_it():
    [stored] = parse(json.dumps(event(timestamp="2016-12-31T23:59:60.25Z")).encode()).oks
    assert stored.timestamp == datetime(2016, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
# Per field, values near the contract's edges, beside arbitrary JSON.
_NEAR = {
    "event_id": st.uuids().map(str) | st.uuids().map(lambda u: u.hex) | st.uuids().map(lambda u: f"{{{u}}}"),
    "device_id": st.text(alphabet="ab:.-_ /é", min_size=0, max_size=130),
    "event_type": st.text(min_size=0, max_size=66),
    "timestamp": st.builds(
        lambda skew, zone: (NOW + timedelta(seconds=skew)).astimezone(zone).isoformat() if zone else
        (NOW + timedelta(seconds=skew)).replace(tzinfo=None).isoformat(),
        st.integers(-10**6, 10**4), st.sampled_from([UTC, timezone(timedelta(hours=-5)), None])),
    "severity": st.sampled_from(["info", "warning", "critical", "Critical", ""]),
    "measurements": st.dictionaries(st.text(max_size=3), st.floats() | st.integers(-(2**80), 2**80) | st.booleans(),
                                    max_size=4) | st.integers(62, 66).map(lambda n: {f"m{i}": 1.5 for i in range(n)}),
    "attributes": st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=4)
                  | st.integers(30, 34).map(lambda n: {f"a{i}": "v" for i in range(n)}),
    "schema_version": st.sampled_from([1, 2, 1.0, True, "1"]),
    "extra": st.none(),
}


@settings(max_examples=500, deadline=None)
@given(
    changes=st.sets(st.sampled_from(list(_NEAR)), max_size=3).flatmap(
        lambda fields: st.fixed_dictionaries(
            {name: st.just(...) | _json_values | _NEAR[name] for name in fields})),
    spacing=st.sampled_from(["", " ", "\n\t"]),
)
def test_a_lone_event_object_is_judged_as_the_same_event_inside_an_array(changes, spacing):
    # A body holding one object is validated in one pass; an array, element by element: both must agree.
    element = event(**changes)
    lone = parse((spacing + json.dumps(element)).encode())
    in_array = parse(json.dumps([element]).encode())
    assert [e.body for e in lone.oks] == [e.body for e in in_array.oks]
    assert len(lone.errs) == len(in_array.errs)
    for alone, inside in zip(lone.errs, in_array.errs, strict=True):
        assert alone.index is None and alone.event_id == inside.event_id
        if inside.index is None:  # not JSON at all (NaN, Infinity): both bodies are refused whole, for that reason
            assert alone.reason.startswith("body is not valid JSON") and inside.reason.startswith(
                "body is not valid JSON"
            )
        else:
            assert alone.reason == inside.reason.replace("element 0", "event", 1)


def test_the_nan_hint_is_given_only_where_nan_or_infinity_is_written():
    [plain] = parse(b'{"event_id": ').errs
    assert "not valid JSON" in plain.reason and "NaN" not in plain.reason
    [nan] = parse(b'{"measurements": {"t": NaN}}').errs
    assert nan.reason.endswith("; NaN and Infinity are not JSON")


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_an_element_nested_deeper_than_the_parser_reads_is_refused_by_index_and_id_and_its_siblings_kept():
    """The JSON parser reads at most 200 levels of arrays and objects; a well-formed body with an element nested
    deeper is still read element by element: the valid elements are kept, the deep one is refused by its index and
    event id with a reason naming the limit (not the whole body as "not valid JSON")."""
    good, deep = event(), event(attributes={"a": "X"})
    deep_bytes = json.dumps(deep).encode().replace(b'"X"', _nested(250))
    parsed = parse(b"[" + json.dumps(good).encode() + b', {"x": "],{"}, ' + deep_bytes + b"]")
    assert [str(e.event_id) for e in parsed.oks] == [good["event_id"]]
    [rejected] = parsed.errs
    assert [(b.index, b.event_id) for b in rejected.elements] == [(1, None), (2, deep["event_id"])]
    assert rejected.elements[1].problem == ("nests arrays and objects more than 200 levels deep; the JSON parser "
                                            "reads at most 200")

    [alone] = parse(deep_bytes).errs  # a lone event object: refused whole, named by its id
    assert (alone.index, alone.event_id) == (None, deep["event_id"]) and "more than 200 levels deep" in alone.reason

    [deeper] = parse(b"[" + _nested(5000) + b", " + json.dumps(good).encode() + b"]").errs  # past Python's too
    assert [(b.index, b.event_id) for b in deeper.elements] == [(0, None)]
    [deepest] = parse(deep_bytes.replace(_nested(250), _nested(5000))).errs  # still named by its id
    assert (deepest.index, deepest.event_id) == (None, deep["event_id"])


_VALID_SIBLING = json.dumps(event()).encode()


@pytest.mark.parametrize("body", [
    b"[" + _nested(250) + b", 1 2]",  # another element is not JSON
    b"[" + _nested(250) + b",]",
    b"[" + b"[" * 250 + b"]" * 249 + b"]",  # brackets that do not match
    b"[" + _nested(250) + b", {]}",
    b'{"a": ' + _nested(250) + b", }",
    # not JSON inside the deep element itself, with a valid sibling: as the parser judges it, at any depth
    b'[{"x": ' + _nested(5000) + b', "y": tru}, ' + _VALID_SIBLING + b"]",  # deeper than Python's parser reads
    b'[{"x": ' + _nested(250) + b', "y": "\\ud800"}, ' + _VALID_SIBLING + b"]",  # a lone surrogate escape
    b'{"x": ' + _nested(250) + b', "event_id": "\\ud800"}',  # ... where the event id is read
    b'[{"x": ' + _nested(250) + b', "\\udfff": 1}, ' + _VALID_SIBLING + b"]",  # ... in a key
    b'[{"x": ' + _nested(250) + b', "y": NaN}, ' + _VALID_SIBLING + b"]",
])
def test_a_deeply_nested_body_that_is_not_json_elsewhere_is_still_refused_whole(body: bytes):
    """Only the nesting is past the parser: a deep body is read with the parser's own grammar (no lone surrogate
    escapes, no NaN) at any depth, so one that is not JSON elsewhere is refused whole and no sibling is stored."""
    parsed = parse(body)
    assert parsed.oks == []
    [rejected] = parsed.errs
    assert rejected.reason.startswith("body is not valid JSON (recursion limit exceeded") and rejected.index is None


_HUGE = b"1" + b"0" * 4300  # valid JSON; the parser refuses an integer part of more than 4,300 digits


def test_an_element_with_a_number_past_the_parser_is_refused_by_index_id_and_field_and_its_siblings_kept():
    """The parser's other limit, numbers out of its range (an integer part past 4,300 digits, far beyond double
    range), refused the whole body as "not valid JSON" with its valid siblings: now it is read element by element,
    as the depth limit is, and only the element holding such a number is refused, naming where it is."""
    good, bad = event(), event(measurements={"t": 0})
    bad_bytes = json.dumps(bad).encode().replace(b'{"t": 0}', b'{"t": ' + _HUGE + b"}")
    parsed = parse(b"[" + json.dumps(good).encode() + b", " + _HUGE + b", " + bad_bytes + b"]")
    assert [str(e.event_id) for e in parsed.oks] == [good["event_id"]]
    [rejected] = parsed.errs
    assert [(b.index, b.event_id) for b in rejected.elements] == [(1, None), (2, bad["event_id"])]
    assert rejected.elements[0].problem == "is a JSON number, not an object"
    assert rejected.elements[1].problem.startswith("is invalid: measurements.t: number out of range")

    [alone] = parse(bad_bytes).errs  # a lone event object: refused whole, named by its id and the field
    assert (alone.index, alone.event_id) == (None, bad["event_id"])
    assert alone.reason.startswith(f"event (event_id {bad['event_id']}) is invalid: measurements.t: number out of")
    [inside] = parse(b'[{"a": [1, {"b": 2}, -' + _HUGE + b".5]}]").errs  # named inside arrays too
    assert inside.reason.startswith("element 0 is invalid: a.2: number out of range")


@pytest.mark.parametrize("body", [
    b"[" + _HUGE + b"x, " + _VALID_SIBLING + b"]",  # no JSON number
    b'[{"x": ' + _HUGE + b', "y": tru}, ' + _VALID_SIBLING + b"]",  # not JSON elsewhere in the element
    b"[" + _HUGE + b", " + _VALID_SIBLING + b", 1 2]",  # ... or in another
    _HUGE,  # a body that is only such a number is no event: refused whole, as before
])
def test_a_body_with_a_number_past_the_parser_that_is_not_json_elsewhere_is_still_refused_whole(body: bytes):
    parsed = parse(body)
    assert parsed.oks == []
    [rejected] = parsed.errs
    assert rejected.reason.startswith("body is not valid JSON (number out of range") and rejected.index is None


@pytest.mark.parametrize(("version", "named"), [
    (2, "2 (a JSON number) is not a supported schema version"),
    ("1", '"1" (a JSON string) is not'),
    (True, "true (a JSON boolean) is not"),
    ([1], "a JSON array is not"),
    ("9" * 65, "a JSON string of 65 characters is not"),
    (10**100, "a JSON number is not"),
])
def test_a_schema_version_is_named_by_its_json_type_and_only_a_short_one_by_its_value(version, named):
    """A reason never copies a long input: a 200,000-character schema_version was echoed whole into it."""
    [rejected] = parse(json.dumps(event(schema_version=version)).encode()).errs
    assert named in rejected.reason and len(rejected.reason) < 200


def test_a_long_key_is_named_by_its_first_64_characters():
    [extra] = parse(json.dumps(event(**{"k" * 10_000: 1})).encode()).errs
    assert extra.reason.endswith(f"is invalid: {'k' * 64}\u2026: Extra inputs are not permitted")
    [name] = parse(json.dumps(event(measurements={"m" * 10_000: 1.0})).encode()).errs
    assert f"measurements.{'m' * 64}\u2026.[key]: String should have at most 64 characters" in name.reason
    assert len(name.reason) < 300


def _at_most(head: bytes, unit: bytes, tail: bytes) -> bytes:
    """``head``, ``unit`` repeated, ``tail``: a body of the largest size allowed (or a few bytes less)."""
    return head + unit * ((DEFAULT_LIMITS.max_body_bytes - len(head) - len(tail)) // len(unit)) + tail


@pytest.mark.parametrize("body", [
    _at_most(b"[" + _nested(250) + b', "', b'\\"', b"]"),  # a string never closed, full of escaped quotes
    _at_most(b"[" + _nested(250) + b', "', b'\\\\', b"]"),  # ... of backslashes
    _at_most(b"[" + _nested(250) + b', "', b'\\\\', b"\\]"),  # ... of backslashes, the last one escaping "]"
    _at_most(b"[[" + _nested(250) + b', "', b'\\"', b"]]"),  # ... inside the deep element
    _at_most(b'{"a": ' + _nested(250) + b', "b": "', b'\\"', b"}"),  # ... in a deep event object, as a value
    _at_most(b'{"a": ' + _nested(250) + b', "', b'\\"', b"}"),  # ... as a key
    _at_most(b"[" + _nested(250) + b", ", b'"', b"]"),  # quotes only
], ids=["array", "backslashes", "odd-backslashes", "inside", "object-value", "object-key", "quotes"])
def test_a_deep_body_of_the_largest_size_with_a_string_never_closed_is_refused_in_linear_time(body: bytes):
    """The top-level values of a deep body are found by a regex whose string token once had no alternative for a
    quote never closed: at every ``"`` of ``"\\"\\"\\"...`` it scanned to the end of the body and failed, then started
    again two bytes later. A body of the allowed 1 MiB took over an hour, past the function's timeout, so the batch
    was neither stored nor dead-lettered. Refused whole now, in a fraction of a second (this test just finishes)."""
    assert len(body) > DEFAULT_LIMITS.max_body_bytes - 4
    parsed = parse(body)
    assert parsed.oks == []
    [rejected] = parsed.errs
    assert rejected.reason.startswith("body is not valid JSON (recursion limit exceeded") and rejected.index is None
