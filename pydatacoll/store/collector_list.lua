-- The live collectors: {server time ms, heartbeat JSON, heartbeat JSON, ...}. Index
-- entries whose heartbeat key has expired are removed (the collector is gone).
-- ARGV: heartbeat key template, index key.
local now = redis.call("TIME")
local reply = {tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
for _, id in ipairs(redis.call("HKEYS", ARGV[2])) do
  local beat = redis.call("GET", string.format(ARGV[1], id))
  if beat then
    reply[#reply + 1] = beat
  else
    redis.call("HDEL", ARGV[2], id)
  end
end
return reply
