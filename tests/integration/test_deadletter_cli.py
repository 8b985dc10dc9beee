"""``python -m sluice deadletter list|replay`` against Azurite and the Cassandra emulator: letters written by the
registered ingest function itself, and a blob beside them that is no readable dead letter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from azure.storage.blob import BlobServiceClient

from sluice.__main__ import main
from tests.integration.test_ingest import Hub, event, ingest  # noqa: F401 (fixture)

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
