-- uses: _extend _field _newer
-- An event by id (written by the change feed for critical events, and by lookup fills).
-- KEYS: e:<event id>. ARGV: document, ttl  |  ARGV: enqueued time, "", "stale", marker ttl.
-- "stale" (the change feed, for an event that is not critical, which it does not cache by id itself): a copy a
-- lookup cached that was enqueued before this one (the id re-sent with other content), or its "not found", is
-- dropped, so the next lookup reads the stored copy; a copy as new or newer stays. Only the enqueued time is sent:
-- the feed does not encode a document for every event. It also notes that time in field `n` (for at least the
-- marker ttl, longer than a lookup's read): a lookup that read the store before this copy was written and fills
-- after it finds the note, so neither its older copy nor its "not found" is cached (negative.lua) for an hour.
-- Where the dropped copy was critical (a correction made the event not critical), field `u` keeps this copy's
-- enqueued time: the feed then takes the event out of its device's set (uncritical.lua), and a page written again
-- after a failure is told so again. 0: nothing dropped; 1: dropped; 2: the event is to leave its device's set.
if ARGV[3] == 'stale' then
  local found = redis.call('HMGET', KEYS[1], 'd', 'n', 'u')
  local cached, noted, uncritical = found[1], found[2], found[3]
  local reply = 0
  -- the notes go in before the copy goes out: the key never empties, so it keeps the copy's TTL (and `u` with it)
  if (not noted) or noted < ARGV[1] then redis.call('HSET', KEYS[1], 'n', ARGV[1]) end
  if cached and (cached == '' or enqueued(cached) < ARGV[1]) then  -- '': a cached "not found"
    reply = 1
    local ok, decoded = pcall(cjson.decode, cached)
    if ok and type(decoded) == 'table' and decoded['critical'] == true then
      redis.call('HSET', KEYS[1], 'u', ARGV[1])
      reply = 2
    end
    redis.call('HDEL', KEYS[1], 'd')
  elseif uncritical == ARGV[1] then
    reply = 2
  end
  extend(KEYS[1], tonumber(ARGV[4]))
  return reply
end
local noted = redis.call('HGET', KEYS[1], 'n')
if noted and enqueued(ARGV[1]) < noted then return 0 end  -- the feed applied a copy enqueued later
if keeps(redis.call('HGET', KEYS[1], 'd'), ARGV[1]) then return 0 end  -- a copy enqueued later is there
redis.call('HSET', KEYS[1], 'd', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
return 1
