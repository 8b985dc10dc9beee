-- Take the event's previous document out of its device's critical set, so the set holds one member per event.
-- The member key (d:{<device>}:ce:<event id>) holds that document; when it has expired before the set (the set's
-- TTL is renewed by every critical event of the device, the member key only by its own event), the document is
-- found among the set's members of the same event time by its (top-level) event id. `previous`: the member key's value (GET).
local function drop_previous(member_key, zkey, score, doc, previous)
  if previous then
    if previous ~= doc then redis.call('ZREM', zkey, previous) end
    return
  end
  local event_id = string.match(member_key, ':ce:([^:]+)$')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zkey, score, score)) do
    if member ~= doc and field(member, 'event_id') == event_id then redis.call('ZREM', zkey, member) end
  end
end
