-- Extend a key's TTL, never shorten it (a lookup fill must not cut short what the change feed wrote).
local function extend(key, ttl)
  local current = redis.call('TTL', key)
  if current < ttl then redis.call('EXPIRE', key, ttl) end
end
