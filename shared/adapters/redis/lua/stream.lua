-- uses: _extend
-- A critical event onto its stream shard, once; both keys are in the shard's slot ({<shard>}).
-- KEYS: critical:stream:{<shard>}, critical:seen:{<shard>}:<event id>.
-- ARGV: ttl, stream cap (per shard), event id, device id, document.
-- Returns 1 when the event was added now, 0 when it was already there (a replayed page).
local ttl = tonumber(ARGV[1])
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ttl) then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event_id', ARGV[3], 'device_id', ARGV[4], 'event', ARGV[5])
extend(KEYS[1], ttl)
return 1
