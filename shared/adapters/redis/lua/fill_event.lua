-- uses: _extend _newer
-- An event by id (written by the change feed for critical events, and by lookup fills).
-- KEYS: e:<event id>. ARGV: document, ttl.
if keeps(redis.call('HGET', KEYS[1], 'd'), ARGV[1]) then return 0 end  -- a copy enqueued later is there
redis.call('HSET', KEYS[1], 'd', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
return 1
