-- Give a lease back, only if it is still exactly ours (compare-and-delete).
-- ARGV: lease key template, device_id, token "EPOCH COLLECTOR_ID". Returns 1 or 0.
local lease_key = string.format(ARGV[1], ARGV[2])
if redis.call("GET", lease_key) == ARGV[3] then
  redis.call("DEL", lease_key)
  return 1
end
return 0
