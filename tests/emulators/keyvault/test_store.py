"""The vault's own rules, without HTTP: retention, seeding, persistence errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from emulators.keyvault.store import RECOVERABLE_DAYS, Attributes, Vault, VaultError, apply_seed


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_deleted_secret_is_purged_when_its_retention_ends() -> None:
    clock = Clock()
    vault = Vault(clock=clock)
    vault.set("old", "v", Attributes())
    deleted = vault.delete("old")
    assert deleted.scheduled_purge == int(clock.now) + RECOVERABLE_DAYS * 86400
    clock.now += RECOVERABLE_DAYS * 86400 - 1
    assert vault.deleted("old").name == "old"
    clock.now += 1
    with pytest.raises(VaultError) as caught:
        vault.deleted("old")
    assert caught.value.status == 404
    vault.set("old", "reused", Attributes())  # the name is free again
    assert vault.get("old")[1].value == "reused"


def test_seeding_adds_a_version_only_when_the_value_changed() -> None:
    vault = Vault()
    assert apply_seed(vault, {"db": {"value": "one"}}) == 1
    assert apply_seed(vault, {"db": {"value": "one"}}) == 0
    assert apply_seed(vault, {"db": {"value": "two", "tags": {"rotated": "yes"}}}) == 1
    _, versions = vault.versions("db")
    assert [v.value for v in versions] == ["one", "two"] and versions[-1].tags == {"rotated": "yes"}


def test_updating_never_lets_not_before_pass_expiry() -> None:
    vault = Vault()
    vault.set("s", "v", Attributes(exp=2_000_000_000))
    with pytest.raises(VaultError, match="'nbf'"):
        vault.update("s", "", Attributes(nbf=2_000_000_001))
    assert vault.properties("s")[1].nbf is None


def test_a_corrupt_state_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "vault.json").write_text('{"active": [{"nom": 1}]}')
    with pytest.raises(ValueError, match=r"vault\.json is not a saved vault"):
        Vault(tmp_path)


def test_state_is_written_atomically_and_reloaded(tmp_path: Path) -> None:
    vault = Vault(tmp_path)
    vault.set("Kept-Name", "v", Attributes(content_type="text/plain"))
    assert not list(tmp_path.glob("*.tmp"))
    again = Vault(tmp_path)
    secret, version = again.get("kept-name")
    assert secret.name == "Kept-Name" and version.value == "v" and version.content_type == "text/plain"


def test_the_state_file_and_its_temporary_file_are_the_owners_alone(tmp_path: Path) -> None:
    """vault.json holds every secret's value: it was written with the default mode (0644), readable by every local
    user. A new file is made 0600 for every save, also over a 0644 one an older version or a killed save left."""
    for name in ("vault.json", "vault.tmp"):
        (tmp_path / name).write_text('{"active": [], "deleted": []}')
        (tmp_path / name).chmod(0o644)
    vault = Vault(tmp_path)
    vault.set("db-password", "secret", Attributes())
    assert stat.S_IMODE((tmp_path / "vault.json").stat().st_mode) == 0o600
    assert not (tmp_path / "vault.tmp").exists()
    assert Vault(tmp_path).get("db-password")[1].value == "secret"
