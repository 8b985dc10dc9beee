-- uses: _sentinel _field
-- Up to `limit` critical documents at or after `since`, newest first; nil when the set cannot answer exactly.
-- KEYS: d:{<device>}:crit. ARGV: since (ms), limit.
-- Events of one millisecond come in event id order, as Cassandra's critical_events_by_device clusters them
-- (event_time DESC, event_id), so a hit answers as the miss before it did: the members of one score are the
-- JSON documents, which Redis orders by their bytes, so each tie is sorted here, and a tie cut by the limit is
-- read whole first. event_id is a CQL uuid, ordered by Cassandra's UUIDType: by version, then for version 1
-- (time-based) by the 60-bit timestamp, else by the most significant 64 bits; then by the least significant 64
-- bits, all unsigned. `uuid_order` spells that as text that sorts so.
local s = sentinel(KEYS[1])
if not s then return false end
local complete = tonumber(string.sub(s, 8))
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local bound = string.format('%.0f', math.max(complete, since))
local raw = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', bound, 'WITHSCORES', 'LIMIT', 0, limit)
local n = #raw / 2
if n < limit and complete > since then return false end
if n >= limit then  -- the last score's tie may go on past the cut: take all of it
  local last = raw[#raw]
  while #raw > 0 and raw[#raw] == last do
    table.remove(raw); table.remove(raw)
  end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], last, last)) do
    table.insert(raw, member); table.insert(raw, last)
  end
end
local function uuid_order(id)
  local u = string.lower(id)
  if not string.match(u, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') then
    return 'g' .. u  -- no UUID (a member a buggy release wrote): after every UUID (versions are hex digits)
  end
  local version, msb = string.sub(u, 15, 15), string.sub(u, 1, 8) .. string.sub(u, 10, 13) .. string.sub(u, 15, 18)
  if version == '1' then  -- time_hi_and_version, time_mid, time_low (TimeUUIDType.reorderTimestampBytes)
    msb = string.sub(u, 15, 18) .. string.sub(u, 10, 13) .. string.sub(u, 1, 8)
  end
  return version .. msb .. string.sub(u, 20, 23) .. string.sub(u, 25, 36)
end
local function by_id(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end
local docs, group, score = {}, {}, nil
local function flush()
  if #group > 1 then  -- ties only: most scores hold one member, which is not decoded
    local keyed = {}
    for i, doc in ipairs(group) do keyed[i] = {uuid_order(field(doc, 'event_id')), doc} end
    table.sort(keyed, by_id)
    for i, entry in ipairs(keyed) do group[i] = entry[2] end
  end
  for _, doc in ipairs(group) do
    if #docs < limit then table.insert(docs, doc) end
  end
  group = {}
end
for i = 1, #raw, 2 do
  if raw[i + 1] ~= score then flush(); score = raw[i + 1] end
  table.insert(group, raw[i])
end
flush()
return docs
