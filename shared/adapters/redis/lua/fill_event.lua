-- uses: _extend
-- An event by id (written by the change feed for critical events, and by lookup fills).
-- KEYS: e:<event id>. ARGV: document, ttl.
redis.call('HSET', KEYS[1], 'd', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
return 1
