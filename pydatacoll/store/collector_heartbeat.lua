-- A collector's heartbeat: its key (with a TTL) and its entry in the index, stamped with
-- the Redis server's own time so that ages do not depend on the collectors' clocks.
-- ARGV: heartbeat key template, index key, collector_id, JSON fields (an object without
-- its closing brace), TTL ms. Returns the server time in ms.
local now = redis.call("TIME")
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local beat = ARGV[4] .. ',"at_ms":' .. now_ms .. '}'
redis.call("SET", string.format(ARGV[1], ARGV[3]), beat, "PX", ARGV[5])
redis.call("HSET", ARGV[2], ARGV[3], beat)
return now_ms
