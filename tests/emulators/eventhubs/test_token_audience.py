"""A SAS token authorises only the resource in its ``sr`` and the resources under it.

The rule, as in Azure Event Hubs ("Authenticate access to Event Hubs resources using shared access
signatures"; Service Bus "Access control with Shared Access Signatures": "a SAS token is valid for
all resources prefixed with the <resourceURI> used in the signature-string"), and as the emulator
applies it (``emulators/eventhubs/management.py``):

* CBS put-token: the token's ``sr`` must cover the put-token ``name`` (the audience the SDK asks for,
  ``sb://<host>/<hub>`` or ``sb://<host>/<hub>/consumergroups/<group>``): the same host, compared
  case-insensitively with scheme and port ignored, and ``sr``'s path a case-insensitive prefix of
  ``name``'s by whole segments. Otherwise 401, which the SDK raises as ``AuthenticationError``.
  ``sb://<host>/`` (namespace level) covers every hub; ``sb://<host>/hub`` does not cover ``hub2``.
* Attach: a hub link (``<hub>``, ``<hub>/Partitions/<id>``, ``<hub>/ConsumerGroups/<g>/Partitions/<id>``)
  is attached only if a name accepted by put-token on the same connection covers its address;
  otherwise it is refused with ``amqp:unauthorized-access`` naming the hub.
* ``$management`` READ: its ``security_token``'s ``sr`` must cover the hub it reads (401 otherwise).
* SASL PLAIN with the emulator's key still authorises every hub (``test_protocol.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub._pyamqp.utils import generate_sas_token
from azure.eventhub.exceptions import AuthenticationError, ConnectError, EventHubError

from emulators.eventhubs import frames, message
from emulators.eventhubs.codec import Described
from emulators.eventhubs.management import KEY_NAME, KEY_VALUE, SAS_TOKEN_TYPE
from sluice.launcher import Running
from tests.emulators.eventhubs.helpers import consumer, producer, receive
from tests.emulators.eventhubs.rawamqp import RawClient, condition
from tests.fixtures.eventhubs import (
    IsolatedHub,
    eventhubs_connection_string,
    start_eventhubs_emulator,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

HUBS = ["audience-a", "audience-b"]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = write_config(tmp_path_factory.mktemp("audience-eh") / "config.json", HUBS)
    running = start_eventhubs_emulator(config=config)
    yield running
    running.stop()


def token_for(audience: str) -> str:
    """A SAS token for ``audience``, correctly signed with the emulator's key."""
    return str(generate_sas_token(audience, KEY_NAME, KEY_VALUE, int(time.time()) + 3600))  # type: ignore[no-untyped-call]


def sas_connection_string(running: Running, audience: str) -> str:
    return (f"Endpoint=sb://{running.host}:{running.port};SharedAccessSignature={token_for(audience)};"
            "UseDevelopmentEmulator=true")


@dataclass(frozen=True)
class SasHub(IsolatedHub):
    """A hub reached with a connection string carrying a SAS token for ``audience``."""

    audience: str = ""

    @property
    def connection_string(self) -> str:
        return sas_connection_string(self.running, self.audience)


def last_sequence(running: Running, hub: str, partition: str) -> int:
    with EventHubProducerClient.from_connection_string(eventhubs_connection_string(running), eventhub_name=hub,
                                                       retry_total=0) as client:
        return int(client.get_partition_properties(partition)["last_enqueued_sequence_number"])


@pytest.mark.parametrize("audience", [
    "sb://{host}:{port}/audience-b",                              # same namespace, another event hub
    "sb://{host}:{port}/audience",                                # a string prefix, but not a path prefix
    "sb://another-namespace.servicebus.windows.net/audience-a",   # another namespace altogether
])
def test_sas_token_for_another_resource_is_refused(emulator: Running, audience: str) -> None:
    """A correctly signed token whose ``sr`` is another hub or namespace does not authorise ``audience-a``.

    (Found in review: the emulator used to check only the signature, key name and expiry, and then
    authorised the whole connection for every hub, so code with a mis-scoped token worked here and
    failed on Azure.) The put-token is refused with 401 naming both URIs; nothing is stored.
    """
    before = last_sequence(emulator, "audience-a", "0")
    connection_string = sas_connection_string(emulator, audience.format(host=emulator.host, port=emulator.port))
    with (
        EventHubProducerClient.from_connection_string(connection_string, eventhub_name="audience-a",
                                                      retry_total=0) as client,
        pytest.raises((AuthenticationError, ConnectError, EventHubError)) as refused,
    ):
        client.send_batch([EventData("must not be stored")], partition_id="0")
    assert isinstance(refused.value, AuthenticationError), refused.value
    assert "401" in str(refused.value) and "does not cover" in str(refused.value), refused.value
    assert last_sequence(emulator, "audience-a", "0") == before


@pytest.mark.parametrize("audience", [
    "sb://{host}:{port}/",             # namespace level: every hub
    "sb://{host}:{port}/audience-a",   # exactly the hub
    "SB://{host}/AUDIENCE-A",          # path compared case-insensitively, scheme and port ignored
])
def test_namespace_level_and_exact_hub_tokens_work(emulator: Running, audience: str) -> None:
    """Producer, consumer (audience ``.../audience-a/consumergroups/$Default``) and management calls all work."""
    hub = SasHub(emulator, "audience-a", audience.format(host=emulator.host, port=emulator.port))
    body = f"scoped-{uuid.uuid4()}"
    with producer(hub) as client:
        assert client.get_eventhub_properties()["eventhub_name"] == "audience-a"
        assert client.get_partition_properties("1")["id"] == "1"
        client.send_batch([EventData(body)], partition_id="1")
    with consumer(hub) as client:
        assert client.get_partition_ids() == ["0", "1", "2", "3"]
    got = receive(hub, "1", count=1, timeout=20)
    assert body in [event.body_as_str() for event in got]


# Raw AMQP: one connection that puts a token for one hub, then attaches and reads on another.

def _request(raw: RawClient, send_handle: int, delivery_id: int, application: dict[str, Any],
             body: Any) -> dict[Any, Any]:
    """Send a request on ``send_handle``; returns the reply's application properties."""
    payload = message.build(properties=[f"request-{delivery_id}"], application_properties=application, value=body)
    raw.transfer(send_handle, delivery_id, payload)
    while True:
        _, _fields, reply = raw.expect(frames.TRANSFER)
        properties, reply_application, _body = message.read_request(reply)
        if properties[5] == f"request-{delivery_id}":
            return reply_application


def _open_request_links(raw: RawClient, node: str, send_handle: int, receive_handle: int) -> None:
    assert raw.attach_sender(send_handle, node)[1] is None
    assert raw.attach_receiver(receive_handle, node)[1] is None
    raw.flow(receive_handle, delivery_count=0, credit=100)


def test_attach_and_management_read_need_a_token_covering_the_hub(emulator: Running) -> None:
    """On a connection whose put-token named hub A, links to hub B are refused and READ of B needs a token for B."""
    with RawClient(emulator.host, emulator.port) as raw:
        raw.open()  # SASL ANONYMOUS, open hostname "localhost"
        _open_request_links(raw, "$cbs", 0, 1)
        put = {"operation": "put-token", "type": SAS_TOKEN_TYPE, "name": "sb://localhost/audience-a"}
        refused = _request(raw, 0, 0, put, token_for("sb://localhost/audience-b"))
        assert refused["status-code"] == 401 and "does not cover" in refused["status-description"], refused
        _, detach = raw.attach_sender(10, "audience-a")
        assert condition(detach) == "amqp:unauthorized-access"  # nothing accepted yet

        accepted = _request(raw, 0, 1, put, token_for("sb://localhost/audience-a"))
        assert accepted["status-code"] == 202, accepted
        for handle, address in enumerate(["audience-a", "audience-a/Partitions/0"], start=11):
            assert raw.attach_sender(handle, address)[1] is None, address
        assert raw.attach_receiver(13, "audience-a/ConsumerGroups/$Default/Partitions/0")[1] is None
        for handle, address in enumerate(["audience-b", "audience-b/Partitions/0"], start=14):
            _, detach = raw.attach_sender(handle, address)
            assert condition(detach) == "amqp:unauthorized-access", address
            assert detach is not None and isinstance(detach[2], Described), detach
            assert "'audience-b'" in str(detach[2].value[1]), detach
        _, detach = raw.attach_receiver(16, "AUDIENCE-B/ConsumerGroups/$Default/Partitions/0")
        assert condition(detach) == "amqp:unauthorized-access"

        _open_request_links(raw, "$management", 20, 21)
        read = {"operation": "READ", "type": "com.microsoft:eventhub"}
        for delivery_id, (hub, token, status) in enumerate([
            ("audience-a", token_for("sb://localhost/audience-a"), 200),
            ("audience-b", token_for("sb://localhost/audience-a"), 401),
            ("audience-b", token_for("sb://localhost/"), 200),
            ("audience-b", token_for("sb://another-host/"), 401),
            ("audience-a", None, 200),  # no security_token: the put-token above covers audience-a
            ("audience-b", None, 401),
        ]):
            application = {**read, "name": hub, **({"security_token": token} if token else {})}
            reply = _request(raw, 20, delivery_id, application, None)
            assert reply["status-code"] == status, (hub, token, reply)
            if status == 401:
                assert "'audience-b'" in reply["status-description"], reply


@pytest.mark.parametrize(("sr", "name", "covers"), [
    ("sb://h/", "sb://h:5672/hub/consumergroups/$default", True),
    ("sb://H:1/Hub", "amqps://h/hub/Partitions/0", True),
    ("h/hub", "sb://h/hub", True),                     # Azure also accepts an sr without scheme
    ("sb://h/hub/consumergroups/%24Default", "sb://h/hub/ConsumerGroups/$default", True),  # percent-decoded
    ("sb://h/hub", "sb://h/hub2", False),
    ("sb://h/hub/consumergroups/a", "sb://h/hub/consumergroups/b", False),
    ("sb://h/hub", "sb://h/", False),
    ("sb://other/", "sb://h/hub", False),
])
def test_audience_cover_rule(sr: str, name: str, covers: bool) -> None:
    from emulators.eventhubs.management import Audience  # imported here: the other tests run without it

    assert Audience.parse(sr, "sr").covers(Audience.parse(name, "name")) is covers
