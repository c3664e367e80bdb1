-- A device_call/device_ctrl request, API side, in one round trip: check that the point
-- exists (as the REST routes name the first missing id), then PUBLISH the request.
-- ARGV: device key, term key, item key, term-item key, device id, channel, JSON request.
-- Returns {0, subscribers that heard it}, or {1, field} (device_id, term_id, item_id or
-- term_item) when something is not stored: then nothing is published.
if redis.call("EXISTS", ARGV[1]) == 0 then
  return {1, "device_id"}
end
if redis.call("EXISTS", ARGV[2]) == 0 then
  return {1, "term_id"}
end
if redis.call("EXISTS", ARGV[3]) == 0 then
  return {1, "item_id"}
end
-- The term-item's device_id field is JSON text: it must name the requested device.
local owner = redis.call("HGET", ARGV[4], "device_id")
local ok, decoded = pcall(cjson.decode, owner or "null")
if not ok or decoded ~= ARGV[5] then
  return {1, "term_item"}
end
return {0, redis.call("PUBLISH", ARGV[6], ARGV[7])}
