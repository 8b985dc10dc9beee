-- uses: _extend _sentinel _field _newer _member
-- A critical event into its device's set; every key is in the device's slot ({<device>}).
-- KEYS: d:{<device>}:ce:<event id>, d:{<device>}:crit.
-- ARGV: document, score (event time ms), ttl, per-device cap.
-- The previous copy of the event (a re-sent event differs in its enqueued time, a correction also in its event
-- time) leaves the set first, so the set holds one member per event; a copy enqueued later stays instead, and
-- so does a "#gone:" marker of a later time (uncritical.lua).
local ttl = tonumber(ARGV[3])
local previous = redis.call('GET', KEYS[1])
local marked = gone(previous)
if marked then  -- a correction took the event out of this set a moment ago (uncritical.lua)
  if enqueued(ARGV[1]) < marked then return 0 end  -- this copy is one it superseded (a page written again)
  previous = false
end
if not previous then  -- a new event, or its member key expired before the set (_member.lua)
  local id = member_id(KEYS[1])
  previous = copies(KEYS[2], {[id] = true})[id] or false
end
if keeps(previous, ARGV[1]) then return 0 end  -- a copy of this event enqueued later is there
if previous and previous ~= ARGV[1] then redis.call('ZREM', KEYS[2], previous) end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
extend(KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
trim(KEYS[2], tonumber(ARGV[4]))
extend(KEYS[2], ttl)
return 1
