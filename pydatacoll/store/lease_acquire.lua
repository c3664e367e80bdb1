-- Take a device's lease: SET NX PX with a new fencing epoch from INCR.
-- ARGV: lease key template, epoch key template, device_id, collector_id, lease ms.
-- Free (or held by this same collector id: a restart under a fixed id, which must not
-- inherit the old process' epoch): returns {epoch, ""}. Held by another: {0, "EPOCH ID"}.
local lease_key = string.format(ARGV[1], ARGV[3])
local held = redis.call("GET", lease_key)
if held and string.match(held, "^%d+ (.*)$") ~= ARGV[4] then
  return {0, held}
end
local epoch = redis.call("INCR", string.format(ARGV[2], ARGV[3]))
local token = epoch .. " " .. ARGV[4]
if held then
  redis.call("SET", lease_key, token, "XX", "PX", ARGV[5])
else
  redis.call("SET", lease_key, token, "NX", "PX", ARGV[5])
end
return {epoch, ""}
