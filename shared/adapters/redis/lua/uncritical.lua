-- uses: _field _newer _member
-- A critical event corrected into one that is not critical leaves its device's set; every key is in the device's
-- slot ({<device>}). Sent by the change feed only when fill_event.lua dropped a critical copy of the event for it.
-- KEYS: d:{<device>}:ce:<event id>, d:{<device>}:crit. ARGV: the enqueued time of the copy that is not critical.
-- A copy in the set enqueued at or after that time stays (a later re-send made it critical again); 1: removed.
local previous = redis.call('GET', KEYS[1])
if not previous then  -- its member key expired before the set (_member.lua)
  local id = member_id(KEYS[1])
  previous = copies(KEYS[2], {[id] = true})[id] or false
end
if not previous or enqueued(previous) >= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], previous)
redis.call('UNLINK', KEYS[1])
return 1
