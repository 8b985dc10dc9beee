-- uses: _field _newer
-- A device's latest state that names an event a correction moved to another device id (or the copy it moved
-- from, read again by the feed) is dropped: the store no longer has that event for this device, and a clean
-- pass or `sluice rebuild redis` writes no such state. Sent by the change feed only for the devices
-- fill_event.lua answered (its field `o`), in the device's slot.
-- KEYS: d:{<device>}:latest. ARGV: event id, the enqueued time of the copy under the other device.
-- Only a state naming that event as a copy enqueued before that time goes (a later copy, under this device
-- again, stays); the document is decoded only when the sort key names the event. 1: dropped, else 0.
local stored = redis.call('HMGET', KEYS[1], 'k', 'd')
local key, doc = stored[1], stored[2]
if not (key and doc) then return 0 end
local suffix = ':' .. ARGV[1]
if string.sub(key, -#suffix) ~= suffix or enqueued(doc) >= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
