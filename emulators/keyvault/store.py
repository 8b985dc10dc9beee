"""The vault: secrets with versions, soft delete, recovery and purge.

Behaviour follows Azure Key Vault (soft delete always on, as on every vault
created since 2020):

* Names are 1-127 characters of ``[0-9a-zA-Z-]`` and case-insensitive: ``Db-Pass``
  and ``db-pass`` are the same secret (the first spelling is kept).
* Setting a secret adds a version (32 hex digits); the latest version is the last
  one set. Updating properties changes one version, never the value.
* A disabled version cannot be read (403 Forbidden, inner code SecretDisabled).
  ``nbf``/``exp`` are stored and returned but, as on Azure ("a secret's get
  operation will work for not-yet-valid and expired secrets"), do not block a
  read: the client decides (Sluice's adapter refuses them).
* Delete moves every version to the deleted secrets (recoverable for
  ``RECOVERABLE_DAYS``); while deleted, the name cannot be set again (409
  Conflict) until it is recovered or purged.

With a data directory, the whole vault is saved to ``vault.json`` after every
change (written to a temporary file, then renamed), so it survives a restart. It holds
every secret's value: both files are created 0600, readable by their owner only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NAME = re.compile(r"[0-9a-zA-Z-]{1,127}\Z")  # \Z: "$" would take a name ending in a newline
RECOVERABLE_DAYS = 90
RECOVERY_LEVEL = "Recoverable+Purgeable"
MAX_VALUE_BYTES = 25 * 1024
MAX_TAGS = 15
MAX_CONTENT_TYPE = 255  # characters ("About Azure Key Vault secrets")
MAX_TAG_TEXT = 512  # characters, of a tag's name and of its value (same page)
STATE_FILE = "vault.json"


class VaultError(Exception):
    """An error the REST API reports as ``{"error": {"code", "message", "innererror"?}}``."""

    def __init__(self, status: int, code: str, message: str, inner_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


def bad_parameter(message: str) -> VaultError:
    return VaultError(400, "BadParameter", message)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise bad_parameter(
            f"The request URI contains an invalid name: {name!r} "
            "(secret names are 1-127 characters of 0-9, a-z, A-Z and '-')"
        )
    return name


def not_found(name: str, version: str = "") -> VaultError:
    what = f"{name}/{version}" if version else name
    return VaultError(
        404, "SecretNotFound",
        f"A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret "
        "you may be able to recover it using the correct recovery command.",
    )


def deleted_not_found(name: str) -> VaultError:
    return VaultError(404, "SecretNotFound", f"Deleted Secret not found: {name}")


@dataclass
class Version:
    """One version of a secret: its value and its own attributes."""

    version: str
    value: str
    content_type: str | None = None
    tags: dict[str, str] | None = None
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    created: int = 0
    updated: int = 0


@dataclass
class Secret:
    """Every version of one secret, oldest first; ``deleted`` is set while it is soft-deleted."""

    name: str
    versions: list[Version] = field(default_factory=list)
    deleted: int | None = None

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    @property
    def scheduled_purge(self) -> int | None:
        return None if self.deleted is None else self.deleted + RECOVERABLE_DAYS * 86400

    def find(self, version: str) -> Version | None:
        if not version:
            return self.latest
        wanted = version.lower()
        return next((v for v in self.versions if v.version == wanted), None)


@dataclass(frozen=True)
class Attributes:
    """Validated fields of a set or update request (``None``: not given)."""

    enabled: bool | None = None
    nbf: int | None = None
    exp: int | None = None
    content_type: str | None = None
    tags: dict[str, str] | None = None


def _utf8_size(text: str, what: str) -> int:
    """The UTF-8 size of ``text``; JSON can carry a lone surrogate (``"\\ud800"``), which is no text: refused."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad_parameter(f"{what} is not valid Unicode text (it holds a lone UTF-16 surrogate)") from None


def parse_properties(body: Mapping[str, Any]) -> Attributes:
    """The ``contentType``, ``tags`` and ``attributes`` of a request body, each checked by name and against Azure's
    documented limits (a content type of 255 characters, 15 tags of 512-character names and values)."""
    content_type = body.get("contentType")
    if content_type is not None:
        if not isinstance(content_type, str):
            raise bad_parameter("Property 'contentType' must be a string")
        _utf8_size(content_type, "Property 'contentType'")
        if len(content_type) > MAX_CONTENT_TYPE:
            raise bad_parameter(f"Property 'contentType' has {len(content_type)} characters; at most "
                                f"{MAX_CONTENT_TYPE} are allowed")
    tags = body.get("tags")
    if tags is not None:
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise bad_parameter("Property 'tags' must be an object of string values")
        if len(tags) > MAX_TAGS:
            raise bad_parameter(f"Property 'tags' has {len(tags)} tags; at most {MAX_TAGS} are allowed")
        for tag, text in tags.items():
            _utf8_size(tag, f"The name of tag {tag!r}")
            _utf8_size(text, f"The value of tag {tag!r}")
            if len(tag) > MAX_TAG_TEXT or len(text) > MAX_TAG_TEXT:
                raise bad_parameter(f"Tag {tag[:40]!r}{'...' if len(tag) > 40 else ''}: a tag's name and value have "
                                    f"at most {MAX_TAG_TEXT} characters each (name {len(tag)}, value {len(text)})")
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise bad_parameter("Property 'attributes' must be an object")
    unknown = sorted(set(attributes) - {"enabled", "nbf", "exp", "created", "updated", "recoveryLevel",
                                        "recoverableDays"})
    if unknown:
        raise bad_parameter(f"Property 'attributes' has unknown members: {', '.join(unknown)}")
    enabled = attributes.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad_parameter("Attribute 'enabled' must be true or false")
    times = {}
    for key in ("nbf", "exp"):
        value = attributes.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise bad_parameter(f"Attribute '{key}' must be a Unix time in seconds (a non-negative integer)")
        times[key] = value
    if times["nbf"] is not None and times["exp"] is not None and times["nbf"] >= times["exp"]:
        raise bad_parameter("Attribute 'nbf' (not before) must be earlier than 'exp' (expires)")
    return Attributes(enabled, times["nbf"], times["exp"], content_type, tags)


def new_version_id() -> str:
    return uuid.uuid4().hex


class Vault:
    """All secrets of one vault. Not thread-safe: the server calls it from one event loop."""

    def __init__(self, data_dir: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._active: dict[str, Secret] = {}
        self._deleted: dict[str, Secret] = {}
        self._clock = clock
        self._path = data_dir / STATE_FILE if data_dir else None
        if self._path and self._path.exists():
            self._load(self._path)

    # --- reading -------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> tuple[Secret, Version]:
        """A version with its value (the latest when ``version`` is empty); a disabled one is 403."""
        secret, found = self.properties(name, version)
        if not found.enabled:
            raise VaultError(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                             inner_code="SecretDisabled")
        return secret, found

    def properties(self, name: str, version: str = "") -> tuple[Secret, Version]:
        check_name(name)
        secret = self._active.get(name.lower())
        if secret is None:
            raise not_found(name, version)
        found = secret.find(version)
        if found is None:
            raise not_found(name, version)
        return secret, found

    def names(self) -> list[Secret]:
        """Active secrets, ordered by name (case-insensitive)."""
        return [self._active[key] for key in sorted(self._active)]

    def versions(self, name: str) -> tuple[Secret, list[Version]]:
        check_name(name)
        secret = self._active.get(name.lower())
        if secret is None:
            raise not_found(name)
        return secret, list(secret.versions)

    def deleted(self, name: str) -> Secret:
        check_name(name)
        self._expire_deleted()
        secret = self._deleted.get(name.lower())
        if secret is None:
            raise deleted_not_found(name)
        return secret

    def deleted_names(self) -> list[Secret]:
        self._expire_deleted()
        return [self._deleted[key] for key in sorted(self._deleted)]

    # --- changing ------------------------------------------------------------------------

    def set(self, name: str, value: object, props: Attributes) -> tuple[Secret, Version]:
        """Add a version (creating the secret when it does not exist)."""
        check_name(name)
        if not isinstance(value, str):
            raise bad_parameter("Property 'value' is required and must be a string")
        if _utf8_size(value, "Property 'value'") > MAX_VALUE_BYTES:
            raise bad_parameter(f"Property 'value' is larger than {MAX_VALUE_BYTES} bytes")
        self._expire_deleted()
        if name.lower() in self._deleted:
            raise VaultError(
                409, "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged.",
                inner_code="ObjectIsDeletedButRecoverable",
            )
        now = int(self._clock())
        secret = self._active.setdefault(name.lower(), Secret(name))
        version = Version(
            version=new_version_id(), value=value, content_type=props.content_type, tags=props.tags,
            enabled=True if props.enabled is None else props.enabled, nbf=props.nbf, exp=props.exp,
            created=now, updated=now,
        )
        secret.versions.append(version)
        self._save()
        return secret, version

    def update(self, name: str, version: str, props: Attributes) -> tuple[Secret, Version]:
        """Change the given properties of one version (the latest when ``version`` is empty)."""
        secret, found = self.properties(name, version)
        nbf = found.nbf if props.nbf is None else props.nbf
        exp = found.exp if props.exp is None else props.exp
        if nbf is not None and exp is not None and nbf >= exp:
            raise bad_parameter("Attribute 'nbf' (not before) must be earlier than 'exp' (expires)")
        if props.enabled is not None:
            found.enabled = props.enabled
        if props.content_type is not None:
            found.content_type = props.content_type
        if props.tags is not None:
            found.tags = props.tags
        found.nbf, found.exp = nbf, exp
        found.updated = int(self._clock())
        self._save()
        return secret, found

    def delete(self, name: str) -> Secret:
        check_name(name)
        secret = self._active.pop(name.lower(), None)
        if secret is None:
            raise not_found(name)
        secret.deleted = int(self._clock())
        self._deleted[name.lower()] = secret
        self._save()
        return secret

    def recover(self, name: str) -> Secret:
        secret = self.deleted(name)
        if name.lower() in self._active:  # cannot happen through the API; kept as a guard
            raise VaultError(409, "Conflict", f"Secret {name} exists and is not deleted")
        del self._deleted[name.lower()]
        secret.deleted = None
        self._active[name.lower()] = secret
        self._save()
        return secret

    def purge(self, name: str) -> None:
        self.deleted(name)
        del self._deleted[name.lower()]
        self._save()

    def _expire_deleted(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._deleted.items() if (s.scheduled_purge or 0) <= now]:
            logger.info("purging %s: its retention period ended", self._deleted[key].name)
            del self._deleted[key]

    # --- persistence ---------------------------------------------------------------------

    def _save(self) -> None:
        if self._path is None:
            return
        document = {
            "active": [asdict(s) for s in self._active.values()],
            "deleted": [asdict(s) for s in self._deleted.values()],
        }
        tmp = self._path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # a leftover of a killed save: O_EXCL makes a new file, with our mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(document))
        os.replace(tmp, self._path)

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            for kind, target in (("active", self._active), ("deleted", self._deleted)):
                for item in document.get(kind, []):
                    versions = [Version(**v) for v in item["versions"]]
                    target[item["name"].lower()] = Secret(item["name"], versions, item.get("deleted"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a saved vault: {exc}") from exc
        logger.info("loaded %d secrets (%d deleted) from %s", len(self._active), len(self._deleted), path)


def load_seed(path: Path) -> dict[str, dict[str, Any]]:
    """Secrets to create at start-up from a JSON object: ``{"name": "value"}`` or
    ``{"name": {"value": "...", "contentType": "...", "tags": {...}}}``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read secrets file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"secrets file {path} must hold a JSON object of name -> value")
    seed: dict[str, dict[str, Any]] = {}
    for name, entry in document.items():
        if not NAME.match(name):
            raise ValueError(f"secrets file {path}: {name!r} is not a valid secret name (1-127 of [0-9a-zA-Z-])")
        item = {"value": entry} if isinstance(entry, str) else entry
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise ValueError(f"secrets file {path}: secret {name!r} needs a string value")
        unknown = sorted(set(item) - {"value", "contentType", "tags"})
        if unknown:
            raise ValueError(f"secrets file {path}: secret {name!r} has unknown keys: {', '.join(unknown)}")
        seed[name] = item
    return seed


def apply_seed(vault: Vault, seed: Mapping[str, Mapping[str, Any]]) -> int:
    """Set each seeded secret whose latest value differs (idempotent across restarts); returns how many."""
    changed = 0
    for name, item in seed.items():
        try:
            _, current = vault.properties(name)
            if current.value == item["value"]:
                continue
        except VaultError:
            pass
        try:
            props = parse_properties(item)
            vault.set(name, item["value"], props)
        except VaultError as exc:
            raise ValueError(f"secrets file: cannot set {name!r}: {exc.message}") from None
        changed += 1
    return changed
