-- uses: _field _newer _member
-- A critical copy a correction superseded (the event made not critical, or moved to another device id) leaves its
-- device's set; every key is in the device's slot ({<device>}). Sent by the change feed only for the devices
-- fill_event.lua answered (fields `u`, `v` of e:<event id>).
-- KEYS: d:{<device>}:ce:<event id>, d:{<device>}:crit. ARGV: the enqueued time of the superseding copy.
-- A copy in the set enqueued at or after that time stays (the current copy, critical on this device); 1: removed.
local previous = redis.call('GET', KEYS[1])
if not previous then  -- its member key expired before the set (_member.lua)
  local id = member_id(KEYS[1])
  previous = copies(KEYS[2], {[id] = true})[id] or false
end
if not previous or enqueued(previous) >= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], previous)
redis.call('UNLINK', KEYS[1])
return 1
