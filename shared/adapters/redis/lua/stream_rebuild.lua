-- uses: _field
-- The critical stream shard of a generation being built, rewritten in event time order at the end of a rebuild.
-- KEYS: critical:stream:{<shard>}. ARGV: ttl (what the feed would have left of the shard's: from the latest
-- enqueued time of its candidates; the TTL the feed's entries of the build gave the shard counts too, the longer
-- one wins), stream cap (per shard), then per candidate of the shard: event time (ms), event id, device id,
-- document.
-- The shard already holds what the change feed added during the build (in arrival order, entry ids from the
-- clock); those and the candidates (one entry per event id, the feed's copy kept) are written again oldest
-- first, the newest `cap` only, each with the entry id `<event time ms>-<n>` (n counts events of one
-- millisecond, in event id order; a time before 1970 counts as 0), so the shards merge by event time on read
-- and the trim drops the oldest. An event time after the script's own clock (TIME: a device clock ahead,
-- which ingest accepts within its future skew) is taken as that clock: the shard's last id is never ahead of
-- the master's clock, so an entry the feed adds after it (`XADD *`, an id from that clock) sorts after it
-- and among the other shards' entries by its arrival, not minutes ahead of them. Atomic, so no entry the
-- feed adds meanwhile is lost: it comes after, with an id from the clock. Running it again (a rebuild
-- resumed after a kill) writes the same shard.
local function epoch_ms(doc)
  local y, mo, d, h, mi, s, ms = string.match(field(doc, 'timestamp'), '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z$')
  if not y then return 0 end
  y, mo = tonumber(y), tonumber(mo)
  if mo <= 2 then y = y - 1 end  -- days from the civil date (Howard Hinnant's algorithm), years from March
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
  return ((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60000 + tonumber(s) * 1000 + tonumber(ms)
end
local entries, seen = {}, {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  local id = fields['event_id']
  if id and fields['event'] and not seen[id] then
    seen[id] = true
    table.insert(entries, {epoch_ms(fields['event']), id, fields['device_id'] or '', fields['event']})
  end
end
for i = 3, #ARGV, 4 do
  if not seen[ARGV[i + 1]] then
    seen[ARGV[i + 1]] = true
    table.insert(entries, {tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]})
  end
end
table.sort(entries, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local ttl = math.max(tonumber(ARGV[1]), redis.call('TTL', KEYS[1]))
redis.call('DEL', KEYS[1])
local cap = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local last_ms, n = -1, 0
for i = math.max(1, #entries - cap + 1), #entries do
  local e = entries[i]
  local ms = math.min(math.max(e[1], 0), now_ms)  -- sorted by event time: capped, the ids still only grow
  if ms > last_ms then last_ms, n = ms, 0 else n = n + 1 end
  if last_ms == 0 and n == 0 then n = 1 end  -- 0-0 is no valid entry id
  redis.call('XADD', KEYS[1], string.format('%.0f-%d', last_ms, n), 'event_id', e[2], 'device_id', e[3],
             'event', e[4])
end
if #entries > 0 and ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return #entries
