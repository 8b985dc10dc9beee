-- uses: _extend _field _newer
-- An event by id (written by the change feed for critical events, and by lookup fills).
-- KEYS: e:<event id>. ARGV: document, ttl[, "feed", device, enqueued time]  |  ARGV: enqueued time, "", "stale",
-- marker ttl[, device].
-- "stale" (the change feed, for an event that is not critical, which it does not cache by id itself): a copy a
-- lookup cached that was enqueued before this one (the id re-sent with other content), or its "not found", is
-- dropped, so the next lookup reads the stored copy; a copy as new or newer stays. Only the enqueued time is sent:
-- the feed does not encode a document for every event. It also notes that time in field `n` (for at least the
-- marker ttl, longer than a lookup's read): a lookup that read the store before this copy was written and fills
-- after it finds the note, so neither its older copy nor its "not found" is cached (negative.lua) for an hour.
-- A critical copy that goes (dropped by "stale": a correction made the event not critical; or replaced by a copy
-- under another device id, or by one that is not critical) leaves a member in its device's set, which the feed
-- then removes (uncritical.lua): field `v` lists those devices (JSON), field `u` the enqueued time of the first
-- copy that superseded one of them. Every copy enqueued at or after `u` answers `v`, so a page written again after
-- a failure is told so again, also as a later copy (the Cosmos feed returns a row's latest version only);
-- uncritical.lua keeps a set's copy enqueued at or after the time it is sent, so a device whose set holds the
-- current copy (critical there again) keeps it. None of this runs for an event that never was corrected.
-- Replies: 0 (nothing written, or nothing dropped), 1 (written, dropped), or the devices of `v`; 2: `u` without
-- `v` (written by the release before this one): the event leaves its own device's set.
-- "feed" (the change feed's critical copy, which critical.lua has just put in its device's set): a copy refused
-- because a later one superseded it (note `n`, or a `d` enqueued later), e.g. a replay after a correction once the
-- "#gone:" marker expired, answers that later copy's enqueued time (a string) instead of 0, and the feed sends
-- uncritical.lua for the copy's device with it (a set's copy enqueued at or after it stays). Decoded only then.
-- The change feed also sends the copy's device and enqueued time (ARGV[4], ARGV[5] with "feed"; ARGV[5] with
-- "stale": its enqueued time is ARGV[1]). Field `o` keeps "<enqueued time> <device>" of the newest copy it sent,
-- written with the fields each mode writes anyway. A copy under another device than `o` names (a correction that
-- moved the event, or the copy it moved from, read again) answers {{device, time, ...}, reply}: each device whose
-- latest state may still name the event as a copy enqueued before its `time`, which the feed then drops there
-- (unlatest.lua). Without `o` (it expired with the note `n`) a cached copy `d` tells the device instead.
-- Field `m` keeps the devices a copy moved the event away from, each with the enqueued time of the copy that
-- moved it (JSON object; the latest such time per device), written with `o`: `o` then names the new copy, so a
-- page written again after a failure (the feed's second pipeline, which carries unlatest.lua, did not run) would
-- find no move; every copy enqueued at or after a device's time answers it again, as `v`/`u` are answered.
local function decoded(doc)
  local ok, value = pcall(cjson.decode, doc)
  if ok and type(value) == 'table' then return value end
  return {}
end
-- `v` and `u` with `device` added, where the copy `gone` was critical and `kept` (nil: no copy) leaves its set
local function leaving(devices, since, gone, kept, time)
  local old = decoded(gone)
  if old['critical'] ~= true or type(old['device_id']) ~= 'string' then return devices, since end
  if kept and kept['critical'] == true and kept['device_id'] == old['device_id'] then return devices, since end
  local list = devices and decoded(devices) or {}
  for _, device in ipairs(list) do
    if device == old['device_id'] then return devices, since end
  end
  table.insert(list, old['device_id'])
  devices = cjson.encode(list)
  if (not since) or time < since then since = time end
  redis.call('HSET', KEYS[1], 'v', devices, 'u', since)
  return devices, since
end
local function answer(reply, devices, since, time)
  if since and since <= time then
    if devices then return decoded(devices) end
    return 2
  end
  return reply
end
-- The feed's copy: its device and enqueued time (nil for a lookup's or a rebuild's fill)
local sent_device, sent_at
if ARGV[3] == 'stale' then sent_device, sent_at = ARGV[5], ARGV[1]
elseif ARGV[3] == 'feed' then sent_device, sent_at = ARGV[4], ARGV[5] end
local owner = {}  -- fields to write (owner.note: `o`, owner.moves: `m`), and the devices to answer (owner.moved)
local function own(noted, cached, moves)
  if not sent_device then return end
  local at, other
  if noted then
    local space = string.find(noted, ' ', 1, true)
    at, other = string.sub(noted, 1, space - 1), string.sub(noted, space + 1)
  elseif cached and cached ~= '' then  -- decoded only where a copy is there and `o` is not
    at, other = enqueued(cached), field(cached, 'device_id')
  end
  if (not at) or at < sent_at then owner.note = sent_at .. ' ' .. sent_device end
  local answered = {}  -- device -> the time to answer with
  local function add(device, time)
    if (not answered[device]) or answered[device] < time then answered[device] = time end
  end
  local known = moves and decoded(moves) or {}  -- decoded only for an event once moved
  for device, time in pairs(known) do
    if type(device) == 'string' and type(time) == 'string' and time <= sent_at then add(device, time) end
  end
  if other and other ~= sent_device and at ~= sent_at then
    if at < sent_at then
      add(other, sent_at)
      if type(known[other]) ~= 'string' or known[other] < sent_at then  -- `o` is rewritten: `m` keeps the move
        known[other] = sent_at
        owner.moves = cjson.encode(known)
      end
    else add(sent_device, at) end
  end
  local devices = {}
  for device in pairs(answered) do table.insert(devices, device) end
  if #devices == 0 then return end
  table.sort(devices)
  owner.moved = {}
  for _, device in ipairs(devices) do
    table.insert(owner.moved, device); table.insert(owner.moved, answered[device])
  end
end
local function pending()  -- `o` and `m` still to write, as HSET arguments
  local list = {}
  if owner.note then
    table.insert(list, 'o'); table.insert(list, owner.note); owner.note = nil
  end
  if owner.moves then
    table.insert(list, 'm'); table.insert(list, owner.moves); owner.moves = nil
  end
  return list
end
local function fields(...)  -- HSET arguments with `o` and `m` added where they are to be written
  local list = {...}
  for _, value in ipairs(pending()) do table.insert(list, value) end
  return list
end
local function main()
  if ARGV[3] == 'stale' then
    local found = redis.call('HMGET', KEYS[1], 'd', 'n', 'u', 'v', 'o', 'm')
    local cached, noted, since, devices = found[1], found[2], found[3], found[4]
    own(found[5], cached, found[6])
    local reply = 0
    -- the notes go in before the copy goes out: the key never empties, so it keeps the copy's TTL (and `u` with it)
    if (not noted) or noted < ARGV[1] then redis.call('HSET', KEYS[1], unpack(fields('n', ARGV[1]))) end
    if cached and (cached == '' or enqueued(cached) < ARGV[1]) then  -- '': a cached "not found"
      reply = 1
      if cached ~= '' then devices, since = leaving(devices, since, cached, nil, ARGV[1]) end
      redis.call('HDEL', KEYS[1], 'd')
    end
    extend(KEYS[1], tonumber(ARGV[4]))
    return answer(reply, devices, since, ARGV[1])
  end
  local found = redis.call('HMGET', KEYS[1], 'n', 'd', 'u', 'v', 'o', 'm')
  local noted, previous, since, devices = found[1], found[2], found[3], found[4]
  own(found[5], previous ~= ARGV[1] and previous, found[6])
  -- refused: superseded by a copy enqueued at `later` (nil: at the same time); the feed is told that time
  local function refused(later)
    if later and ARGV[3] == 'feed' and enqueued(ARGV[1]) < later then return later end
    return 0
  end
  if noted and enqueued(ARGV[1]) < noted then return refused(noted) end  -- the feed applied a copy enqueued later
  if keeps(previous, ARGV[1]) then  -- a copy enqueued later is there
    return refused(ARGV[3] == 'feed' and enqueued(previous) or nil)
  end
  local time = (previous or since) and enqueued(ARGV[1])  -- decoded only where a copy or `u` is there
  if previous and previous ~= '' and previous ~= ARGV[1] then
    devices, since = leaving(devices, since, previous, decoded(ARGV[1]), time)
  end
  redis.call('HSET', KEYS[1], unpack(fields('d', ARGV[1])))
  extend(KEYS[1], tonumber(ARGV[2]))
  return answer(1, devices, since, time)
end
local reply = main()
local left = pending()  -- the feed's copy noted nowhere else
if #left > 0 then redis.call('HSET', KEYS[1], unpack(left)) end
if owner.moved then return {owner.moved, reply} end
return reply
