-- uses: _sentinel
-- Up to `limit` critical documents at or after `since`, newest first; nil when the set cannot answer exactly.
-- KEYS: d:{<device>}:crit. ARGV: since (ms), limit.
-- Events of one millisecond come in event id order, as Cassandra's critical_events_by_device clusters them
-- (event_time DESC, event_id), so a hit answers as the miss before it did: the members of one score are the
-- JSON documents, which Redis orders by their bytes, so each tie is sorted here, and a tie cut by the limit is
-- read whole first.
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
local function id(doc) return string.match(doc, '"event_id":"([^"]*)"') or '' end
local by_id = function(a, b) return id(a) < id(b) end
local docs, group, score = {}, {}, nil
local function flush()
  if #group > 1 then table.sort(group, by_id) end
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
