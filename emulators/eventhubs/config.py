"""Read the Microsoft Event Hubs emulator's ``Config.json`` format.

The accepted shape (the same file works with Microsoft's emulator)::

    {"UserConfig": {
        "NamespaceConfig": [{"Type": "EventHub", "Name": "emulatorNs1", "Entities": [
            {"Name": "eh1", "PartitionCount": "2", "ConsumerGroups": [{"Name": "cg1"}]}]}],
        "LoggingConfig": {"Type": "File"}}}

``PartitionCount`` may be a string (as Microsoft writes it) or a number. The
consumer group ``$Default`` always exists, declared or not. One extension, which
Microsoft's emulator ignores: ``MessageRetentionInHours`` on an entity (default
1, Microsoft's emulator's fixed retention; more than 0, at most 1e9). Numbers may
be strings, but never ``inf`` or ``nan``. Limits follow Microsoft's emulator:
one namespace, at most 10 hubs, 32 partitions per hub and 20 consumer groups per
hub; anything else is a :class:`ConfigError` naming the offending entry.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulators.eventhubs.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONSUMER_GROUP = "$Default"
MAX_HUBS = 10
MAX_PARTITIONS = 32
MAX_CONSUMER_GROUPS = 20
DEFAULT_RETENTION_HOURS = 1.0
MAX_RETENTION_HOURS = 1e9  # about 114,000 years: "keep everything", while milliseconds stay finite
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,255}$")


@dataclass(frozen=True)
class HubConfig:
    """One event hub: its name, partition count, consumer groups and retention."""

    name: str
    partition_count: int
    consumer_groups: tuple[str, ...]
    retention_hours: float = DEFAULT_RETENTION_HOURS

    @property
    def partition_ids(self) -> list[str]:
        return [str(i) for i in range(self.partition_count)]


@dataclass(frozen=True)
class NamespaceConfig:
    """The single namespace the emulator serves."""

    name: str
    hubs: dict[str, HubConfig]


def load(path: str | Path) -> NamespaceConfig:
    """Read and validate a Config.json file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {path} is not valid JSON: {exc}") from exc
    return parse(document, source=str(path))


def parse(document: Any, *, source: str = "config") -> NamespaceConfig:
    """Validate an already parsed Config.json document."""
    user = _get(document, "UserConfig", dict, source)
    namespaces = _get(user, "NamespaceConfig", list, f"{source}: UserConfig")
    hub_spaces = [ns for ns in namespaces if isinstance(ns, dict) and ns.get("Type", "EventHub") == "EventHub"]
    if len(hub_spaces) != 1:
        raise ConfigError(f"{source}: expected exactly one namespace of Type EventHub, found {len(hub_spaces)}")
    ns = hub_spaces[0]
    ns_name = _get(ns, "Name", str, f"{source}: namespace")
    where = f"{source}: namespace {ns_name!r}"
    entities = _get(ns, "Entities", list, where)
    if len(entities) > MAX_HUBS:
        raise ConfigError(f"{where}: {len(entities)} event hubs, at most {MAX_HUBS} are supported")
    hubs: dict[str, HubConfig] = {}
    for entity in entities:
        hub = _hub(entity, where)
        if hub.name.lower() in {h.lower() for h in hubs}:
            raise ConfigError(f"{where}: event hub {hub.name!r} is declared twice")
        hubs[hub.name] = hub
    logger.info("config %s: namespace %s with hubs %s", source, ns_name, ", ".join(hubs) or "(none)")
    return NamespaceConfig(name=ns_name, hubs=hubs)


def _hub(entity: Any, where: str) -> HubConfig:
    if not isinstance(entity, dict):
        raise ConfigError(f"{where}: every entity must be an object, got {entity!r}")
    name = _get(entity, "Name", str, where)
    where = f"{where}, event hub {name!r}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: invalid name (letters, digits, '.', '_', '-')")
    count = _number(entity.get("PartitionCount"), "PartitionCount", where)
    if not 1 <= count <= MAX_PARTITIONS or count != int(count):
        raise ConfigError(f"{where}: PartitionCount must be a whole number from 1 to {MAX_PARTITIONS}, got {count}")
    groups = [DEFAULT_CONSUMER_GROUP]
    for group in entity.get("ConsumerGroups") or []:
        group_name = _get(group, "Name", str, f"{where}, consumer group") if isinstance(group, dict) else None
        if not group_name or not _NAME.match(group_name.lstrip("$")):
            raise ConfigError(f"{where}: invalid consumer group {group!r}")
        if group_name.lower() in {g.lower() for g in groups}:
            if group_name == DEFAULT_CONSUMER_GROUP:
                continue
            raise ConfigError(f"{where}: consumer group {group_name!r} is declared twice")
        groups.append(group_name)
    if len(groups) > MAX_CONSUMER_GROUPS:
        raise ConfigError(f"{where}: {len(groups)} consumer groups, at most {MAX_CONSUMER_GROUPS} are supported")
    retention = _number(
        entity.get("MessageRetentionInHours", DEFAULT_RETENTION_HOURS), "MessageRetentionInHours", where
    )
    if not 0 < retention <= MAX_RETENTION_HOURS:
        raise ConfigError(f"{where}: MessageRetentionInHours must be positive and at most {MAX_RETENTION_HOURS:.0f}, "
                          f"got {retention}")
    return HubConfig(name=name, partition_count=int(count), consumer_groups=tuple(groups), retention_hours=retention)


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _number(value: Any, key: str, where: str) -> float:
    """``value`` as a finite float: ``"inf"``, ``"nan"`` (and JSON's ``Infinity``/``NaN``) are not numbers here."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    return number
