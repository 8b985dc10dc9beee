-- uses: _extend _sentinel _field _newer _member
-- Critical events of a device read from the store, merged into its set with their completeness bound.
-- KEYS: d:{<device>}:crit, then d:{<device>}:ce:<event id> per event (all in the device's slot).
-- ARGV: covers-since (ms), the set's ttl, cap, then score, document and member key ttl per event. A member key
-- ttl <= 0 (a rebuild's event enqueued longer than the TTL ago, whose key the feed would have let expire) puts the
-- event in the set without its member key (_member.lua finds it there).
-- Every event given ends up in the set before the bound is set: a member key whose copy the set does not hold
-- (left over after the set was deleted or trimmed) is no reason to skip the event, so it is overwritten. Events
-- without a usable member key are looked up in the set by id (_member.lua) in one pass for the whole fill.
-- A copy enqueued before the time of a "#gone:" marker in its member key (uncritical.lua: a correction took the
-- event out of this set while the fill read the store) is superseded and left out; the marker is decoded only where
-- one is there.
local ttl = tonumber(ARGV[2])
local found = nil
for i = 2, #KEYS do
  local score, doc, member_ttl = ARGV[3 * i - 2], ARGV[3 * i - 1], tonumber(ARGV[3 * i])
  local id = member_id(KEYS[i])
  local previous = redis.call('GET', KEYS[i])
  local marked = gone(previous)
  if marked then previous = false end
  if previous and not redis.call('ZSCORE', KEYS[1], previous) then previous = false end
  if not (marked and enqueued(doc) < marked) then  -- else superseded: a correction took it out of this set
    if not previous then
      if not found then
        local wanted = {}
        for j = 2, #KEYS do wanted[member_id(KEYS[j])] = true end
        found = copies(KEYS[1], wanted)
      end
      previous = found[id] or false
    end
    if not keeps(previous, doc) then  -- else a copy of this event enqueued later is there
      if previous and previous ~= doc then redis.call('ZREM', KEYS[1], previous) end
      if member_ttl > 0 then
        redis.call('SET', KEYS[i], doc, 'KEEPTTL')
        extend(KEYS[i], member_ttl)
      else
        redis.call('DEL', KEYS[i])  -- no other copy's key is left naming what the set no longer holds
      end
      redis.call('ZADD', KEYS[1], score, doc)
      if found then found[id] = doc end
    end
  end
end
local s = sentinel(KEYS[1])
local covers = tonumber(ARGV[1])
if (not s) or covers < tonumber(string.sub(s, 8)) then set_since(KEYS[1], s, covers) end
trim(KEYS[1], tonumber(ARGV[3]))
extend(KEYS[1], ttl)
return 1
