"""Key names of the Redis layout (``docs/redis-layout.md``), under one prefix.

Every key that a script or a pipeline touches together carries the same hash tag,
so a clustered Redis (OSS cluster policy) finds each script's keys in one slot:

* per device, tag ``{<device id>}``: ``d:{<device>}:latest``, ``d:{<device>}:crit`` and
  ``d:{<device>}:ce:<event id>`` (the event's member of the set);
* per stream shard, tag ``{<shard>}``: ``critical:stream:{<shard>}`` and
  ``critical:seen:{<shard>}:<event id>``; a device's critical events all go to shard
  ``crc32(device id) mod shards``;
* ``e:<event id>`` is read and written alone (no tag needed).

The same names serve a single Redis, where tags are just characters.

Every name is under the prefix of one key generation (``generations.py``):
``<prefix>`` for generation 0, ``<prefix>g<n>:`` for generation n. The generation
is outside the tag, so ``g3:d:{dev}:latest`` still hashes by ``dev``.
"""

from __future__ import annotations

import zlib

from shared.domain.stored import StoredEvent

_EPOCH_OFFSET = 2**53  # keeps sort keys non-negative and fixed-width (17 digits) for any event time


def sort_key(event: StoredEvent) -> str:
    """``<17-digit offset ms>:<event id>``: compares as ``StoredEvent.newer_than`` orders."""
    return f"{event.event_time_ms + _EPOCH_OFFSET:017d}:{event.event_id}"


def check_prefix(prefix: str) -> str:
    """A key prefix must not hold a hash tag of its own (it would put every key in one slot)."""
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"Redis key prefix {prefix!r} must not contain '{{' or '}}' (hash tags are Sluice's)")
    return prefix


class Keys:
    """Key names under one prefix, with ``stream_shards`` shards of the critical stream."""

    def __init__(self, prefix: str, stream_shards: int = 8) -> None:
        self.prefix = check_prefix(prefix)
        if stream_shards < 1:
            raise ValueError(f"stream_shards must be at least 1, got {stream_shards}")
        self.stream_shards = stream_shards
        self.streams = [f"{prefix}critical:stream:{{{shard}}}" for shard in range(stream_shards)]

    def latest(self, device_id: str) -> str:
        return f"{self.prefix}d:{{{device_id}}}:latest"

    def critical(self, device_id: str) -> str:
        return f"{self.prefix}d:{{{device_id}}}:crit"

    def member(self, device_id: str, event_id: object) -> str:
        """The document the device's critical set holds for this event (so a re-sent event replaces it)."""
        return f"{self.prefix}d:{{{device_id}}}:ce:{event_id}"

    def event(self, event_id: object) -> str:
        return f"{self.prefix}e:{event_id}"

    def shard(self, device_id: str) -> int:
        return zlib.crc32(device_id.encode()) % self.stream_shards

    def stream(self, device_id: str) -> str:
        """The stream shard that holds the device's critical events."""
        return self.streams[self.shard(device_id)]

    def seen(self, device_id: str, event_id: object) -> str:
        """The marker that the event is on its stream shard (same slot as the shard)."""
        return f"{self.prefix}critical:seen:{{{self.shard(device_id)}}}:{event_id}"
