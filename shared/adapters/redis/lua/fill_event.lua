-- uses: _extend _field _newer
-- An event by id (written by the change feed for critical events, and by lookup fills).
-- KEYS: e:<event id>. ARGV: document, ttl  |  ARGV: enqueued time, "", "stale".
-- "stale" (the change feed, for an event that is not critical, which it does not cache by id itself): a copy a
-- lookup cached that was enqueued before this one (the id re-sent with other content), or its "not found", is
-- dropped, so the next lookup reads the stored copy; a copy as new or newer stays. 1: dropped; 2: dropped, and it
-- was a critical copy (a correction made the event not critical: the feed then takes it out of its device's set,
-- uncritical.lua). Only the enqueued time is sent: the feed does not encode a document for every event.
if ARGV[3] == 'stale' then
  local cached = redis.call('HGET', KEYS[1], 'd')
  if cached and (cached == '' or enqueued(cached) < ARGV[1]) then  -- '': a cached "not found"
    redis.call('UNLINK', KEYS[1])
    local ok, decoded = pcall(cjson.decode, cached)
    if ok and type(decoded) == 'table' and decoded['critical'] == true then return 2 end
    return 1
  end
  return 0
end
if keeps(redis.call('HGET', KEYS[1], 'd'), ARGV[1]) then return 0 end  -- a copy enqueued later is there
redis.call('HSET', KEYS[1], 'd', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
return 1
