-- uses: _sentinel
-- Up to `limit` critical documents at or after `since`, newest first; nil when the set cannot answer exactly.
-- KEYS: d:{<device>}:crit. ARGV: since (ms), limit.
local s = sentinel(KEYS[1])
if not s then return false end
local complete = tonumber(string.sub(s, 8))
local since = tonumber(ARGV[1])
local bound = math.max(complete, since)
local docs = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', string.format('%.0f', bound), 'LIMIT', 0, ARGV[2])
if #docs >= tonumber(ARGV[2]) or complete <= since then return docs end
return false
