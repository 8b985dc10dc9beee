-- The per-device critical set carries its own completeness bound as a sentinel member
-- "#since:<ms>" with score -inf: every critical event with event time >= ms is in the set.
-- Range reads (finite bounds) never return it; it expires and is evicted with the set.
local function sentinel(zkey)
  local first = redis.call('ZRANGE', zkey, 0, 0)
  if first[1] and string.sub(first[1], 1, 7) == '#since:' then return first[1] end
  return nil
end
local function set_since(zkey, old, ms)
  if old then redis.call('ZREM', zkey, old) end
  redis.call('ZADD', zkey, '-inf', '#since:' .. string.format('%.0f', ms))
end
local function trim(zkey, cap)
  local s = sentinel(zkey)
  local offset = s and 1 or 0
  local n = redis.call('ZCARD', zkey) - offset
  if n > cap then
    local last = offset + n - cap - 1
    local cut = redis.call('ZRANGE', zkey, last, last, 'WITHSCORES')
    redis.call('ZREMRANGEBYRANK', zkey, offset, last)
    if s and tonumber(string.sub(s, 8)) <= tonumber(cut[2]) then
      set_since(zkey, s, tonumber(cut[2]) + 1)
    end
  end
end
