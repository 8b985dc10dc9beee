-- uses: _extend _newer
-- An event by id (written by the change feed, and by lookup fills).
-- KEYS: e:<event id>. ARGV: document, ttl[, "present"].
-- With "present" (the change feed, for an event that is not critical) only a key that is there is written, and
-- its TTL kept: a lookup cached the event (or its absence), and a re-send of it must not leave that copy
-- served; the feed does not cache every event by id itself. 0: nothing written.
local previous = redis.call('HGET', KEYS[1], 'd')
if (not previous) and ARGV[3] == 'present' then return 0 end
if keeps(previous, ARGV[1]) then return 0 end  -- a copy enqueued later is there
redis.call('HSET', KEYS[1], 'd', ARGV[1])
if ARGV[3] ~= 'present' then extend(KEYS[1], tonumber(ARGV[2])) end
return 1
