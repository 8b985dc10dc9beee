-- uses: _field _newer _member
-- A critical copy a correction superseded (the event made not critical, or moved to another device id) leaves its
-- device's set; every key is in the device's slot ({<device>}). Sent by the change feed only for the devices
-- fill_event.lua answered (fields `u`, `v` of e:<event id>).
-- KEYS: d:{<device>}:ce:<event id>, d:{<device>}:crit. ARGV: the enqueued time of the superseding copy, marker ttl.
-- A copy in the set enqueued at or after that time stays (the current copy, critical on this device). Otherwise
-- the member key keeps "#gone:<that time>" for the marker ttl (fill_event.lua's `n` lives as long, longer than a
-- lookup's read): a lookup that read the store before the correction and fills after this ran finds it, and
-- fill_critical.lua (critical.lua too) leaves out every copy enqueued before it. 1: a member removed, else 0.
local previous = redis.call('GET', KEYS[1])
local marked = gone(previous)
if marked then previous = false end
if not previous then  -- its member key expired before the set (_member.lua), or a marker is there
  local id = member_id(KEYS[1])
  previous = copies(KEYS[2], {[id] = true})[id] or false
end
if previous and enqueued(previous) >= ARGV[1] then return 0 end
local removed = 0
if previous then
  redis.call('ZREM', KEYS[2], previous)
  removed = 1
end
if (not marked) or marked < ARGV[1] then
  redis.call('SET', KEYS[1], '#gone:' .. ARGV[1], 'EX', tonumber(ARGV[2]))
end
return removed
