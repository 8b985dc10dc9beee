"""Redis adapters: ``RedisChangeSink`` (the change feed's writes) and ``RedisLookupCache`` (cache-aside).

Both use one key layout (``keys.py``, ``docs/redis-layout.md``) whose multi-key
scripts each stay in one hash slot, so they run on a single Redis and on a Redis
Cluster alike; the scripts live in ``lua/``.
"""

from shared.adapters.redis.change_sink import RedisChangeSink
from shared.adapters.redis.client import RedisConnection
from shared.adapters.redis.generations import Pointer, RedisGenerations, generation_prefix
from shared.adapters.redis.keys import Keys, sort_key
from shared.adapters.redis.lookup_cache import RedisLookupCache

__all__ = ["Keys", "Pointer", "RedisChangeSink", "RedisConnection", "RedisGenerations", "RedisLookupCache",
           "generation_prefix", "sort_key"]
