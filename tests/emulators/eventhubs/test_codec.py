"""The emulator's AMQP codec and message splitting, without a network (pure and fast)."""

from __future__ import annotations

import uuid

import pytest

from emulators.eventhubs import codec, frames, message
from emulators.eventhubs.broker import Position, parse_selector, partition_for_key
from emulators.eventhubs.codec import (
    Array,
    Byte,
    Char,
    Described,
    Float,
    Int,
    Long,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
)
from emulators.eventhubs.errors import DecodeError
from emulators.eventhubs.management import TokenError, verify_sas_token

VALUES = [
    None,
    True,
    False,
    UByte(200),
    UShort(65000),
    UInt(0),
    UInt(7),
    UInt(2**32 - 1),
    ULong(0),
    ULong(9),
    ULong(2**64 - 1),
    Byte(-5),
    Short(-30000),
    Int(-(2**31)),
    Int(100),
    Long(-1),
    Long(2**63 - 1),
    12,
    -(2**40),
    Float(1.5),
    2.25,
    Char("✓"),
    Timestamp(1795430696123),
    uuid.UUID(int=12345),
    b"",
    b"\x00" * 300,
    "",
    "héllo",
    "x" * 300,
    Symbol("amqp:not-found"),
    [],
    [UInt(1), "two", None],
    {"k": [1, {"n": None}]},
    {Symbol("x-opt-offset"): "12"},
    Described(ULong(0x70), [True, UByte(4)]),
    Array(0xA3, [Symbol("a"), Symbol("b" * 300)]),
    Array(0x71, [Int(1), Int(-2)]),
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:30] for v in VALUES])
def test_values_survive_a_round_trip_with_their_amqp_type(value: object) -> None:
    encoded = codec.encode(value)
    decoded, end = codec.decode(encoded)
    assert end == len(encoded) == codec.skip(encoded, 0)
    if isinstance(value, int) and not isinstance(value, bool) and type(value) is not int:
        assert type(decoded) is type(value)
    if isinstance(value, Array):  # the element constructor may be narrower or wider; the items are what count
        assert decoded.items == value.items
    else:
        assert decoded == value


def test_truncated_and_unknown_encodings_are_decode_errors() -> None:
    encoded = codec.encode({"key": "value" * 10})
    for cut in (1, 5, len(encoded) - 1):
        with pytest.raises(DecodeError):
            codec.decode(encoded[:cut])
        with pytest.raises(DecodeError):
            codec.skip(encoded[:cut], 0)
    with pytest.raises(DecodeError, match="0xff"):
        codec.decode(b"\xff")


def test_performatives_always_carry_every_field() -> None:
    raw = frames.detach_frame(3, 7, True)
    code, fields, payload = frames.parse_body(raw[8:])
    assert code == frames.DETACH and fields == [UInt(7), True, None] and payload == b""
    assert raw[9] == 0x53 and raw[11] == 0xC0 and raw[13] == 3  # list8 with all three fields, none dropped


def test_stamped_message_keeps_every_other_section_byte_for_byte() -> None:
    properties = b"\x00\x53\x73" + codec.encode(["id-1", b"user", None, "subj"])
    application = b"\x00\x53\x74" + codec.encode({"a": Int(1), "b": uuid.UUID(int=5)})
    body = b"\x00\x53\x75" + codec.encode(b"payload")
    header = b"\x00\x53\x70" + codec.encode([True])
    annotations = b"\x00\x53\x72" + codec.encode({Symbol("x-opt-partition-key"): "dev-1",
                                                  Symbol("x-opt-sequence-number"): Long(99),
                                                  Symbol("custom"): "kept"})
    incoming = message.parse_incoming(header + annotations + properties + application + body)
    assert incoming.partition_key == "dev-1"
    stored, header_len = incoming.stamp(5, 1234, 1795430696123)
    assert stored[:header_len] == header and stored.endswith(properties + application + body)
    parts = message.sections(stored)
    mapping = message.section_value(stored, parts[1])
    assert mapping == {"x-opt-partition-key": "dev-1", "custom": "kept", "x-opt-sequence-number": 5,
                       "x-opt-offset": "1234", "x-opt-enqueued-time": 1795430696123}
    plain = message.parse_incoming(properties + body)
    assert plain.stamp(0, 0, 1)[0].endswith(properties + body)


def test_batches_split_into_their_events() -> None:
    inner = [b"\x00\x53\x75" + codec.encode(f"event-{i}".encode() * 40) for i in range(3)]
    envelope = b"".join(b"\x00\x53\x75" + codec.encode(m) for m in inner)
    assert message.unpack_batch(envelope) == (inner, None)
    with pytest.raises(DecodeError, match="data sections"):
        message.unpack_batch(b"\x00\x53\x77" + codec.encode("value"))
    with pytest.raises(DecodeError):
        message.unpack_batch(b"\x00\x53\x75\xb0\x00\x00\x10\x00short")


def test_selectors_and_keys() -> None:
    assert parse_selector(None) == Position("offset", -1, False)
    assert parse_selector("amqp.annotation.x-opt-offset > '@latest'").kind == "latest"
    assert parse_selector("amqp.annotation.x-opt-sequence-number >= '17'") == Position("sequence", 17, True)
    assert parse_selector("amqp.annotation.x-opt-enqueued-time > '1700000000000'").kind == "time"
    assert partition_for_key("device-42", 4) == partition_for_key("device-42", 4)
    assert len({partition_for_key(f"k{i}", 4) for i in range(50)}) == 4


def test_sas_tokens() -> None:
    import base64
    import hashlib
    import hmac
    import time
    from urllib.parse import quote_plus

    def token(key: str, expiry: int, name: str = "RootManageSharedAccessKey") -> str:
        sr = "sb://127.0.0.1:5672/telemetry"
        sig = base64.b64encode(hmac.new(key.encode(), f"{quote_plus(sr)}\n{expiry}".encode(),
                                        hashlib.sha256).digest()).decode()
        return f"SharedAccessSignature sr={quote_plus(sr)}&sig={quote_plus(sig)}&se={expiry}&skn={name}"

    later = int(time.time()) + 600
    assert verify_sas_token(token("SAS_KEY_VALUE", later)) == "sb://127.0.0.1:5672/telemetry"
    cases = {"invalid signature": token("other", later), "expired": token("SAS_KEY_VALUE", 1000),
             "unknown shared access key name": token("SAS_KEY_VALUE", later, "Other"),
             "Malformed": "garbage", "sr, sig, se": "SharedAccessSignature sr=x"}
    for expected, text in cases.items():
        with pytest.raises(TokenError, match=expected) as refused:
            verify_sas_token(text)
        assert refused.value.status == 401
