"""Secrets through the real azure-keyvault-secrets SecretClient, with the credential Sluice uses."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from tests.fixtures.keyvault import start_keyvault_emulator, unique_secret_name

pytestmark = pytest.mark.timeout(60)


def test_set_then_get_latest_and_each_version(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    first = keyvault_client.set_secret(name, "one", content_type="password", tags={"owner": "sluice"})
    second = keyvault_client.set_secret(name, "two")

    assert first.properties.version != second.properties.version
    assert len(first.properties.version) == 32
    assert keyvault_client.get_secret(name).value == "two"
    old = keyvault_client.get_secret(name, first.properties.version)
    assert old.value == "one"
    assert old.properties.content_type == "password"
    assert old.properties.tags == {"owner": "sluice"}
    assert old.properties.enabled is True
    assert old.properties.recovery_level == "Recoverable+Purgeable"
    assert old.properties.created_on is not None and old.properties.created_on.tzinfo is not None
    assert keyvault_client.get_secret(name, second.properties.version).value == "two"
    assert {p.version for p in keyvault_client.list_properties_of_secret_versions(name)} == {
        first.properties.version, second.properties.version}


def test_names_are_case_insensitive(keyvault_client: SecretClient) -> None:
    name = unique_secret_name("Mixed-Case")
    keyvault_client.set_secret(name, "v1")
    keyvault_client.set_secret(name.lower(), "v2")
    assert keyvault_client.get_secret(name.upper()).value == "v2"
    assert len(list(keyvault_client.list_properties_of_secret_versions(name))) == 2


def test_values_keep_unicode_and_newlines(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    value = "pässwörd\nline two \"quoted\" {json: 1}"
    keyvault_client.set_secret(name, value)
    assert keyvault_client.get_secret(name).value == value


def test_update_properties_changes_one_version_and_never_the_value(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    old = keyvault_client.set_secret(name, "old", tags={"a": "1"})
    keyvault_client.set_secret(name, "new", content_type="text/plain")
    not_before = datetime(2020, 1, 1, tzinfo=UTC)
    expires = datetime(2999, 1, 1, tzinfo=UTC)

    updated = keyvault_client.update_secret_properties(name, content_type="application/json", tags={"b": "2"},
                                                       not_before=not_before, expires_on=expires)
    assert updated.content_type == "application/json" and updated.tags == {"b": "2"}
    assert updated.not_before == not_before and updated.expires_on == expires
    latest = keyvault_client.get_secret(name)
    assert latest.value == "new" and latest.properties.expires_on == expires

    # Only the given fields change: disabling the old version keeps its tags.
    keyvault_client.update_secret_properties(name, old.properties.version, enabled=False)
    versions = {p.version: p for p in keyvault_client.list_properties_of_secret_versions(name)}
    assert versions[old.properties.version].enabled is False
    assert versions[old.properties.version].tags == {"a": "1"}
    assert versions[latest.properties.version].enabled is True


def test_a_disabled_secret_is_forbidden_until_enabled_again(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    keyvault_client.set_secret(name, "value")
    keyvault_client.update_secret_properties(name, enabled=False)

    with pytest.raises(HttpResponseError) as caught:
        keyvault_client.get_secret(name)
    assert caught.value.status_code == 403
    assert caught.value.error.code == "Forbidden"
    assert "disabled" in caught.value.error.message
    assert caught.value.error.innererror["code"] == "SecretDisabled"
    # Still listed, with its attributes, but no value.
    assert [p.enabled for p in keyvault_client.list_properties_of_secret_versions(name)] == [False]

    keyvault_client.update_secret_properties(name, enabled=True)
    assert keyvault_client.get_secret(name).value == "value"


def test_expiry_and_not_before_are_returned_and_do_not_block_a_read_as_on_azure(
        keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    expired = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    keyvault_client.set_secret(name, "value", expires_on=expired)
    secret = keyvault_client.get_secret(name)
    assert secret.value == "value" and secret.properties.expires_on == expired


def test_not_before_must_precede_expiry(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    now = datetime.now(UTC)
    with pytest.raises(HttpResponseError) as caught:
        keyvault_client.set_secret(name, "value", not_before=now, expires_on=now - timedelta(days=1))
    assert caught.value.status_code == 400 and "'nbf'" in caught.value.error.message


def test_listing_pages_with_next_link(tmp_path: Path) -> None:
    emulator = start_keyvault_emulator(tmp_path)  # its own vault: exact counts
    client = emulator.client()
    try:
        names = [f"page-{i:03d}" for i in range(23)]
        for name in names:
            client.set_secret(name, name)
        pages = list(client.list_properties_of_secrets(max_page_size=5).by_page())
        listed = [p.name for page in pages for p in page]
        assert listed == names  # ordered by name, each exactly once
        assert len(pages) == math.ceil(len(names) / 5)
        assert all(p.version is None for page in pages for p in page)  # items name the secret, not a version

        for i in range(7):
            client.set_secret("many-versions", str(i))
        version_pages = list(client.list_properties_of_secret_versions("many-versions", max_page_size=3).by_page())
        assert [len(list(page)) for page in version_pages] == [3, 3, 1]
    finally:
        client.close()
        emulator.running.stop()


def test_delete_recover_and_purge(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    keyvault_client.set_secret(name, "keep me", tags={"t": "x"})

    deleted = keyvault_client.begin_delete_secret(name, _polling_interval=0).result()
    assert deleted.name == name
    assert deleted.recovery_id.endswith(f"/deletedsecrets/{name}")
    assert deleted.deleted_date is not None
    assert deleted.scheduled_purge_date - deleted.deleted_date == timedelta(days=90)
    with pytest.raises(ResourceNotFoundError):
        keyvault_client.get_secret(name)
    assert keyvault_client.get_deleted_secret(name).properties.tags == {"t": "x"}
    assert name in {d.name for d in keyvault_client.list_deleted_secrets()}
    # A deleted name cannot be reused until it is recovered or purged.
    with pytest.raises(ResourceExistsError) as caught:
        keyvault_client.set_secret(name, "other")
    assert caught.value.status_code == 409

    recovered = keyvault_client.begin_recover_deleted_secret(name, _polling_interval=0).result()
    assert recovered.name == name
    assert keyvault_client.get_secret(name).value == "keep me"
    with pytest.raises(ResourceNotFoundError):
        keyvault_client.get_deleted_secret(name)

    keyvault_client.begin_delete_secret(name, _polling_interval=0).wait()
    keyvault_client.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        keyvault_client.get_deleted_secret(name)
    assert name not in {d.name for d in keyvault_client.list_deleted_secrets()}
    keyvault_client.set_secret(name, "fresh")
    assert [p.version for p in keyvault_client.list_properties_of_secret_versions(name)] == [
        keyvault_client.get_secret(name).properties.version]


def test_missing_secrets_and_versions_are_404_secret_not_found(keyvault_client: SecretClient) -> None:
    name = unique_secret_name("absent")
    with pytest.raises(ResourceNotFoundError) as caught:
        keyvault_client.get_secret(name)
    assert caught.value.error.code == "SecretNotFound" and name in caught.value.error.message

    keyvault_client.set_secret(name, "now here")
    with pytest.raises(ResourceNotFoundError) as caught:
        keyvault_client.get_secret(name, "0" * 32)
    assert f"{name}/{'0' * 32}" in caught.value.error.message
    with pytest.raises(ResourceNotFoundError):
        keyvault_client.update_secret_properties(unique_secret_name("absent"), enabled=False)
    with pytest.raises(ResourceNotFoundError):
        keyvault_client.begin_delete_secret(unique_secret_name("absent"))
    with pytest.raises(ResourceNotFoundError):
        keyvault_client.purge_deleted_secret(unique_secret_name("absent"))


@pytest.mark.parametrize("bad", ["under_score", "dot.ted", "x" * 128, "sp ace"])
def test_bad_names_are_400_naming_the_name(keyvault_client: SecretClient, bad: str) -> None:
    with pytest.raises(HttpResponseError) as caught:
        keyvault_client.set_secret(bad, "value")
    assert caught.value.status_code == 400
    assert caught.value.error.code == "BadParameter" and bad in caught.value.error.message


def test_a_127_character_name_is_fine(keyvault_client: SecretClient) -> None:
    name = unique_secret_name("n").ljust(127, "z")
    keyvault_client.set_secret(name, "long")
    assert keyvault_client.get_secret(name).value == "long"


def test_unsupported_operations_say_so(keyvault_client: SecretClient) -> None:
    name = unique_secret_name()
    keyvault_client.set_secret(name, "value")
    with pytest.raises(HttpResponseError) as caught:
        keyvault_client.backup_secret(name)
    assert caught.value.status_code == 400
    assert caught.value.error.code == "NotSupported" and "backup" in caught.value.error.message
