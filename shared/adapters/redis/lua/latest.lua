-- uses: _extend
-- The latest state of a device, replaced only by a newer event.
-- KEYS: d:{<device>}:latest. ARGV: sort key, document, ttl.
local current = redis.call('HGET', KEYS[1], 'k')
if (not current) or ARGV[1] > current then
  redis.call('HSET', KEYS[1], 'k', ARGV[1], 'd', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
elseif ARGV[1] == current then
  extend(KEYS[1], tonumber(ARGV[3]))
end
return 1
