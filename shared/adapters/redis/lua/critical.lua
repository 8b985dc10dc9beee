-- uses: _extend _sentinel _field _member _newer
-- A critical event into its device's set; every key is in the device's slot ({<device>}).
-- KEYS: d:{<device>}:ce:<event id>, d:{<device>}:crit.
-- ARGV: document, score (event time ms), ttl, per-device cap.
-- The previous document of the event (a re-sent event differs in its enqueued time) leaves the set
-- first, so the set holds one member per event.
local ttl = tonumber(ARGV[3])
local previous = redis.call('GET', KEYS[1])
if keeps(previous, ARGV[1]) then return 0 end  -- a copy of this event enqueued later is there
drop_previous(KEYS[1], KEYS[2], ARGV[2], ARGV[1], previous)
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
extend(KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
trim(KEYS[2], tonumber(ARGV[4]))
extend(KEYS[2], ttl)
return 1
