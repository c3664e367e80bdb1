-- Extend a lease, only if it is still exactly ours (compare-and-set on "EPOCH ID").
-- ARGV: lease key template, device_id, token "EPOCH COLLECTOR_ID", lease ms. Returns 1 or 0.
local lease_key = string.format(ARGV[1], ARGV[2])
if redis.call("GET", lease_key) == ARGV[3] then
  redis.call("PEXPIRE", lease_key, ARGV[4])
  return 1
end
return 0
