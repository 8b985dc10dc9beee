-- The set holds one member per event. An event's member key (d:{<device>}:ce:<event id>) holds its copy in the
-- set, but it may expire long before the set: a lookup fill gives it the lookups' TTL (an hour) while every later
-- critical event of the device renews the set to the change feed's TTL (days). Then the event's copy is found in
-- the set itself, at any event time (a correction is re-sent with another one): one pass over the set (capped, so
-- at most cap + 1 members) that looks for the text "event_id":"<id>" in each document, confirmed by decoding the
-- few that contain it (an attribute may hold the same text; the documents are compact, keys sorted). Of several
-- copies of one event (a release before this one could add them) the one keeps() prefers is returned and the
-- others leave the set.
local function member_id(member_key) return string.match(member_key, ':ce:([^:]+)$') end
-- event id -> the set's copy, for the ids in `wanted` (event id -> true)
local function copies(zkey, wanted)
  local found = {}
  for _, member in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
    local hit = false
    for id in string.gmatch(member, '"event_id":"([^"]*)"') do
      if wanted[id] then hit = true; break end
    end
    local id = hit and field(member, 'event_id')
    if id and wanted[id] then
      local other = found[id]
      if other and keeps(other, member) then
        redis.call('ZREM', zkey, member)
      else
        if other then redis.call('ZREM', zkey, other) end
        found[id] = member
      end
    end
  end
  return found
end
-- A member key a correction left (uncritical.lua) holds "#gone:<enqueued time of the superseding copy>" for a
-- short while instead of a document (which starts with "{"): its time, or nil for anything else.
local function gone(value)
  if value and string.sub(value, 1, 6) == '#gone:' then return string.sub(value, 7) end
  return nil
end
