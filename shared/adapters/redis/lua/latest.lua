-- uses: _extend _field _newer
-- The latest state of a device, replaced only by a newer event.
-- KEYS: d:{<device>}:latest. ARGV: sort key, document, ttl[, "present"].
-- With "present" (the change feed) a missing key is not created and 0 is returned: the key expired, was
-- evicted or never written, and an event of the feed may be older than the device's newest, so the caller
-- puts the store's latest state instead (without the flag: a state read from the store, created if missing).
-- At an equal sort key (the same event again, possibly re-sent with other content) the copy enqueued later
-- stays, as in e:<id> and the critical set, whichever writer comes last. The TTL is only ever extended, except
-- when the key is created.
local stored = redis.call('HMGET', KEYS[1], 'k', 'd')
local current = stored[1]
if (not current) and ARGV[4] == 'present' then return 0 end
if not current then  -- created: the writer's TTL (a negative entry, k = '', is replaced below, its TTL extended)
  redis.call('HSET', KEYS[1], 'k', ARGV[1], 'd', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
elseif ARGV[1] > current then  -- a newer state: a lookup fill's shorter TTL must not cut what the feed set
  redis.call('HSET', KEYS[1], 'k', ARGV[1], 'd', ARGV[2])
  extend(KEYS[1], tonumber(ARGV[3]))
elseif ARGV[1] == current then
  if not keeps(stored[2], ARGV[2]) then redis.call('HSET', KEYS[1], 'd', ARGV[2]) end
  extend(KEYS[1], tonumber(ARGV[3]))
end
return 1
