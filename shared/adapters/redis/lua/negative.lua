-- Cache "does not exist" only where nothing is cached (a change written meanwhile is never hidden).
-- KEYS: d:{<device>}:latest or e:<event id>. ARGV: field, negative ttl.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], '')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
